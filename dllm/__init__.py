"""dllm: fast, correct decoding for masked diffusion language models."""

from .models import CheckpointError, Model, UnsupportedConfigError, load

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Model", "UnsupportedConfigError", "load", "__version__"]
