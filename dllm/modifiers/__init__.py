"""Modifiers: reshape one step's ranking of candidates (e.g. EOS early rejection); any sampler can wear them."""

from .base import Modifier, available, build, option_names, register
from . import eoser  # noqa: F401  (registration)

__all__ = ["Modifier", "available", "build", "option_names", "register"]
