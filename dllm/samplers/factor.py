"""Fast-dLLM v1's parallel-factor rule: commit as many of the best candidates as the factor bound allows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import StepView, rank_order, top_k_mask
from .base import Sampler, register


def factor_commit(conf: torch.Tensor, masked: torch.Tensor, factor: float, rule: str = "clean") -> torch.Tensor:
    """The largest n such that the n best confidences satisfy s_k >= 1 - f/(k+1) for every k <= n.

    The best candidate always passes. The reference code also accepts the last candidate when it is the first
    to fail; ``rule="clean"`` (default) does not, ``rule="reference"`` reproduces that quirk.
    """
    order = rank_order(conf)
    ranked = conf.gather(-1, order)
    n = torch.arange(1, conf.shape[-1] + 1, device=conf.device, dtype=conf.dtype)
    bar = 1 - factor / (n + 1)
    bar[0] = -1.0
    passes = ranked >= bar  # -inf (non-candidates) always fails
    count = passes.long().cumprod(-1).sum(-1)
    if rule == "reference":
        candidates = masked.sum(-1)
        count = torch.where(count == candidates - 1, candidates, count)
    return top_k_mask(conf, count)


def check_factor(owner: str, factor: float | None, rule: str) -> None:
    if rule not in ("clean", "reference"):
        raise ValueError(f"{owner}: factor_rule='{rule}' is not supported; use 'clean' or 'reference'")
    if factor is not None and not factor > 0:
        raise ValueError(f"{owner}: factor must be > 0 (got {factor})")


@register("factor")
@dataclass
class Factor(Sampler):
    """Fast-dLLM v1's parallel factor ``f`` (spec §2.2): n tokens are committed together only while the
    n-th best confidence is at least 1 - f/(n+1); larger f commits more per step."""

    factor: float = 1.0
    factor_rule: str = "clean"

    def validate(self) -> None:
        check_factor("factor", self.factor, self.factor_rule)

    def select(self, view: StepView) -> torch.Tensor:
        return factor_commit(view.confidence, view.masked, self.factor, self.factor_rule)
