"""The one decoding engine: canvas layout, the step loop, step views and results."""

from .canvas import Canvas, build_canvas
from .loop import DecodeSettings, Engine, ProcessorContext
from .result import Generation, Stats, Trajectory, TrajectoryStep
from .view import StepView, rank_order, top_k_mask

__all__ = ["Canvas", "DecodeSettings", "Engine", "Generation", "ProcessorContext", "Stats", "StepView", "Trajectory",
           "TrajectoryStep", "build_canvas", "rank_order", "top_k_mask"]
