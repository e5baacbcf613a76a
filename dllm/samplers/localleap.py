"""LocalLeap (Kong et al., arXiv 2510.07081): anchors above κ relax the threshold of their neighbours to τ."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engine.view import StepView, top_k_mask
from .base import Sampler, register


@register("localleap")
@dataclass
class LocalLeap(Sampler):
    """Commit top-1 ∪ {c >= kappa} ∪ {c >= tau within ``radius`` positions of an anchor} (spec LF §2.2).

    Anchors are this step's candidates with confidence >= ``kappa``, taken before anything is committed (no
    propagation inside a step); the neighbourhood is a hard radius in canvas positions. The paper's defaults
    for LLaDA-8B-Instruct: kappa 0.9, tau 0.75, radius 4. ``kappa > 1`` never anchors, so LocalLeap is then
    exactly one token per step; ``tau = kappa`` is Fast-dLLM's threshold rule.
    """

    kappa: float = 0.9
    tau: float = 0.75
    radius: int = 4

    def validate(self) -> None:
        if not self.kappa >= 0:
            raise ValueError(f"localleap: kappa must be a number >= 0 (got {self.kappa})")
        if not 0 <= self.tau <= max(self.kappa, 1.0):
            raise ValueError(f"localleap: tau must be in [0, kappa] (got tau={self.tau}, kappa={self.kappa})")
        if isinstance(self.radius, bool) or not isinstance(self.radius, int) or self.radius < 0:
            raise ValueError(f"localleap: radius must be an integer >= 0 (got {self.radius!r})")

    def select(self, view: StepView) -> torch.Tensor:
        conf, masked = view.confidence, view.masked
        anchors = masked & (conf >= self.kappa)
        near = F.max_pool1d(anchors.float()[:, None], 2 * self.radius + 1, stride=1, padding=self.radius)[:, 0] > 0
        relaxed = masked & near & (conf >= self.tau)
        return anchors | relaxed | top_k_mask(conf, torch.ones_like(view.masked_count))
