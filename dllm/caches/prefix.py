"""Fast-dLLM v1 prefix cache (approximate for full-attention models)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Feed, RefreshingCache, StepContext, register


@register("prefix", fits=("full",), exact=False)
@dataclass
class PrefixCache(RefreshingCache):
    """At each block start (and every ``refresh_every`` forwards inside a block) run the whole canvas and
    keep the K/V of the columns before the block; other forwards feed the block and everything after it
    against that (stale) prefix. The refresh forward also decodes, so it costs no extra step.
    ``refresh_every=1`` refreshes every forward and equals no cache."""

    refresh_every: int | None = None

    def plan(self, ctx: StepContext) -> Feed:
        block_start = ctx.span[0]
        if self.refresh_due(ctx):
            return Feed(0, ctx.width, self.kv.rewrite(ctx.width), after=lambda: self.kv.crop(block_start))
        return Feed(block_start, ctx.width, self.kv.read(ctx.width - block_start), ephemeral=True)
