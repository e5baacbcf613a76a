"""Step events: what one decoding step did, for streaming UIs (``dllm.stream``) and progress displays."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch


class StepEvent:
    """One step of the loop.

    ``commits`` maps a caller's row index to the ``(position, token)`` pairs committed this step, positions
    counted from the row's first generated token (so applying every event's commits to a canvas of MASKs
    rebuilds each row's generated region). ``forward`` is False when the step reused logits handed over by
    the previous one (no network call); ``nfe`` is the running count of network calls. ``commits`` is read from
    the device only when asked for, so a decode nobody streams pays nothing for its events.
    """

    def __init__(self, step: int, nfe: int, forward: bool, span: tuple[int, int], rows: torch.Tensor,
                 commit: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor, tokenizer: Any = None):
        self.step, self.nfe, self.forward, self.span, self.tokenizer = step, nfe, forward, span, tokenizer
        self._rows, self._commit, self._tokens, self._offsets = rows, commit, tokens, offsets

    @cached_property
    def commits(self) -> dict[int, list[tuple[int, int]]]:
        where = self._commit.nonzero().tolist()
        values = self._tokens[self._commit].tolist()
        offsets = self._offsets.tolist()
        rows = self._rows.tolist()
        commits: dict[int, list[tuple[int, int]]] = {}
        for (r, c), t in zip(where, values):
            commits.setdefault(rows[r], []).append((c + offsets[r], t))
        return commits

    def text(self, tokens: list[int]) -> str:
        """Decode ``tokens`` with the model's tokenizer (a convenience for displays)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"StepEvent(step={self.step}, nfe={self.nfe}, forward={self.forward}, span={self.span})"
