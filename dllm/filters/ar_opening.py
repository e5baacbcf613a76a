"""AR block opening: a block opens with the greedy token predicted from the preceding known token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import Decision, StepView
from .base import Filter, register


@register("ar_opening")
@dataclass
class ArOpening(Filter):
    """At a block's first forward, rows whose block opens with MASK commit only that opening position, with the
    greedy token (Fast-dLLM v2's AR token, Fast-dLLM v1 Dream's block start). The step is not a sampler step,
    so the sampler's schedule is unchanged. Added by the engine when ``ar_first`` is on (default for
    logit-shift block-causal families); being a filter, later filters still see the token it commits.
    """

    def start(self, engine) -> None:
        self.block = engine.canvas.block_size

    def adjust(self, view: StepView, decision: Decision) -> Decision:
        start = view.span[0]
        if view.forwards != 0 or not (self.block is None or start % self.block == 0):
            return decision
        opening = view.masked[:, :1]
        only_opening = torch.zeros_like(view.masked)
        only_opening[:, 0] = True
        decision.commit = torch.where(opening, only_opening, decision.commit)
        tokens = decision.tokens.clone()
        tokens[:, 0] = torch.where(opening[:, 0], view.logits[:, 0].argmax(-1), tokens[:, 0])
        decision.tokens = tokens
        decision.counts_as_step = False
        return decision
