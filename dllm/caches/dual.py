"""Fast-dLLM v1 dual cache (approximate for full-attention models)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Cache, Feed, StepContext, register


@register("dual", fits=("full",), exact=False)
@dataclass
class DualCache(Cache):
    """At each block start (and every ``refresh_every`` forwards inside a block) run the whole canvas and
    keep the full-length K/V; other forwards feed only the block, overwrite its K/V in place and attend to
    the stale prefix and suffix. ``refresh_every=1`` equals no cache."""

    refresh_every: int | None = None

    def validate(self) -> None:
        if self.refresh_every is not None and self.refresh_every < 1:
            raise ValueError(f"dual cache: refresh_every must be >= 1 (got {self.refresh_every})")

    def start(self, network, batch, width, block_size):
        super().start(network, batch, width, block_size)
        self.kv = self._new_kv(network, batch, width)

    def plan(self, ctx: StepContext) -> Feed:
        start, end = ctx.span
        if ctx.forwards == 0 or (self.refresh_every and ctx.forwards % self.refresh_every == 0):
            self.kv.reset()
            return Feed(0, ctx.width, self.kv.append(ctx.width))
        return Feed(start, end, self.kv.at_slots(start, end - start, key_len=ctx.width))
