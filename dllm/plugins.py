"""Registries for the step pipeline's small plug-ins (modifiers, filters): lookup by name, options, build.

Samplers and caches keep their own registries (``dllm.samplers``, ``dllm.caches``); modifiers and filters
share this one class so that each kind is a dozen lines. A plug-in is a dataclass whose fields are its
options; ``validate()`` checks their values with one-line messages.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable


class Registry:
    def __init__(self, kind: str, base: type):
        self.kind, self.base = kind, base
        self._classes: dict[str, type] = {}

    def register(self, name: str, override: bool = False) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"@register('{name}') needs a subclass of {self.base.__module__}.{self.base.__name__}")
            if name in self._classes and self._classes[name] is not cls and not override:
                raise ValueError(f"a {self.kind} named '{name}' is already registered: pass override=True to replace it")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def available(self) -> list[str]:
        return sorted(self._classes)

    def lookup(self, name: str) -> type:
        if name not in self._classes:
            hint = difflib.get_close_matches(str(name), list(self._classes), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ValueError(f"unknown {self.kind} '{name}'{suggestion}; available: {', '.join(self.available()) or 'none'}")
        return self._classes[name]

    def option_names(self, name: str) -> list[str]:
        return [f.name for f in dataclasses.fields(self.lookup(name))]

    def build(self, spec, options: dict | None = None):
        """A plug-in from an instance, a name, or ``(name, options)``; options are checked by name."""
        if isinstance(spec, self.base):
            spec.validate()
            return spec
        if isinstance(spec, tuple):
            spec, extra = spec
            options = {**(options or {}), **extra}
        cls = self.lookup(spec)
        options = dict(options or {})
        valid = self.option_names(spec)
        unknown = [k for k in options if k not in valid]
        if unknown:
            raise ValueError(f"unknown option '{unknown[0]}' for {self.kind} '{spec}'; its options are: "
                             f"{', '.join(valid) or 'none'}")
        plugin = cls(**options)
        plugin.validate()
        return plugin
