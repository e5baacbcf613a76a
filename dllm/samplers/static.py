"""LLaDA's baseline: commit a scheduled number of the most confident (or random) masked positions per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import StepView, top_k_mask
from .base import Sampler, register


def scheduled_count(masked: torch.Tensor, steps_left: int | None) -> torch.Tensor:
    """[B] tokens to commit now: ceil(remaining / steps left), at least 1 while anything is masked.

    With N masks and S steps this reproduces LLaDA's front-loaded quota table (N // S per step, the first
    N % S steps one more) from the current state alone, so a step that was forced elsewhere (an AR opening
    token) or a finished row never desynchronises it. With no steps left, everything remaining is committed.
    """
    remaining = masked.sum(-1)
    if steps_left is None:
        return remaining.clamp(max=1)
    return torch.div(remaining + max(steps_left, 1) - 1, max(steps_left, 1), rounding_mode="floor")


@register("static")
@dataclass
class Static(Sampler):
    """``steps`` forwards per block (``steps = gen_length``: one token per step), LLaDA §1.1–1.3.

    ``remasking="low_confidence"`` ranks by the proposal's probability; ``"random"`` by uniform scores.
    A block always finishes within its step budget; NFE = steps when nothing stops early.
    """

    remasking: str = "low_confidence"
    uses_steps = True

    def validate(self) -> None:
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"static: remasking='{self.remasking}' is not supported; use 'low_confidence' or 'random'")

    def select(self, view: StepView) -> torch.Tensor:
        count = scheduled_count(view.masked, view.steps_left)
        score = view.confidence
        if self.remasking == "random":
            noise = torch.rand(score.shape, generator=view.generator, device=score.device)
            score = torch.where(view.masked, noise, torch.full_like(noise, float("-inf")))
        return top_k_mask(score, count)
