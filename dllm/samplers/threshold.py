"""Confidence-threshold parallel decoding (Fast-dLLM v1/v2, Dimple)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..engine.view import StepView, top_k_mask
from .base import Sampler, register
from .factor import check_factor, factor_commit
from .static import cumulative_quota, scheduled_count


@register("threshold")
@dataclass
class Threshold(Sampler):
    """Commit every candidate whose confidence clears ``threshold``; never fewer than a fallback.

    Presets of the published rules:

    * Fast-dLLM v1 (default): ``c >= threshold`` (inclusive) plus always the most confident candidate.
    * Fast-dLLM v2: ``strict=True`` (``c > threshold``) plus the most confident candidate.
    * Dimple confident decoding: ``strict=True, fallback="schedule"``: if nothing clears the threshold,
      commit the static schedule's quota (ceil(remaining / steps left)) instead of one token.
    * ``factor=f`` is deprecated here: the parallel-factor rule is its own sampler, ``sampler="factor"``
      (``threshold:factor=`` still works and warns).
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
        check_factor("threshold", self.factor, self.factor_rule)
        if self.factor is not None:
            warnings.warn("threshold:factor= is deprecated: use sampler='factor' (same rule, its own file)",
                          DeprecationWarning, stacklevel=3)
        if not self.threshold >= 0:
            raise ValueError(f"threshold: threshold must be >= 0 (got {self.threshold})")
        if self.cap not in ("none", "schedule"):
            raise ValueError(f"threshold: cap='{self.cap}' is not supported; use 'none' or 'schedule'")

    def select(self, view: StepView) -> torch.Tensor:
        conf = view.confidence
        if self.factor is not None:
            return factor_commit(conf, view.masked, self.factor, self.factor_rule)
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
        """[B] the static schedule's quota up to this step minus what the span already committed.

        Unused quota carries over; at the span's last step everything remaining is allowed.
        """
        total = view.span_masked
        return cumulative_quota(total, view.steps_per_span, view.step + 1) - (total - view.masked_count)
