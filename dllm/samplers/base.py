"""The sampler contract and the registry.

A sampler is a dataclass of options plus ``select(view)``: given a :class:`StepView`, say which candidate
positions to commit this step — a bool [B, W] tensor, ``(commit, tokens)``, or a :class:`Decision` (which can
also hand the next step's logits over, or move a row's end). The engine owns the loop, the cache, the batch
and the statistics; a sampler only decides. Optional hooks: ``layout`` (the decode spans it needs),
``progress`` (how far the decode is, for modifiers such as EOS early rejection), ``needs_generator``,
``start`` (once per generation, with the engine: model, canvas, settings). Samplers are registered by name so third-party ones plug in exactly like ours::

    @dllm.samplers.register("my_sampler")
    @dataclass
    class MySampler(dllm.samplers.Sampler):
        ratio: float = 0.5
        def select(self, view): ...
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .. import registry
from ..engine.view import Decision, StepView

_REGISTRY: dict[str, type] = {}


class Sampler:
    """Base class: subclasses are dataclasses whose fields are the sampler's options."""

    name: str = ""
    #: whether the sampler reads ``view.steps_per_span`` (then ``steps`` must divide into the blocks)
    uses_steps: bool = False

    #: whether the sampler draws random numbers (then each row gets its own seeded generator)
    needs_generator: bool = False

    def select(self, view: StepView) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Decision:
        raise NotImplementedError

    def start(self, engine) -> None:
        """Called by the engine once per generation, before the first step: ``engine.model``,
        ``engine.canvas`` (spans), ``engine.settings`` (confidence kind) are set. Load per-model resources
        here (learn2pd reads its filter file beside the checkpoint) and refuse what does not fit."""

    def layout(self, gen_length: int, block_length: int) -> list[int] | None:
        """Span lengths (left to right, summing to ``gen_length``) when the sampler needs its own layout;
        None = blocks of ``block_length``."""
        return None

    def progress(self, view: StepView) -> torch.Tensor:
        """[B] fraction of each row's generated region already decoded before this step (0 at the start, 1
        when done). Schedules with a known step count override it with their own clock."""
        generated = (view.canvas == view.mask_id) & _generated(view)
        remaining = generated.sum(-1).float()
        return (1.0 - remaining / max(view.gen_length, 1)).clamp(0.0, 1.0)

    def validate(self) -> None:
        """Check option values; raise ValueError with a one-line message naming the fix."""

    def describe(self) -> dict:
        return {"sampler": self.name, **dataclasses.asdict(self)} if dataclasses.is_dataclass(self) else {"sampler": self.name}


def register(name: str, *, override: bool = False) -> Callable[[type], type]:
    """Class decorator: make a :class:`Sampler` subclass available as ``sampler=name``. A name that is
    already taken (a built-in included) is refused unless ``override=True``."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"@register('{name}') needs a subclass of dllm.samplers.Sampler, got {cls!r}")
        registry.add(_REGISTRY, "sampler", name, cls, override=override)
        cls.name = name
        return cls

    return decorate


def available() -> list[str]:
    """Names of the registered samplers."""
    return sorted(_REGISTRY)


def option_names(name: str) -> list[str]:
    return list(registry.field_types(_lookup(name)))


def build(name: str | Sampler, options: dict | None = None) -> Sampler:
    """Instantiate sampler ``name`` with ``options`` converted to its field types; unknown names, unknown
    options and values of the wrong type get a one-line error naming the option."""
    options = dict(options or {})
    if isinstance(name, Sampler):
        if options:
            raise ValueError(f"options {sorted(options)} were given together with a ready sampler object: set them on the object")
        registry.coerce_fields(name, f"sampler '{name.name}'")
        name.validate()
        return name
    cls = _lookup(name)
    sampler = cls(**registry.coerce_options(cls, options, f"sampler '{name}'"))
    sampler.validate()
    return sampler


def _lookup(name: str) -> type:
    return registry.lookup(dict(sorted(_REGISTRY.items())), "sampler", name)


def _generated(view: StepView) -> torch.Tensor:
    cols = torch.arange(view.canvas.shape[1], device=view.canvas.device)
    return (cols[None, :] >= view.gen_start[:, None]) & (cols[None, :] < view.end[:, None])
