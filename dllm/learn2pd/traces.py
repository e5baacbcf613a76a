"""Training records from the model's own decodes (spec LF §1.2), batched through ``dllm.generate``.

For each batch of prompts: the static one-token-per-step decode gives the reference outputs; an EGP decode
towards them (:class:`~dllm.learn2pd.labels.EgpLabeler`) gives one record per row per step — the block's
raw confidences (from the trajectory) and the oracle labels. Both decodes run without a cache by default, in
fp32 on the CPU, as the reference does; ``cache="dual"`` decodes the traces through Fast-dLLM's dual cache
instead (several times faster on long canvases; the confidences are then the cached ones the sampler sees
when it runs with that cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .features import block_features, pad_right
from .labels import EgpLabeler


@dataclass
class Traces:
    features: torch.Tensor  # [N, W] fp32 filter inputs
    labels: torch.Tensor  # [N, W] fp32 0/1 oracle labels
    valid: torch.Tensor  # [N, W] bool: slots that count in the loss
    masked: torch.Tensor  # [N, W] bool: slots the filter decides on (candidates at that step)
    prompt: torch.Tensor  # [N] index of the record's prompt (splits are by prompt)
    references: list[list[int]]  # static output per prompt (before the first EOS)
    egp_outputs: list[list[int]]  # the EGP decode's output per prompt (equals ``references``)
    static_nfe: list[int]  # per prompt
    egp_nfe: list[int]  # per prompt

    def __len__(self) -> int:
        return self.features.shape[0]


def collect_traces(model, prompts: list, *, gen_length: int, block_length: int, confidence: str = "prob",
                   batch_size: int = 64, chat: bool = False, cache: str = "none", progress=None) -> Traces:
    """Records for ``prompts`` (strings or token-id lists); ``progress(n)`` is called after each batch."""
    import dllm

    options = dict(gen_length=gen_length, block_length=block_length, cache=cache, confidence=confidence, chat=chat)
    parts: dict[str, list] = {k: [] for k in ("features", "labels", "valid", "masked", "prompt")}
    references, outputs, static_nfe, egp_nfe = [], [], [], []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first:first + batch_size]
        static = dllm.generate(model, batch, sampler="static", steps=gen_length, **options)
        labeler = EgpLabeler(targets=[list(s) for s in static.sequences])
        egp = dllm.generate(model, batch, sampler=labeler, return_trajectory=True, **options)
        steps = egp.trajectory.steps
        if len(steps) != len(labeler.records):
            raise RuntimeError(f"EGP trace: {len(labeler.records)} labelled steps for {len(steps)} trajectory steps "
                               "(a filter re-selected inside the trace decode)")
        for step, record in zip(steps, labeler.records):
            if record is None:
                continue
            raw = torch.tensor([step.confidences[r] for r in record.rows], dtype=torch.float32)
            repeat = torch.tensor(record.weight)
            record_parts = {"features": block_features(raw, record.valid), "labels": record.labels.float(),
                            "valid": record.valid, "masked": record.masked}
            for key, value in record_parts.items():  # a short last span is right-padded to the block
                parts[key].append(pad_right(value, block_length, False if value.dtype == torch.bool else 0.0)
                                  .repeat_interleave(repeat, 0))
            parts["prompt"].append((torch.tensor(record.rows) + first).repeat_interleave(repeat, 0))
        references += [list(s) for s in static.sequences]
        outputs += [list(s) for s in egp.sequences]
        static_nfe += static.stats.row_nfe
        egp_nfe += egp.stats.row_nfe
        if progress is not None:
            progress(len(batch))
    if not parts["features"]:
        raise ValueError("the decodes produced no training records (every prompt was already settled)")
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    return Traces(**tensors, references=references, egp_outputs=outputs, static_nfe=static_nfe, egp_nfe=egp_nfe)
