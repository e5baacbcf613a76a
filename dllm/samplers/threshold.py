"""Confidence-threshold parallel decoding (Fast-dLLM v1/v2, Dimple) and Fast-dLLM's parallel-factor rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import StepView, rank_order, top_k_mask
from .base import Sampler, register
from .static import scheduled_count


@register("threshold")
@dataclass
class Threshold(Sampler):
    """Commit every candidate whose confidence clears ``threshold``; never fewer than a fallback.

    Presets of the published rules:

    * Fast-dLLM v1 (default): ``c >= threshold`` (inclusive) plus always the most confident candidate.
    * Fast-dLLM v2: ``strict=True`` (``c > threshold``) plus the most confident candidate.
    * Dimple confident decoding: ``strict=True, fallback="schedule"``: if nothing clears the threshold,
      commit the static schedule's quota (ceil(remaining / steps left)) instead of one token.
    * Fast-dLLM v1 parallel factor: ``factor=f`` replaces the threshold: commit the largest n such that the
      n best confidences satisfy s_k >= 1 - f/(k+1) for every k <= n (the best one always). The reference
      code also accepts the last candidate when it is the first to fail; we do not by default
      (``factor_rule="clean"``); ``factor_rule="reference"`` reproduces that quirk.
    * Fast-dLLM v1 Dream without cache (``cap="schedule"``): at most the static schedule's cumulative quota
      minus what the span already committed (unused quota carries over; past the last scheduled step
      everything remaining is allowed), then the threshold rule inside that cap.

    ``threshold > 1`` never fires, which makes this exactly one token per step (the static decoder with
    ``steps = gen_length``); ``threshold = 0`` commits a whole block in one step.
    """

    threshold: float = 0.9
    strict: bool = False
    fallback: str = "top1"
    factor: float | None = None
    factor_rule: str = "clean"
    cap: str = "none"

    @property
    def uses_steps(self) -> bool:  # type: ignore[override]
        return self.fallback == "schedule" or self.cap == "schedule"

    def validate(self) -> None:
        if self.fallback not in ("top1", "schedule"):
            raise ValueError(f"threshold: fallback='{self.fallback}' is not supported; use 'top1' or 'schedule'")
        if self.factor_rule not in ("clean", "reference"):
            raise ValueError(f"threshold: factor_rule='{self.factor_rule}' is not supported; use 'clean' or 'reference'")
        if self.factor is not None and self.factor <= 0:
            raise ValueError(f"threshold: factor must be > 0 (got {self.factor})")
        if self.threshold < 0:
            raise ValueError(f"threshold: threshold must be >= 0 (got {self.threshold})")
        if self.cap not in ("none", "schedule"):
            raise ValueError(f"threshold: cap='{self.cap}' is not supported; use 'none' or 'schedule'")

    def select(self, view: StepView) -> torch.Tensor:
        conf = view.confidence
        if self.factor is not None:
            return self._factor(conf, view.masked)
        passed = (conf > self.threshold) if self.strict else (conf >= self.threshold)
        passed &= view.masked
        if self.fallback == "top1":
            chosen = passed | top_k_mask(conf, torch.ones_like(view.masked_count))
        else:
            fallback = top_k_mask(conf, scheduled_count(view.masked, view.steps_left))
            chosen = torch.where(~passed.any(-1, keepdim=True), fallback, passed)
        if self.cap == "schedule":
            chosen &= top_k_mask(conf, self._cumulative_quota(view))
        return chosen

    @staticmethod
    def _cumulative_quota(view: StepView) -> torch.Tensor:
        """[B] the static schedule's quota up to this step minus what the span already committed."""
        total = view.span_masked
        steps = view.steps_per_block
        if view.step >= steps - 1:
            return view.masked_count
        base, extra = torch.div(total, steps, rounding_mode="floor"), total % steps
        cumulative = base * (view.step + 1) + extra.clamp(max=view.step + 1)
        return cumulative - (total - view.masked_count)

    def _factor(self, conf: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        order = rank_order(conf)
        ranked = conf.gather(-1, order)
        n = torch.arange(1, conf.shape[-1] + 1, device=conf.device, dtype=conf.dtype)
        bar = 1 - self.factor / (n + 1)
        bar[0] = -1.0
        passes = ranked >= bar  # -inf (non-candidates) always fails
        count = passes.long().cumprod(-1).sum(-1)
        if self.factor_rule == "reference":
            candidates = masked.sum(-1)
            count = torch.where(count == candidates - 1, candidates, count)
        return top_k_mask(conf, count)
