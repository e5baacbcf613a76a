"""Exact block cache for block-causal models (Fast-dLLM v2, SDAR, LLaDA2), with the optional sub-block cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Cache, Feed, StepContext, model_block, register


@register("block", fits=("block_causal",), exact=True)
@dataclass
class BlockCache(Cache):
    """Finished attention blocks never change and later blocks are invisible to them, so their K/V are exact.

    Each forward feeds the finished-but-uncached blocks together with the current block: the finished
    ones are appended to the cache and the current block's K/V land in scratch slots. Committing a block
    therefore costs no forward of its own (the prompt's full blocks go in with the first window), and for
    logit-shift families the same forward yields the greedy token that opens the next block.

    ``sub_block=N`` (Fast-dLLM v2's sub-block cache; decode spans of N columns): the first sampler step of
    each sub-block feeds the whole current block (refreshing its scratch K/V); later steps feed only the
    sub-block, overwrite its slots and attend to the stale rest of the block. Approximate, like the reference.
    As in the reference, a row whose sub-block still opens with MASK refreshes the whole block again; when
    only some rows need that, one forward feeds the whole block and the other rows keep their stale K/V
    outside the sub-block, so each row computes exactly what it would alone.
    """

    sub_block: int | None = None

    def validate(self) -> None:
        self._check_positive("sub_block")

    def start(self, network, batch, width, block_size):
        super().start(network, batch, width, block_size)
        if block_size is not None and self.sub_block is not None and block_size % self.sub_block:
            raise ValueError(f"block cache: sub_block={self.sub_block} must divide the model's block size {block_size}")
        self.kv = self._new_kv(network, batch, width)

    def plan(self, ctx: StepContext) -> Feed:
        block_start, block_end = model_block(ctx.span, self.block_size, ctx.width)
        kv = self.kv
        if self.sub_block and ctx.sampler_steps > 0 and kv.length == block_start:
            start, end = ctx.span
            if not ctx.any_opening_undecided:
                return Feed(start, end, kv.at_slots(start, end - start, key_len=block_end), ephemeral=True)
            columns = torch.arange(block_start, block_end, device=ctx.opening_undecided.device)
            outside = (columns < start) | (columns >= end)
            keep = ~ctx.opening_undecided[:, None] & outside[None, :]
            return Feed(block_start, block_end, kv.at_slots(block_start, block_end - block_start, block_end, keep))
        commit = block_start - kv.length
        return Feed(kv.length, block_end, kv.append(block_end - kv.length, commit=commit), ephemeral=commit == 0
                    and not self.sub_block)
