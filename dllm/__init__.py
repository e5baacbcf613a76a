"""dllm: fast, correct decoding for masked diffusion language models.

    import dllm
    model = dllm.load("tiny")
    out = dllm.generate(model, ["..."], sampler="threshold", cache="dual", gen_length=64, threshold=0.9)
"""

from . import caches, samplers
from .engine import Generation, Stats, StepView
from .generate import generate
from .models import CheckpointError, Model, UnsupportedConfigError, load

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Generation", "Model", "Stats", "StepView", "UnsupportedConfigError", "caches",
           "generate", "load", "samplers", "__version__"]
