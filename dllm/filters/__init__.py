"""Filters: plug-ins that see every token about to be committed and may adjust or veto it."""

from .base import Filter, available, build, option_names, register
from . import ar_opening, eotp, grammar, scaffold  # noqa: F401  (registration)

__all__ = ["Filter", "available", "build", "option_names", "register"]
