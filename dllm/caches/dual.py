"""Fast-dLLM v1 dual cache (approximate for full-attention models)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Feed, RefreshingCache, StepContext, register


@register("dual", fits=("full",), exact=False)
@dataclass
class DualCache(RefreshingCache):
    """At each block start (and every ``refresh_every`` forwards inside a block) run the whole canvas and
    keep the full-length K/V; other forwards feed only the block, overwrite its K/V in place and attend to
    the stale prefix and suffix. ``refresh_every=1`` equals no cache."""

    refresh_every: int | None = None

    def plan(self, ctx: StepContext) -> Feed:
        start, end = ctx.span
        if self.refresh_due(ctx):
            return Feed(0, ctx.width, self.kv.rewrite(ctx.width))
        return Feed(start, end, self.kv.at_slots(start, end - start, key_len=ctx.width), ephemeral=True)
