"""The one decoding engine: canvas layout, the step loop, step views and results."""

from .canvas import Canvas, build_canvas
from .events import StepEvent
from .loop import DecodeError, DecodeSettings, Engine, ProcessorContext
from .result import Generation, Stats, Trajectory, TrajectoryStep
from .view import Decision, RowState, StepView, rank_order, top_k_mask

__all__ = ["Canvas", "DecodeError", "DecodeSettings", "Decision", "Engine", "Generation", "ProcessorContext",
           "RowState", "Stats", "StepEvent", "StepView", "Trajectory", "TrajectoryStep", "build_canvas", "rank_order",
           "top_k_mask"]
