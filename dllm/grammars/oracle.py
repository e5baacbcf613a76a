"""Feasibility oracle over token canvases, and the per-row state the decoding engine drives.

See the package docstring (``dllm/grammars/__init__.py``) for the API contract. Choices recorded here:

* **Serial checks inside a parallel step.** ``allows`` always checks against the canvas *including every
  earlier commit*; an engine that commits k tokens in one step calls ``allows`` / ``commit`` pair by pair
  in confidence order (or ``filter(pairs)`` which does exactly that). Two tokens that are each feasible
  alone can be jointly infeasible; checking them one at a time is the only sound order-independent rule.
* **Persistent rejection list.** The canvas only gains information (nothing is overwritten, see
  ``kernels.py``), so a rejected (position, token) stays rejected for the rest of the generation; it is
  remembered and answered without running the kernels again. ``banned(position)`` lists them so an
  engine can apply them as -inf before its next selection.
* **Incrementality.** The whole check (lexing sweep + search) runs in one compiled pass that is linear in
  the known text plus the grammar search, so it is recomputed per query rather than patched; what is
  incremental is the bookkeeping: the ban list, a per-canvas memo of positive answers (cleared on
  commit), and the fast paths (committed cell, excluded token, already-infeasible canvas).
* **Work cap.** A search that exceeds ``max_pops`` worklist pops answers "not allowed" (safe for syntax,
  may over-reject) and is counted in ``state.cap_hits``.
* **Special tokens** (``TokenTable.excluded``): never allowed, except EOS ids (end of output). The mask id
  marks masked cells.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from . import kernels as K
from .grammar import Grammar, load_grammar
from .tokens import TokenTable

__all__ = ["Oracle", "OracleState"]

_TABLES: dict[int, tuple[object, TokenTable]] = {}


def _token_table(tokenizer) -> TokenTable:
    hit = _TABLES.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    table = TokenTable(tokenizer)
    _TABLES[id(tokenizer)] = (tokenizer, table)
    return table


class Oracle:
    """Grammar + tokenizer -> feasibility checks on canvases of token ids.

    ``Oracle(grammar="json", tokenizer, mask_id=..., eos_ids=(...), backend=None, open_end=False)``.
    ``grammar``: anything :func:`load_grammar` takes (``"json"``, a ``.lark`` path, grammar text, a JSON
    Schema dict, a :class:`Grammar`). ``tokenizer``: a ``transformers`` fast tokenizer or a
    ``tokenizers.Tokenizer`` (or pass ``token_table=`` a list of bytes per id for tests). ``mask_id``
    defaults to the tokenizer's ``mask_token_id``; ``eos_ids`` to its ``eos_token_id``.
    """

    def __init__(self, grammar="json", tokenizer=None, *, mask_id: int | None = None,
                 eos_ids: Iterable[int] | None = None, backend: str | None = None, open_end: bool = False,
                 max_pops: int = 20_000_000, token_table: "TokenTable | list[bytes | None] | None" = None):
        self.grammar: Grammar = load_grammar(grammar)
        if token_table is not None:
            self.tokens = token_table if isinstance(token_table, TokenTable) else TokenTable(table=list(token_table))
        elif tokenizer is not None:
            self.tokens = _token_table(tokenizer)
        else:
            raise ValueError("Oracle needs a tokenizer (or token_table=)")
        if mask_id is None:
            mask_id = getattr(tokenizer, "mask_token_id", None)
        if eos_ids is None:
            e = getattr(tokenizer, "eos_token_id", None)
            eos_ids = [] if e is None else [e]
        self.mask_id = -1 if mask_id is None else int(mask_id)
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.backend = K.resolve_backend(backend)
        self._build, self._search = K.kernels(self.backend)
        self.open_end = bool(open_end)
        self.max_pops = int(max_pops)
        self.excluded = self.tokens.excluded.copy()
        for e in self.eos_ids:
            if 0 <= e < len(self.excluded):
                self.excluded[e] = False
        if 0 <= self.mask_id < len(self.excluded):
            self.excluded[self.mask_id] = True
        self._code = np.arange(len(self.tokens), dtype=np.int32)
        for e in self.eos_ids:
            if 0 <= e < len(self._code):
                self._code[e] = K.EOS
        if 0 <= self.mask_id < len(self._code):
            self._code[self.mask_id] = K.MASK

    # ------------------------------------------------------------------ canvas encoding
    def encode(self, tokens: Sequence[int]) -> np.ndarray:
        """Token ids (mask id = masked, EOS ids = end) -> the kernels' cell codes (int32)."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._code)):
            raise ValueError(f"token id out of range for this tokenizer (0..{len(self._code) - 1})")
        return self._code[ids].copy()

    def code(self, token_id: int) -> int:
        return int(self._code[token_id])

    # ------------------------------------------------------------------ checks on raw cell arrays
    def _nfa(self, cells: np.ndarray):
        ar = self.grammar.arrays
        return self._build(cells, self.tokens.off, self.tokens.data, self.open_end, ar["g_step"], ar["g_acc"],
                           ar["g_term"], ar["g_start"], ar["clo_ptr"], ar["clo_idx"])

    def _run(self, cells: np.ndarray, want_bp: bool):
        res = self._nfa(cells)
        if res[0] != 1:
            return 0, res, None
        g = self.grammar
        ar = g.arrays
        n = res[1]
        out = self._search(n, res[3], res[4], res[5], res[6], g.n_nonterminals, g.start_nt,
                           ar["t_ptr"], ar["t_a"], ar["t_rule"], ar["u_ptr"], ar["u_a"], ar["u_rule"],
                           ar["l_ptr"], ar["l_c"], ar["l_a"], ar["l_rule"], ar["r_ptr"], ar["r_c"], ar["r_a"],
                           ar["r_rule"], ar["eps_a"], ar["eps_rule"], want_bp, self.max_pops)
        return int(out[0]), res, out

    def status_cells(self, cells: np.ndarray) -> int:
        """0 infeasible, 1 feasible, 2 work cap hit (treated as infeasible)."""
        return self._run(np.ascontiguousarray(cells, dtype=np.int32), False)[0]

    def feasible(self, tokens: Sequence[int]) -> bool:
        """Can the masked cells of this canvas be filled so that the output is in the grammar?"""
        return self.status_cells(self.encode(tokens)) == 1

    def nfa_size(self, tokens: Sequence[int]) -> int:
        """Number of NFA nodes kept for this canvas (0 when lexing alone already rejects it)."""
        res = self._nfa(self.encode(tokens))
        return int(res[1]) if res[0] == 1 else 0

    def witness_cells(self, cells: np.ndarray) -> bytes | None:
        """A completion: the output bytes (up to end of output) with every gap filled, or None."""
        status, res, out = self._run(np.ascontiguousarray(cells, dtype=np.int32), True)
        if status != 1:
            return None
        return _realize(self.grammar, res, out, self._space_ok())

    def witness(self, tokens: Sequence[int]) -> bytes | None:
        return self.witness_cells(self.encode(tokens))

    def _space_ok(self) -> bool:
        if not hasattr(self, "_space"):
            self._space = any(t.silent and t.accepts(b" ") for t in self.grammar.terminals)
        return self._space

    # ------------------------------------------------------------------ per-row state
    def start(self, tokens: Sequence[int] | None = None, length: int | None = None) -> "OracleState":
        """A state for one row: ``tokens`` = the row's output region (mask id where masked), or
        ``length`` masked cells. Check ``state.feasible()`` to reject an impossible template up front."""
        if tokens is None:
            if length is None:
                raise ValueError("start() needs tokens or length")
            cells = np.full(int(length), K.MASK, dtype=np.int32)
        else:
            cells = self.encode(tokens)
        return OracleState(self, cells)


class OracleState:
    """Feasibility bookkeeping for one row (see the package docstring for the protocol)."""

    def __init__(self, oracle: Oracle, cells: np.ndarray):
        self.oracle = oracle
        self.cells = cells
        self.rejected: set[tuple[int, int]] = set()
        self.rejections = 0
        self.checks = 0
        self.cap_hits = 0
        self._memo: dict[tuple[int, int], bool] = {}
        self._feasible: bool | None = None

    def __len__(self) -> int:
        return int(self.cells.shape[0])

    def feasible(self) -> bool:
        """Is the current canvas still completable?"""
        if self._feasible is None:
            st = self.oracle.status_cells(self.cells)
            self.checks += 1
            self.cap_hits += st == 2
            self._feasible = st == 1
        return self._feasible

    def allows(self, position: int, token_id: int) -> bool:
        """Would committing ``token_id`` at ``position`` keep the canvas completable? Pure query: the
        canvas is unchanged; a "no" is remembered (the rejection list) and counted in ``rejections``."""
        key = (int(position), int(token_id))
        if key in self.rejected:
            return False
        code = self.oracle.code(token_id)
        cur = int(self.cells[position])
        if cur != K.MASK:
            return cur == code
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        ok = False
        if not self.oracle.excluded[token_id] and self.feasible():
            cand = self.cells.copy()
            cand[position] = code
            st = self.oracle.status_cells(cand)
            self.checks += 1
            self.cap_hits += st == 2
            ok = st == 1
        if ok:
            self._memo[key] = True
        else:
            self.rejected.add(key)
            self.rejections += 1
        return ok

    def commit(self, position: int, token_id: int, check: bool = False) -> bool:
        """Write ``token_id`` at ``position`` (with ``check=True`` only if ``allows`` says so; returns
        whether it was written). Committing without a check is allowed (e.g. forced template text); the
        state then simply reports ``feasible() == False`` if that broke the canvas."""
        if check and not self.allows(position, token_id):
            return False
        code = self.oracle.code(token_id)
        if int(self.cells[position]) == code:
            return True
        if int(self.cells[position]) != K.MASK:
            raise ValueError(f"position {position} is already committed")
        was_ok = self._memo.get((int(position), int(token_id)))
        self.cells[position] = code
        self._memo.clear()
        self._feasible = True if was_ok else None
        return True

    def filter(self, pairs: Iterable[tuple[int, int]]) -> list[bool]:
        """Check and commit (position, token) pairs one at a time, in the given (confidence) order; each
        check sees the earlier accepted commits. Returns which pairs were committed."""
        out = []
        for pos, tok in pairs:
            out.append(self.commit(pos, tok, check=True))
        return out

    def banned(self, position: int | None = None):
        """Rejected token ids at ``position`` (or all rejected (position, token) pairs)."""
        if position is None:
            return sorted(self.rejected)
        return sorted(t for p, t in self.rejected if p == position)

    @property
    def complete(self) -> bool:
        """No masked cell before the end of output, and the text is in the language."""
        c = self.cells
        eos = np.flatnonzero(c == K.EOS)
        end = int(eos[0]) if eos.size else int(c.shape[0])
        if (c[:end] == K.MASK).any():
            return False
        if not eos.size and self.oracle.open_end:
            return False
        return self.feasible()

    def witness(self) -> bytes | None:
        """Output bytes of one completion of the current canvas (gaps filled, shortest-ish), or None."""
        return self.oracle.witness_cells(self.cells)

    def witness_text(self) -> str | None:
        w = self.witness()
        return None if w is None else w.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------- witness realization
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _realize(g: Grammar, res, out, space_ok: bool) -> bytes:
    _, n, node_pos, node_gap, es, et, ed, _, _, buf, gap = res
    _, bpr, bpa = out
    nn = n * n
    items: list[tuple] = []
    stack = [(g.start_nt, 0, n - 1)]
    while stack:
        a, p, q = stack.pop()
        idx = a * nn + p * n + q
        r = int(bpr[idx])
        if r == -2:
            items.append(("loop", a, p))
            continue
        kind, _, x, y = g.rules[r]
        if kind == 1:
            items.append(("edge", int(bpa[idx])))
        elif kind == 2:
            stack.append((x, p, q))
        elif kind == 3:
            s = int(bpa[idx])
            stack.append((y, s, q))
            stack.append((x, p, s))
    chunks: list[tuple[bytes, int, int]] = []  # (bytes, start boundary, end boundary)
    for it in items:
        if it[0] == "edge":
            k = it[1]
            o, w, t = int(node_pos[es[k]]), int(node_pos[ed[k]]), int(et[k])
            chunks.append((_realize_lexeme(g.terminals[t], o, w, buf, gap), o, w))
        else:
            _, a, node = it
            b = int(node_pos[node])
            for t in g.shortest_terminals(a):
                chunks.append((g.terminals[t].shortest(0), b, b))
    pieces: list[bytes] = []
    prev = None
    for data, s, e in chunks:
        if (space_ok and prev is not None and data and prev[0] and gap[s]
                and prev[0][-1] in _WORD and data[0] in _WORD):
            pieces.append(b" ")
        pieces.append(data)
        prev = (data, s, e) if data else prev
    return b"".join(pieces)


def _realize_lexeme(term, o: int, w: int, buf, gap) -> bytes:
    """Bytes of one lexeme of ``term`` spanning boundaries o..w: the fixed bytes in between, and for every
    gap boundary touched a shortest byte string that keeps the DFA on an accepting path."""
    tab, clo = term.table, term.closure
    pre: list[set[int]] = [set() for _ in range(w - o + 1)]
    post: list[set[int]] = [set() for _ in range(w - o + 1)]
    pre[0] = {0}
    for i in range(o, w + 1):
        k = i - o
        if i > o:
            b = int(buf[i - 1])
            pre[k] = {int(tab[s, b]) for s in post[k - 1] if tab[s, b] >= 0}
        post[k] = {c for s in pre[k] for c in clo[s]} if gap[i] else set(pre[k])
    state = min(s for s in post[w - o] if term.accept[s])
    fills: dict[int, bytes] = {}
    for i in range(w, o - 1, -1):
        k = i - o
        if gap[i]:
            src = next(s for s in sorted(pre[k]) if state in clo[s])
            fills[i] = term.shortest(src, state) or b""
            state = src
        if i == o:
            break
        b = int(buf[i - 1])
        state = next(s for s in sorted(post[k - 1]) if int(tab[s, b]) == state)
    out = bytearray()
    for i in range(o, w + 1):
        out += fills.get(i, b"")
        if i < w:
            out.append(int(buf[i]))
    return bytes(out)
