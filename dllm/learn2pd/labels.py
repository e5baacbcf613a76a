"""EGP oracle labels (spec LF §1.2): decode towards the static output, label every block slot at every step.

:class:`EgpLabeler` is the ``oracle`` sampler with the reference's stuck rule. At each step a row commits every
masked position whose proposal already equals the reference token; the label of a slot is whether the
model's proposal there equals the reference (decoded slots included). When no masked proposal is right the
reference stops: its next forward sees the same canvas, predicts the same tokens, records the same step again
and then fills the rest of the block with the reference. The labeler does that in one step — it fills the
block at once and gives the step weight 2 (weight 1 when the proposals already equalled the previous step's,
the case the reference catches first). The trace therefore ends exactly at the reference output.

It is used through ``dllm.generate(..., sampler=EgpLabeler(targets=...), return_trajectory=True)``; the
trajectory gives each step's raw confidences, ``records`` the labels of the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import Decision, StepView
from ..samplers.oracle import Oracle
from .features import valid_columns


@dataclass
class StepLabels:
    """The labels of one step for the rows that had candidates (``rows``: caller row ids)."""

    rows: list[int]
    labels: torch.Tensor  # [n, W] bool: proposal == reference
    valid: torch.Tensor  # [n, W] bool: column in the row's generated region
    masked: torch.Tensor  # [n, W] bool: candidate before this step
    weight: list[int]  # 1, or 2 for a stuck step the reference records twice


class EgpLabeler(Oracle):
    """Not registered: built by :func:`dllm.learn2pd.traces.collect_traces` with the static outputs as targets."""

    name = "egp_labeler"

    def start(self, engine) -> None:
        self.records: list[StepLabels | None] = []

    def select(self, view: StepView) -> Decision:
        target = self._target_window(view)
        masked = view.masked
        same = view.x0 == target
        right = masked & same
        has = masked.any(-1)
        stuck = has & ~right.any(-1)
        previous = view.state.get("egp_previous") if view.state.get("egp_span") == view.span_index else None
        repeated = (torch.zeros_like(has) if previous is None or previous.shape != view.x0.shape
                    else (view.x0 == previous).all(-1))
        weight = 1 + (stuck & ~repeated).long()
        view.state["egp_span"] = view.span_index
        view.state["egp_previous"] = view.x0.clone()
        commit = torch.where(stuck[:, None], masked, right)
        keep = has.nonzero().flatten()
        if keep.numel():
            valid = valid_columns(view.gen_start, view.end, view.columns())
            self.records.append(StepLabels(rows=view.rows[keep.cpu()].tolist(), labels=same[keep].cpu(),
                                           valid=valid[keep].cpu(), masked=masked[keep].cpu(),
                                           weight=weight[keep].tolist()))
        else:
            self.records.append(None)
        return Decision(commit, target)
