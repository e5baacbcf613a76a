"""Open scaffold slots: write a schema skeleton's fixed text right where the model's value ends.

A schema scaffold with ``slot_length="model"`` (the default of ``dllm.generate(schema=...)``; pieces from
``dllm.grammars.scaffold.schema_pieces``) lays only its first fixed piece before decoding. Each step this filter
walks each row's output from the start: a fixed piece must stand in the canvas token for token (masked cells of it
are *pending*), and an open slot ends at the first token boundary where its text is a whole JSON value followed by
the structure the slot holds (``slot_complete``: ``"Ben",`` or ``19,`` or ``"Pine"},``). The walk stops at the
first slot that is not complete yet. Pending cells of the current span join the step's commits with the piece's
tokens (replacing whatever the sampler chose there); the grammar filter, which runs after this one, checks them
like any commit.

So a value is as long as the model writes it, and the keys after it are never the model's to get wrong. When the
model has written something else where a piece belongs (it may write keys itself, beyond the walk; the grammar
keeps that valid), or when a filter has banned a skeleton token at its cell (the grammar vetoes it: the model's
own commits after the cell leave no room for it, e.g. a key's closing ``":`` one cell too far), the row is
*derailed*: the filter writes nothing more in it and the grammar alone carries it (counter ``scaffold_derailed``).
Cells the filter wrote are fixed text, not model output: ``fixed_cells`` reports them and ``stats.tokens`` leaves
them out; counter ``scaffold_cells``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.view import Decision, StepView
from .base import Filter, register


@register("scaffold")
@dataclass
class ScaffoldFilter(Filter):
    pieces: object = None  # one list of pieces (str / OpenSlot) for every row, or one list per row

    def validate(self) -> None:
        from ..grammars.scaffold import OpenSlot

        rows = self.pieces
        if not isinstance(rows, (list, tuple)) or not rows:
            raise ValueError("scaffold: pieces must be the pieces of schema_pieces(schema, slot_length='model')")
        if all(isinstance(p, (str, OpenSlot)) for p in rows):
            rows = [rows]
        for row in rows:
            if not isinstance(row, (list, tuple)) or not all(isinstance(p, (str, OpenSlot)) for p in row):
                raise ValueError("scaffold: each row's pieces must be fixed strings and OpenSlot slots "
                                 "(schema_pieces(schema, slot_length='model'))")
        self._rows = [list(r) for r in rows]

    def attach(self, model) -> None:
        """Tokenize the pieces (each fixed piece alone, as ``template_cells`` lays one) and read the token bytes."""
        from ..grammars.scaffold import OpenSlot
        from ..grammars.tokens import token_bytes

        if not hasattr(self, "_rows"):
            self.validate()
        self._items = [[p if isinstance(p, OpenSlot) else tuple(model.tokenizer.encode(p, add_special_tokens=False))
                        for p in row] for row in self._rows]
        self._bytes = token_bytes(model.tokenizer)
        self.mask_id, self.eos = model.mask_id, set(model.eos_ids)

    def start(self, engine) -> None:
        if not hasattr(self, "_items"):
            self.attach(engine.model)
        batch = engine.canvas.x.shape[0]
        if len(self._items) not in (1, batch):
            raise ValueError(f"scaffold: {len(self._items)} rows of pieces for a batch of {batch}")
        self.caller = list(range(batch))
        self.eos = set(engine.settings.eos_ids)
        self.written: dict[int, set[int]] = {}  # caller row -> region positions written by this filter
        self.derailed: dict[int, bool] = {}
        self._settled: dict[int, tuple[int, int]] = {}  # caller row -> (item index, position) settled for good
        self._proposed: dict[tuple[int, int], int] = {}

    def _row_items(self, row: int) -> list:
        return self._items[0] if len(self._items) == 1 else self._items[row]

    # ------------------------------------------------------------------------------------------------
    def pending(self, items: list, region: list[int]) -> tuple[list[tuple[int, int]], bool]:
        """(region position, token) of the fixed cells still masked where the walk reaches, and whether the row
        is derailed (a cell of a fixed piece holds another token)."""
        cells, derailed, _ = self._walk(items, region, (0, 0))
        return cells, derailed

    def _walk(self, items: list, region: list[int], start: tuple[int, int]):
        """``pending`` from ``start`` = (item index, region position), plus how far the row is settled for good:
        a piece whose cells all stand and a complete slot never change (committed cells are never overwritten),
        so the next step's walk resumes there instead of reading every slot again."""
        from ..grammars.scaffold import slot_complete

        first, pos = start
        settled, out = start, []
        for n in range(first, len(items)):
            item = items[n]
            if isinstance(item, tuple):
                for j, token in enumerate(item):
                    if pos + j >= len(region):
                        return out, False, settled
                    cell = region[pos + j]
                    if cell == self.mask_id:
                        out.append((pos + j, token))
                    elif cell != token:
                        return [], True, settled
                if out:  # the slot after a piece that has not landed yet is still masked
                    return out, False, settled
                pos += len(item)
                settled = (n + 1, pos)
                continue
            text, end = b"", None
            for k in range(pos, len(region)):
                cell = region[k]
                if cell == self.mask_id or cell in self.eos:
                    break
                text += self._bytes[cell] or b""
                if slot_complete(text, item.closer):
                    end = k + 1
                    break
            if end is None:
                return out, False, settled
            pos = end
            settled = (n + 1, pos)
        return out, False, settled

    def adjust(self, view: StepView, decision: Decision) -> Decision:
        if all(self.derailed.get(row) or self._settled.get(row, (0, 0))[0] == len(self._row_items(row))
               for row in self.caller):
            return decision  # nothing left to write: no host copies
        canvas = view.canvas.cpu()
        masked = view.masked.cpu()
        starts = view.gen_start.cpu().tolist()
        span0, width = view.span[0], masked.shape[1]
        commit, tokens = decision.commit.cpu().clone(), decision.tokens.cpu().clone()
        self._proposed = {}
        for b, row in enumerate(self.caller):
            if self.derailed.get(row):
                continue
            start = starts[b]
            region = canvas[b, start:].tolist()
            cells, derailed, self._settled[row] = self._walk(self._row_items(row), region,
                                                              self._settled.get(row, (0, 0)))
            if derailed:
                self.derailed[row] = True
                continue
            mine = {}
            for pos, token in cells:
                w = start + pos - span0
                if 0 <= w < width and masked[b, w]:
                    mine[w] = token
            if mine and bool(torch.isneginf(view.logits[b, list(mine), list(mine.values())]).any()):
                self.derailed[row] = True  # a filter banned a skeleton token there: the canvas cannot take it
                continue
            for w, token in mine.items():
                commit[b, w], tokens[b, w] = True, token
                self._proposed[(b, w)] = token
        if self._proposed:
            decision.commit = commit.to(decision.commit.device)
            decision.tokens = tokens.to(decision.tokens.device)
        return decision

    def committed(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> None:
        if not self._proposed:
            return
        starts = view.gen_start.cpu().tolist()
        commit, tokens = commit.cpu(), tokens.cpu()
        for (b, w), token in self._proposed.items():
            if commit[b, w] and int(tokens[b, w]) == token:
                self.written.setdefault(self.caller[b], set()).add(view.span[0] + w - starts[b])
        self._proposed = {}

    def select_rows(self, rows: torch.Tensor) -> None:
        self.caller = [self.caller[i] for i in rows.tolist()]

    def fixed_cells(self) -> dict[int, set[int]]:
        return self.written

    def finish(self, stats) -> None:
        rows = range(len(stats.status))
        stats.counters["scaffold_cells"] = [len(self.written.get(r, ())) for r in rows]
        stats.counters["scaffold_derailed"] = [int(self.derailed.get(r, False)) for r in rows]

    def describe(self) -> dict:
        return {"filter": self.name, "pieces": [[repr(p) for p in row] for row in getattr(self, "_rows", [])]}
