"""End-of-Text prediction (EoTP, Learn2PD spec LF §1.5): stop paying for a row's EOS tail.

A filter, so it works with every sampler and cache: it moves the row's end (``Decision.end``) in, and from
the end on positions become EOS, are never candidates again and leave attention.

* ``mode="committed"`` (default, conservative): once a step commits an EOS, every later position of the row
  is cut (commits this step past it are dropped).
* ``mode="predicted"`` (the reference's aggressive mode): as ``committed`` when an EOS is committed; otherwise,
  when some candidate of the current block *predicts* EOS, the row is cut right after the most confident such
  prediction (that position itself stays undecided and is decoded later like any other). The reference
  without a cache looks for predictions over the whole canvas; here, as in its cached variants, only the
  current block's proposals exist, so only they count.
* ``mode="fill"`` (ours, no truncation): once an EOS has landed, every still-masked position after it in the
  current block is written as EOS in the same step. The tail stays in attention, so it saves fewer forwards
  than cutting. Why it exists: a model trained with EOS tails that run to the end of a fixed canvas (LLaDA-style
  SFT, ``tiny-cot``) sees a cut canvas as out of distribution. On ``tiny-cot`` it then predicts EOS earlier and
  earlier, and arithmetic fell from 72.5 % to 15 % with ``committed`` (learn2pd, dual cache, 40 problems).
  ``fill`` kept 72.5 % at 10.5 instead of 11.5 forwards per row (README, "Which sampler wins on tiny-cot").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import Decision, StepView, rank_order
from .base import Filter, register

MODES = ("committed", "predicted", "fill")


@register("eotp")
@dataclass
class Eotp(Filter):
    mode: str = "committed"

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"eotp: mode '{self.mode}' is not supported; use 'committed', 'predicted' or 'fill'")

    def start(self, engine) -> None:
        self._last = self._base = None

    def adjust(self, view: StepView, decision: Decision) -> Decision:
        if self.mode == "fill":
            return self._fill(view, decision)
        # a re-selection after another filter's rejection comes back with our previous end: start from the
        # end the decision had before we set it
        base = self._base if self._last is not None and decision.end is self._last else decision.end
        self._base = base
        if view.eos_ids is None or view.eos_ids.numel() == 0:
            return decision
        columns = view.columns()
        far = torch.full_like(view.end, torch.iinfo(torch.long).max)
        eos_commit = decision.commit & torch.isin(decision.tokens, view.eos_ids)
        first = torch.where(eos_commit, columns[None, :], far[:, None]).min(-1).values
        cut = torch.where(eos_commit.any(-1), first + 1, far)
        if self.mode == "predicted":
            predicted = view.masked & view.is_eos
            score = view.raw_confidence.masked_fill(~predicted, float("-inf"))
            best = columns[rank_order(score)[:, 0]]
            cut = torch.where(eos_commit.any(-1) | ~predicted.any(-1), cut, best + 1)
        end = torch.minimum(view.end, cut)
        if base is not None:
            end = torch.minimum(end, base.to(end.device))
        decision.commit = decision.commit & (columns[None, :] < end[:, None])
        decision.end = end
        self._last = end
        return decision

    @staticmethod
    def _fill(view: StepView, decision: Decision) -> Decision:
        """Write EOS at every candidate after the row's first EOS (landed earlier, or committed this step)."""
        if view.eos_ids is None or view.eos_ids.numel() == 0:
            return decision
        far = torch.iinfo(torch.long).max
        canvas_columns = torch.arange(view.canvas.shape[1], device=view.canvas.device)
        landed = torch.isin(view.canvas, view.eos_ids) & (canvas_columns[None, :] >= view.gen_start[:, None])
        first = torch.where(landed, canvas_columns[None, :], far).min(-1).values
        columns = view.columns()
        now = decision.commit & torch.isin(decision.tokens, view.eos_ids)
        first = torch.minimum(first, torch.where(now, columns[None, :], far).min(-1).values)
        tail = view.masked & (columns[None, :] > first[:, None])
        decision.commit = decision.commit | tail
        decision.tokens = torch.where(tail, view.eos_ids[0], decision.tokens)
        return decision
