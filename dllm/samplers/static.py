"""LLaDA's baseline: commit a scheduled number of the most confident (or random) masked positions per step;
with ``schedule="ascending"``, the ascending step-size (ASS) schedule of EOSER-ASS (2^k tokens at step k)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..engine.view import StepView, top_k_mask
from .base import Sampler, register


def scheduled_count(masked: torch.Tensor, steps_left: int | None) -> torch.Tensor:
    """[B] tokens to commit now: ceil(remaining / steps left), at least 1 while anything is masked.

    With N masks and S steps this reproduces LLaDA's front-loaded quota table (N // S per step, the first
    N % S steps one more) from the current state alone, so a step that was forced elsewhere (an AR opening
    token) or a finished row never desynchronises it. With no steps left, everything remaining is committed.
    This is the one formulation of LLaDA's schedule; ``threshold``'s ``cap="schedule"`` reads it too.
    """
    remaining = masked.sum(-1)
    if steps_left is None:
        return remaining.clamp(max=1)
    return torch.div(remaining + max(steps_left, 1) - 1, max(steps_left, 1), rounding_mode="floor")


def cumulative_quota(total: torch.Tensor, steps: int, done: int) -> torch.Tensor:
    """[B] positions LLaDA's schedule has committed after ``done`` of ``steps`` steps of a span that started with
    ``total`` masks: the same front-loaded table as :func:`scheduled_count` (N // S per step, the first N % S one
    more), summed — for rules that cap themselves by the schedule (``threshold:cap="schedule"``)."""
    if done >= steps:
        return total
    return torch.div(total, steps, rounding_mode="floor") * done + (total % steps).clamp(max=done)


@lru_cache(maxsize=64)
def ascending_plan(gen_length: int, blocks: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(span lengths, first global step of each span, quota of each global step) of the ASS schedule.

    Spec ``fastdllm_llada_eoser.md`` §5.2: S = floor(log2 G) steps with quotas 2^i (the last step takes the
    rest); blocks are built from the last one backwards — the last has 2^(S-1) + 1 + (G - 2^S) positions and
    one step, middle blocks 2^p positions and one step each, and the first block takes what is left with
    steps 0..S-blocks. G = 128 in one block: 1, 2, 4, ..., 32, 65 (7 forwards); in 4 blocks: 15, 16, 32, 65.
    """
    steps = int(math.floor(math.log2(gen_length)))
    if blocks > steps:
        raise ValueError(f"static schedule='ascending': {blocks} blocks need at least as many steps, but gen_length "
                         f"{gen_length} gives floor(log2) = {steps}: use a larger block_length")
    rem = gen_length - 2 ** steps
    quotas = [2 ** i for i in range(steps - 1)]
    if blocks == 1:
        quotas.append(gen_length - (2 ** (steps - 1) - 1))
    else:
        last = 2 ** (steps - 1) + 1 + rem
        quotas.append(last if last > 2 ** (steps - 1) else 0)
    lengths, p = [], steps - 1
    if blocks > 1:
        lengths.append(2 ** p + 1 + rem)
        p -= 1
        for _ in range(blocks - 2):
            lengths.append(2 ** p)
            p -= 1
    lengths.append(gen_length - sum(lengths))
    lengths.reverse()
    first_block_steps = steps - (blocks - 1)
    firsts = [0] + [first_block_steps + k for k in range(blocks - 1)]
    return tuple(lengths), tuple(firsts), tuple(quotas)


@register("static")
@dataclass
class Static(Sampler):
    """``steps`` forwards per block (``steps = gen_length``: one token per step), LLaDA §1.1–1.3.

    ``remasking="low_confidence"`` ranks by the proposal's probability; ``"random"`` by uniform scores from
    each row's own generator. A block always finishes within its step budget; NFE = steps when nothing stops
    early.

    ``schedule="ascending"``: the ASS schedule (:func:`ascending_plan`); the number of blocks is
    ceil(gen_length / block_length) (``block_length = gen_length`` for full-canvas decoding) and the step count
    is floor(log2 gen_length), so ``steps`` must not be given. The last step of every block commits whatever
    is left, so a block never outlives its steps.
    """

    remasking: str = "low_confidence"
    schedule: str = "linear"

    @property
    def uses_steps(self) -> bool:  # type: ignore[override]
        return self.schedule == "linear"

    @property
    def needs_generator(self) -> bool:  # type: ignore[override]
        return self.remasking == "random"

    def validate(self) -> None:
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"static: remasking='{self.remasking}' is not supported; use 'low_confidence' or 'random'")
        if self.schedule not in ("linear", "ascending"):
            raise ValueError(f"static: schedule='{self.schedule}' is not supported; use 'linear' or 'ascending'")

    def layout(self, gen_length: int, block_length: int) -> list[int] | None:
        if self.schedule != "ascending":
            return None
        return list(ascending_plan(gen_length, math.ceil(gen_length / block_length))[0])

    def _ascending(self, view: StepView) -> tuple[int, int, tuple[int, ...]]:
        """(global step index, last global step of this span, quotas) for the current step."""
        lengths = tuple(e - s for s, e in view.spans)
        _, firsts, quotas = ascending_plan(sum(lengths), len(lengths))
        last = firsts[view.span_index + 1] - 1 if view.span_index + 1 < len(firsts) else len(quotas) - 1
        return firsts[view.span_index] + view.step, last, quotas

    def select(self, view: StepView) -> torch.Tensor:
        if self.schedule == "ascending":
            step, last, quotas = self._ascending(view)
            remaining = view.masked_count
            count = remaining if step >= last else remaining.clamp(max=quotas[min(step, len(quotas) - 1)])
        else:
            count = scheduled_count(view.masked, view.steps_left)
        score = view.confidence
        if self.remasking == "random":
            score = torch.where(view.masked, view.uniform(), torch.full_like(score, float("-inf")))
        return top_k_mask(score, count)

    def progress(self, view: StepView) -> torch.Tensor:
        """The schedule's clock, as EOS early rejection defines it (spec §5.1-5.2).

        linear: t = i / (S - 1) with i the step over the whole canvas and S the total step count (the
        reference uses the step inside the block, which resets every block; identical with one block).
        ascending: t = (2^(i+1) - 1) / 2^S, the share of tokens decoded once step i is done.
        """
        rows = view.masked.shape[0]
        if self.schedule == "ascending":
            step, _, quotas = self._ascending(view)
            t = (2 ** (step + 1) - 1) / 2 ** len(quotas)
        else:
            total = (view.steps_per_span or 1) * max(len(view.spans), 1)
            t = min(view.total_step, total - 1) / (total - 1) if total > 1 else 1.0
        return torch.full((rows,), float(t), device=view.masked.device)
