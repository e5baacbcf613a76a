"""The cache contract: which columns each forward feeds and how K/V are written and reused.

The engine asks ``plan(step)`` before every forward and runs the network on the returned :class:`Feed`;
the cache owns its :class:`~dllm.models.KVCache` and its refresh schedule. ``plan`` has no side effects
(bookkeeping goes into ``Feed.after``, run only when the forward really runs), so the engine may also plan
the *next* step to run read-only hypotheses through it. A cache never sees logits and
never decides tokens, so every cache works with every sampler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from .. import registry
from ..models import KVCache, KVWrite

_REGISTRY: dict[str, type] = {}


@dataclass(frozen=True)
class Feed:
    """Feed canvas columns [start, end); with ``write`` the K/V go to the cache and keys are [0, write.key_len)."""

    start: int
    end: int
    write: KVWrite | None = None
    after: Callable[[], None] | None = None  # bookkeeping once the forward ran (e.g. crop to the prefix)
    #: skipping this forward leaves the cache as good as running it (its K/V are scratch that the next
    #: forward rewrites): only then may the engine use logits handed over by the previous step instead
    ephemeral: bool = False


@dataclass(frozen=True)
class StepContext:
    """Where the engine stands: the span, forwards already run in it, sampler steps already taken in it."""

    span: tuple[int, int]
    forwards: int
    sampler_steps: int
    width: int  # canvas width T
    opening_undecided: torch.Tensor | None = None  # [B] bool: the span's first column is still MASK
    any_opening_undecided: bool = False


class Cache:
    """Base class; subclasses are dataclasses whose fields are the cache's options."""

    name: str = ""
    fits: tuple[str, ...] = ()  # attention patterns this cache is correct for
    exact: bool = True  # whether logits equal the uncached forward
    #: whether ``plan`` can be asked for the next step ahead of time and its K/V copied for read-only
    #: hypothesis forwards (draft-and-verify samplers); a cache that cannot sets it False
    serves_hypotheses: bool = True

    def start(self, network, batch: int, width: int, block_size: int | None) -> None:
        """Called once per generation (after option validation) with the canvas geometry."""
        self.kv = None
        self.block_size = block_size

    def plan(self, ctx: StepContext) -> Feed:
        raise NotImplementedError

    def select_rows(self, rows: torch.Tensor) -> None:
        if getattr(self, "kv", None) is not None:
            self.kv.select_rows(rows)

    def validate(self) -> None:
        """Check option values; raise ValueError with a one-line message naming the fix."""

    def _check_positive(self, option: str) -> None:
        value = getattr(self, option)
        if value is not None and value < 1:
            raise ValueError(f"{self.name} cache: {option} must be >= 1 (got {value})")

    def describe(self) -> dict:
        """Name, whether its logits equal the uncached forward (``exact``), and option values (for stats)."""
        return {"cache": self.name, "exact": self.exact, **dataclasses.asdict(self)}

    def _new_kv(self, network, batch: int, width: int) -> KVCache:
        return KVCache.for_network(network, batch, width)


class RefreshingCache(Cache):
    """Approximate caches refreshed by a full-canvas forward at each block start and every ``refresh_every``
    forwards inside a block (subclasses are dataclasses that declare ``refresh_every``)."""

    refresh_every: int | None = None

    def validate(self) -> None:
        self._check_positive("refresh_every")

    def start(self, network, batch, width, block_size):
        super().start(network, batch, width, block_size)
        self.kv = self._new_kv(network, batch, width)

    def refresh_due(self, ctx: StepContext) -> bool:
        return ctx.forwards == 0 or bool(self.refresh_every and ctx.forwards % self.refresh_every == 0)


def register(name: str, fits: tuple[str, ...], exact: bool, *, override: bool = False) -> Callable[[type], type]:
    """Class decorator: make a :class:`Cache` subclass available as ``cache=name`` for the attention patterns
    in ``fits``; a taken name is refused unless ``override=True``."""

    def decorate(cls: type) -> type:
        registry.add(_REGISTRY, "cache", name, cls, override=override)
        cls.name, cls.fits, cls.exact = name, fits, exact
        return cls

    return decorate


def available(attention: str | None = None) -> list[str]:
    """Registered cache names (those that fit ``attention`` when given), in registration order."""
    return [n for n, c in _REGISTRY.items() if attention is None or attention in c.fits]


def build(name: str, attention: str, family: str, options: dict) -> Cache:
    """Instantiate cache ``name`` for a model's attention pattern, options converted to the field types;
    unknown names/options, values of the wrong type and caches that do not fit get a one-line error."""
    cls = registry.lookup(_REGISTRY, "cache", name)
    if attention not in cls.fits:
        kind = "block-causal" if attention == "block_causal" else "full-attention"
        raise ValueError(f"cache '{name}' does not fit the {kind} family {family}; caches that fit: {', '.join(available(attention))}")
    cache = cls(**registry.coerce_options(cls, dict(options or {}), f"cache '{name}'"))
    cache.validate()
    return cache


def option_names(name: str) -> list[str]:
    cls = _REGISTRY.get(name)
    return list(registry.field_types(cls)) if cls else []


def all_option_names() -> set[str]:
    return {f.name for cls in _REGISTRY.values() for f in dataclasses.fields(cls)}


def model_block(span: tuple[int, int], block_size: int, width: int) -> tuple[int, int]:
    """The attention block [start, end) (canvas columns, clipped to the canvas) holding ``span``."""
    start = span[0] // block_size * block_size
    return start, min(start + block_size, width)
