"""The modifier contract: reshape the ranking of one step's candidates, not the proposals.

A modifier is a dataclass of options plus ``rescore(view) -> confidence [B, W]``; it runs after the view is
built and before the sampler selects, so every sampler can wear any modifier (``modifiers=["eoser"]``).
Non-candidate positions are reset to -inf by the engine afterwards.
"""

from __future__ import annotations

import dataclasses

import torch

from ..engine.view import StepView
from ..plugins import Registry


class Modifier:
    name: str = ""

    def rescore(self, view: StepView) -> torch.Tensor:
        raise NotImplementedError

    def validate(self) -> None:
        """Check option values; raise ValueError with a one-line message naming the fix."""

    def describe(self) -> dict:
        return {"modifier": self.name, **dataclasses.asdict(self)}


REGISTRY = Registry("modifier", Modifier)
register, available, build, option_names = REGISTRY.register, REGISTRY.available, REGISTRY.build, REGISTRY.option_names
