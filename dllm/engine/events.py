"""Step events: what one decoding step did, for streaming UIs (``dllm.stream``) and progress displays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepEvent:
    """One step of the loop.

    ``commits`` maps a caller's row index to the ``(position, token)`` pairs committed this step, positions
    counted from the row's first generated token (so applying every event's commits to a canvas of MASKs
    rebuilds each row's generated region). ``forward`` is False when the step reused logits handed over by
    the previous one (no network call); ``nfe`` is the running count of network calls.
    """

    step: int
    nfe: int
    forward: bool
    span: tuple[int, int]
    commits: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    tokenizer: Any = None

    def text(self, tokens: list[int]) -> str:
        """Decode ``tokens`` with the model's tokenizer (a convenience for displays)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=False)
