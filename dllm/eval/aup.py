"""AUP (Accuracy Under Parallelism) and the Pareto front of accuracy against tokens per forward.

AUP follows hao-ai-lab's d3LLM leaderboard (spec ``fastdllm_llada_eoser.md`` §7): for one method on one task,
the parallelism–accuracy pairs ``(ρ_i, y_i)`` (ρ = TPF, y = accuracy in **percent**) are sorted by ρ; points
more than ``drop`` (5) points below the accuracy at the smallest ρ are left out (the blog's filtering, not the
reference script's assertion); then

    AUP = ρ_1·y_1 + ½ Σ_{i=2..m} (ρ_i − ρ_{i−1})·(y_i·W(y_i) + y_{i−1}·W(y_{i−1})),
    W(y) = min(exp(−α(1 − y/y_max)), 1),  α = 3,

with ``y_max`` the best accuracy on the task over every compared method. The first rectangle is unweighted.
The formula leaves points of equal ρ undefined (their order would change the sum): of those only the most
accurate counts — the others are dominated by it — and they are reported as ``merged``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

ALPHA = 3.0
DROP = 5.0


@dataclass(frozen=True)
class AUPResult:
    """The score and which points entered it (sorted by ρ) and which the cutoff removed."""

    value: float
    kept: tuple[tuple[float, float], ...]
    dropped: tuple[tuple[float, float], ...]
    merged: tuple[tuple[float, float], ...]
    y_min: float
    y_max: float


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """``W(y) = min(exp(−α(1 − y/y_max)), 1)``; 1 for every y when y_max is 0 (no method scored)."""
    if y_max <= 0:
        return 1.0
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup_detail(points: Iterable[Sequence[float]], y_max: float | None = None, alpha: float = ALPHA,
               drop: float = DROP) -> AUPResult:
    """AUP of ``points`` = ``(tpf, accuracy_percent)`` pairs; ``y_max`` defaults to their own best accuracy
    (pass the task's best over all compared methods for a leaderboard-style comparison)."""
    best: dict[float, float] = {}
    merged = []
    for rho, y in sorted(_check(points), key=lambda p: (p[0], -p[1])):
        if rho in best:
            merged.append((rho, y))
        else:
            best[rho] = y
    pairs = sorted(best.items())
    if y_max is None:
        y_max = max(y for _, y in pairs)
    if not math.isfinite(y_max) or y_max < 0:
        raise ValueError(f"AUP: y_max={y_max!r} must be a finite accuracy in percent >= 0")
    y_min = pairs[0][1] - drop
    kept = [p for p in pairs if p[1] >= y_min]
    dropped = [p for p in pairs if p[1] < y_min]
    value = kept[0][0] * kept[0][1]
    for (r0, y0), (r1, y1) in zip(kept, kept[1:]):
        value += 0.5 * (r1 - r0) * (y1 * weight(y1, y_max, alpha) + y0 * weight(y0, y_max, alpha))
    return AUPResult(value, tuple(kept), tuple(dropped), tuple(merged), y_min, float(y_max))


def aup(points: Iterable[Sequence[float]], y_max: float | None = None, alpha: float = ALPHA,
        drop: float = DROP) -> float:
    """The AUP score alone (see :func:`aup_detail`)."""
    return aup_detail(points, y_max, alpha, drop).value


def pareto_front(points: Iterable[Sequence[float]]) -> list[bool]:
    """For each ``(tpf, accuracy)`` point: True when no other point is at least as fast and as accurate and
    strictly better in one of the two (equal points are all on the front)."""
    pairs = [(float(r), float(y)) for r, y in points]
    return [not any(r2 >= r and y2 >= y and (r2 > r or y2 > y) for r2, y2 in pairs) for r, y in pairs]


def _check(points: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    pairs = []
    for point in points:
        try:
            rho, y = (float(v) for v in point)
        except (TypeError, ValueError):
            raise ValueError(f"AUP: point {point!r} is not a (tpf, accuracy) pair of numbers") from None
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"AUP: tpf {rho!r} must be a finite number > 0")
        if not (math.isfinite(y) and 0 <= y <= 100):
            raise ValueError(f"AUP: accuracy {y!r} must be in percent, 0..100")
        pairs.append((rho, y))
    if not pairs:
        raise ValueError("AUP: no points")
    return pairs
