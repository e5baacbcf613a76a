"""Checkpoint loading and the native network (see ``families.py`` for the supported formats)."""

from .families import FAMILIES, UnsupportedConfigError
from .kv_cache import KVCache, KVWrite
from .loader import CheckpointError, load
from .model import Model

__all__ = ["FAMILIES", "CheckpointError", "KVCache", "KVWrite", "Model", "UnsupportedConfigError", "load"]
