"""What a sampler sees at one decoding step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class StepView:
    """One step of one decode span, for the active (unfinished) rows of the batch.

    Window tensors are [B, W] over the span's columns ``span[0]..span[1]-1``; positions that are not
    candidates (already decoded, prompt, padding) have ``masked`` False and ``confidence`` -inf.
    Confidences are fp32; ``x0`` is the proposal (argmax, or the Gumbel-noised argmax when temperature > 0).
    """

    logits: torch.Tensor  # [B, W, V] processed logits (after shift, guidance and logit processors)
    x0: torch.Tensor  # [B, W] proposed tokens
    confidence: torch.Tensor  # [B, W] fp32, -inf where not a candidate
    masked: torch.Tensor  # [B, W] bool: candidate positions (MASK inside the span)
    span: tuple[int, int]  # canvas columns [start, end)
    step: int  # sampler steps already taken in this span (0 at the span's first sampler step)
    steps_per_block: int | None  # the ``steps`` budget per span, when the user gave one
    canvas: torch.Tensor  # [B, T] current tokens (read-only)
    rows: torch.Tensor  # [B] index of each active row in the caller's batch
    generator: torch.Generator | None = None
    forward: Callable | None = None  # extra forwards through the same cache (draft-and-verify samplers)
    mask_id: int | None = None
    span_masked: torch.Tensor | None = None  # [B] candidates in the span when the span started

    @property
    def masked_count(self) -> torch.Tensor:
        """[B] number of candidate positions per row."""
        return self.masked.sum(-1)

    @property
    def steps_left(self) -> int | None:
        if self.steps_per_block is None:
            return None
        return self.steps_per_block - self.step


def rank_order(confidence: torch.Tensor) -> torch.Tensor:
    """Column order by confidence descending, ties by position ascending (the documented tie rule)."""
    return torch.sort(confidence, dim=-1, descending=True, stable=True).indices


def top_k_mask(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool [B, W]: the ``k[b]`` highest-confidence finite entries of each row (tie rule as ``rank_order``)."""
    order = rank_order(confidence)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)
