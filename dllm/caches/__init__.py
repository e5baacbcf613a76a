"""Caches: what each forward feeds and which K/V it reuses. One file per cache, registered by name."""

from .base import Cache, Feed, StepContext, available, build, option_names, register
from . import none, prefix, dual, block  # noqa: F401  (registration)

__all__ = ["Cache", "Feed", "StepContext", "available", "build", "option_names", "register"]
