"""Fast-dLLM v1 prefix cache (approximate for full-attention models)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Cache, Feed, StepContext, register


@register("prefix", fits=("full",), exact=False)
@dataclass
class PrefixCache(Cache):
    """At each block start (and every ``refresh_every`` forwards inside a block) run the whole canvas and
    keep the K/V of the columns before the block; other forwards feed the block and everything after it
    against that (stale) prefix. The refresh forward also decodes, so it costs no extra step.
    ``refresh_every=1`` refreshes every forward and equals no cache."""

    refresh_every: int | None = None

    def validate(self) -> None:
        if self.refresh_every is not None and self.refresh_every < 1:
            raise ValueError(f"prefix cache: refresh_every must be >= 1 (got {self.refresh_every})")

    def start(self, network, batch, width, block_size):
        super().start(network, batch, width, block_size)
        self.kv = self._new_kv(network, batch, width)

    def plan(self, ctx: StepContext) -> Feed:
        block_start = ctx.span[0]
        if ctx.forwards == 0 or (self.refresh_every and ctx.forwards % self.refresh_every == 0):
            self.kv.reset()
            return Feed(0, ctx.width, self.kv.append(ctx.width), after=lambda: self.kv.crop(block_start))
        return Feed(block_start, ctx.width, self.kv.read(ctx.width - block_start))
