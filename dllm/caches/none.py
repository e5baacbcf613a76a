"""No cache: every forward recomputes what the current block can see."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Cache, Feed, StepContext, model_block, register


@register("none", fits=("full", "block_causal"), exact=True)
@dataclass
class NoCache(Cache):
    """Full-attention models see the whole canvas; block-causal models only the blocks up to the current one
    (later blocks are invisible to it, so feeding them would be wasted work)."""

    def plan(self, ctx: StepContext) -> Feed:
        if self.block_size is None:
            return Feed(0, ctx.width, ephemeral=True)
        return Feed(0, model_block(ctx.span, self.block_size, ctx.width)[1], ephemeral=True)
