"""Registries for the step pipeline's small plug-ins (modifiers, filters): lookup by name, typed options, build.

Samplers and caches keep their own registries (``dllm.samplers``, ``dllm.caches``); modifiers and filters
share this class so that each kind is a few lines. Names, "did you mean" messages, re-registration and
option types all go through :mod:`dllm.registry`, as for samplers and caches. A plug-in is a dataclass whose
fields are its options; ``validate()`` checks their values with one-line messages.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from . import registry


class Registry:
    def __init__(self, kind: str, base: type):
        self.kind, self.base = kind, base
        self._classes: dict[str, type] = {}

    def register(self, name: str, override: bool = False) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"@register('{name}') needs a subclass of {self.base.__module__}.{self.base.__name__}")
            registry.add(self._classes, self.kind, name, cls, override)
            cls.name = name
            return cls

        return decorate

    def available(self) -> list[str]:
        return sorted(self._classes)

    def option_names(self, name: str) -> list[str]:
        cls = registry.lookup(self._classes, self.kind, name)
        return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []

    def build(self, spec, options: dict | None = None):
        """A plug-in from an instance, a name, or ``(name, options)``; option names and types are checked."""
        owner = f"{self.kind} '{getattr(spec, 'name', spec)}'"
        if isinstance(spec, self.base):
            registry.coerce_fields(spec, owner)
            spec.validate()
            return spec
        if isinstance(spec, tuple):
            spec, extra = spec
            options = {**(options or {}), **extra}
            owner = f"{self.kind} '{spec}'"
        cls = registry.lookup(self._classes, self.kind, spec)
        plugin = cls(**registry.coerce_options(cls, dict(options or {}), owner))
        plugin.validate()
        return plugin
