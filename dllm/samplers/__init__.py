"""Samplers: which masked positions to commit at each step. One file per sampler, registered by name."""

from .base import Sampler, available, build, option_names, register
from . import factor, freedave, learn2pd, localleap, oracle, static, threshold  # noqa: F401  (registration)

__all__ = ["Sampler", "available", "build", "option_names", "register"]
