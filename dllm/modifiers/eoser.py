"""EOS early rejection (EOSER, spec ``fastdllm_llada_eoser.md`` §5): damp EOS confidences early in the decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import StepView
from .base import Modifier, register


@register("eoser")
@dataclass
class EOSER(Modifier):
    """Scale the confidence of every EOS proposal by γ(t) = γmin + (γmax - γmin)·t.

    ``t`` is the sampler's clock (``Sampler.progress``): the step share for ``static`` (linear or ascending),
    the decoded share of the canvas for rules without a fixed step count. Proposals are unchanged — an EOS can
    still be committed, just later — so full-canvas decoding no longer falls into the "EOS trap" of committing
    the tail first. ``gamma_min = gamma_max = 1`` is the bare sampler. Defaults: the reference's
    ``eoser_generate`` (γmin 0.4); its ASS scripts use 0.01.
    """

    gamma_min: float = 0.4
    gamma_max: float = 1.0

    def validate(self) -> None:
        if not 0 <= self.gamma_min <= self.gamma_max <= 1:
            raise ValueError(f"eoser: need 0 <= gamma_min <= gamma_max <= 1 (got gamma_min={self.gamma_min}, "
                             f"gamma_max={self.gamma_max})")

    def rescore(self, view: StepView) -> torch.Tensor:
        t = view.sampler.progress(view).to(view.confidence.device)
        factor = self.gamma_min + (self.gamma_max - self.gamma_min) * t
        return torch.where(view.is_eos, view.confidence * factor[:, None], view.confidence)
