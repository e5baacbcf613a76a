"""The filter contract: see (and veto) every token about to land on the canvas.

Filters run after the sampler and the progress guarantee, so they see every commit of a step — the
sampler's, the fallback's, a forced opening token's. Hooks (all optional):

* ``start(engine)``          once per generation (geometry, model, batch)
* ``adjust(view, decision)`` reshape the decision: drop or retarget candidate commits, move a row's end
* ``reject(view, decision)`` bool [B, W]: committed (position, token) pairs to veto; the engine bans each
                              pair for the rest of the generation and the row re-selects; a row past
                              ``max_rejections`` ends as "stuck"
* ``committed(view, commit, tokens)``  what actually landed (incremental state such as a parser)
* ``select_rows(rows)``      follow row retirement (index tensors of the rows that stay)
* ``finish(stats)``          after the last step: add to the statistics (counters, reasons, witnesses)
* ``fixed_cells()``          cells this filter wrote that are fixed text, not model output (a scaffold's
                              keys): {caller row: region positions}; ``stats.tokens`` leaves them out
"""

from __future__ import annotations

import dataclasses

import torch

from ..engine.view import Decision, StepView
from ..plugins import Registry


class Filter:
    name: str = ""

    def start(self, engine) -> None:
        pass

    def adjust(self, view: StepView, decision: Decision) -> Decision:
        return decision

    def reject(self, view: StepView, decision: Decision) -> torch.Tensor | None:
        return None

    def committed(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> None:
        pass

    def select_rows(self, rows: torch.Tensor) -> None:
        pass

    def finish(self, stats) -> None:
        pass

    def fixed_cells(self) -> dict[int, set[int]]:
        return {}

    def validate(self) -> None:
        """Check option values; raise ValueError with a one-line message naming the fix."""

    def describe(self) -> dict:
        return {"filter": self.name, **dataclasses.asdict(self)}


REGISTRY = Registry("filter", Filter)
register, available, build, option_names = REGISTRY.register, REGISTRY.available, REGISTRY.build, REGISTRY.option_names
