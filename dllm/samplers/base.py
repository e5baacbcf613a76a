"""The sampler contract and the registry.

A sampler is a dataclass of options plus ``select(view) -> commit``: given a :class:`StepView`, say which
candidate positions to commit this step (a bool [B, W] tensor), optionally with tokens of its own
(``(commit, tokens)``). The engine owns the loop, the cache, the batch and the statistics; a sampler only
decides. Samplers are registered by name so third-party ones plug in exactly like ours::

    @dllm.samplers.register("my_sampler")
    @dataclass
    class MySampler(dllm.samplers.Sampler):
        ratio: float = 0.5
        def select(self, view): ...
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

import torch

from ..engine.view import StepView

_REGISTRY: dict[str, type] = {}


class Sampler:
    """Base class: subclasses are dataclasses whose fields are the sampler's options."""

    name: str = ""
    #: whether the sampler reads ``view.steps_per_block`` (then ``steps`` must divide into the blocks)
    uses_steps: bool = False

    def select(self, view: StepView) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def validate(self) -> None:
        """Check option values; raise ValueError with a one-line message naming the fix."""

    def describe(self) -> dict:
        return {"sampler": self.name, **dataclasses.asdict(self)} if dataclasses.is_dataclass(self) else {"sampler": self.name}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Sampler` subclass available as ``sampler=name``."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"@register('{name}') needs a subclass of dllm.samplers.Sampler, got {cls!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Names of the registered samplers."""
    return sorted(_REGISTRY)


def option_names(name: str) -> list[str]:
    cls = _lookup(name)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def build(name: str | Sampler, options: dict | None = None) -> Sampler:
    """Instantiate sampler ``name`` with ``options``; unknown names/options get a one-line error."""
    options = dict(options or {})
    if isinstance(name, Sampler):
        if options:
            raise ValueError(f"options {sorted(options)} were given together with a ready sampler object: set them on the object")
        name.validate()
        return name
    cls = _lookup(name)
    valid = option_names(name)
    unknown = [k for k in options if k not in valid]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], valid, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        listing = ", ".join(valid) if valid else "none"
        raise ValueError(f"unknown option '{unknown[0]}' for sampler '{name}'{suggestion}; its options are: {listing}")
    sampler = cls(**options)
    sampler.validate()
    return sampler


def _lookup(name: str) -> type:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown sampler '{name}'{suggestion}; available: {', '.join(available())}")
    return _REGISTRY[name]
