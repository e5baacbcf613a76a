"""dllm: fast, correct decoding for masked diffusion language models.

    import dllm
    model = dllm.load("tiny")
    out = dllm.generate(model, ["..."], sampler="threshold", cache="dual", gen_length=64, threshold=0.9)
"""

from . import caches, filters, modifiers, samplers
from .engine import Decision, Generation, Stats, StepEvent, StepView
from .generate import generate, stream
from .models import CheckpointError, Model, UnsupportedConfigError, load

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Decision", "Generation", "Model", "Stats", "StepEvent", "StepView",
           "UnsupportedConfigError", "caches", "filters", "generate", "load", "modifiers", "samplers", "stream",
           "__version__"]
