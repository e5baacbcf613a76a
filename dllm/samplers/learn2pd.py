"""Learn2PD (Bao et al., arXiv 2509.25188): a small learned filter decides which proposals are final.

Each step, the filter reads the raw confidences of the whole current block (decoded slots included) and
gives each slot an acceptance probability q; the step commits every candidate with q > alpha, together with
the static schedule's top-k (spec LF §1.4), so a block never outlives its step budget. The filter is a
``filter.safetensors`` trained by ``dllm train-filter`` (see :mod:`dllm.learn2pd`): found beside the model
(in the checkpoint directory) or given as ``filter=PATH``. It is refused, in one line, when it was trained
for another model, block length or confidence kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import StepView, top_k_mask
from ..learn2pd.artifact import WEIGHTS, load_filter
from ..learn2pd.features import block_features, pad_right, valid_columns
from .base import Sampler, register
from .static import scheduled_count


@register("learn2pd")
@dataclass
class Learn2PD(Sampler):
    """``alpha`` (default 0.96, the reference's LLaDA setting): strict acceptance threshold on the filter's
    probability, in (0, 1]; ``alpha=1`` never accepts (sigmoid <= 1), which is static decoding with the same
    ``steps``. ``filter``: a filter file or a folder holding ``filter.safetensors`` (default: the model's
    checkpoint directory)."""

    alpha: float = 0.96
    filter: str | None = None
    uses_steps = True

    def validate(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ValueError(f"learn2pd: alpha must be in (0, 1] (got {self.alpha!r}); 0.96 is the reference's setting")
        if self.filter is not None:
            load_filter(self.filter)  # a missing or corrupt file fails here, before any decoding

    def start(self, engine) -> None:
        model = engine.model
        source = self.filter if self.filter is not None else model.path / WEIGHTS
        loaded = load_filter(source)
        loaded.check(model, [end - start for start, end in engine.canvas.spans], engine.settings.confidence)
        self._net = loaded.network.to(model.device)

    def select(self, view: StepView) -> torch.Tensor:
        features = block_features(view.raw_confidence, valid_columns(view.gen_start, view.end, view.columns()))
        width = features.shape[-1]
        q = self._net.probability(pad_right(features, self._net.block_length))[..., :width]
        accepted = view.masked & (q > self.alpha)
        return accepted | top_k_mask(view.confidence, scheduled_count(view.masked, view.steps_left))
