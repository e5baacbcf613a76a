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
  the known text plus the grammar search, and is recomputed per query, with two exceptions kept per oracle:
  the sweep of a canvas's committed prefix (``_prefix``: a snapshot of the sweep where the first mask starts,
  keyed by the prefix's cells, taken up again by every later check with that prefix) and what lexemes do inside
  one unrolled cell (``_cell_table``). Measured on tiny-cot schema decodes (60 rows, profiled): at threshold 0.9
  ``build_nfa`` took 1.90 s -> 0.69 s over the same 1,068 builds with the cell table; at 0.5, 1.70 s -> 1.22 s with
  the snapshots added (3,408 builds, plus 300 that take snapshots), and to 0.38 s once no array was grown inside
  the kernels' loops (``_Scratch``).
  The rest of the bookkeeping: the ban list, a per-canvas memo of positive answers (cleared on commit), and the
  fast paths (committed cell, excluded token, already-infeasible canvas).
* **Work cap.** A search that exceeds ``max_pops`` worklist pops answers "not allowed" (safe for syntax,
  may over-reject) and is counted in ``state.cap_hits``.
* **Counted long gaps** (``count_gaps``; off by default here, on in the grammar filter, whose frontier leaves one
  long gap): whole-canvas checks (``near=None``) run, after the plain search, one counted search per long gap and
  one for all of them together (``_counted``); per-commit checks (``near=``) do not count. Measured on tiny-cot
  schema canvases: 240 random canvases with one or two long gaps agreed with fully unrolled checks in 239 cases
  (the 240th: two gaps that each fit alone), where the length-blind check missed 89 infeasible ones. A counted
  build sweeps the looped automaton (253 states there) once per oracle (``_loop_template``): 0.5 ms per counted
  build instead of 6.7 ms.
* **Special tokens** (``TokenTable.excluded``): never allowed, except EOS ids (end of output). The mask id
  marks masked cells.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Sequence

import numpy as np

from . import kernels as K
from .cells import cell_automaton
from .grammar import Grammar, load_grammar
from .tokens import TokenTable

__all__ = ["Oracle", "OracleState"]

_TABLES: dict[int, tuple[object, TokenTable]] = {}
ENTRY_AFTER = 32  # counted builds before an oracle builds its entry table (one-off requests rarely repay it)
_NO_TEMPLATE = (np.zeros(0, dtype=np.int32),) * 7 + (np.zeros(0, dtype=np.uint8),) + (np.zeros(0, dtype=np.int32),) * 9
EXACT_CELLS = 4  # gaps of at most this many cells are unrolled token by token (see cells.py)
_NO_RESUME = (np.zeros(0, dtype=np.int32),) * 7 + (np.zeros(0, dtype=np.uint8),) * 2
_LONE = np.array([K.MASK, K.EOS], dtype=np.int32)  # one masked run (or cell) before the end: what templates sweep
PREFIX_SNAPSHOTS = 256  # committed-prefix sweeps an oracle keeps (``Oracle._prefix``)
PREFIX_STEP = 4  # a check whose committed prefix runs this many cells past the longest snapshot takes a new one
FIT_UNROLL = 32  # the most cells a completion's last gap is unrolled to when its witness text does not fit (``_fitted``)


def _token_table(tokenizer) -> TokenTable:
    hit = _TABLES.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    table = TokenTable(tokenizer)
    _TABLES[id(tokenizer)] = (tokenizer, table)
    return table


_CELLS: dict[tuple, tuple] = {}


def _cell_automaton(grammar: Grammar, tokens: TokenTable, allowed: np.ndarray):
    """The vocabulary automaton, built once per (grammar, token table, allowed set): every generate call makes a new
    oracle, and for a large vocabulary the build takes seconds."""
    step = grammar.arrays["g_step"].tobytes()  # by content: every filter compiles its own Grammar object
    key = (hash(step), id(tokens), allowed.tobytes())
    hit = _CELLS.get(key)
    if hit is not None and hit[0] == step and hit[1] is tokens:
        return hit[2]
    cell = cell_automaton(grammar.arrays["g_step"], tokens.table, allowed)
    if len(_CELLS) >= 32:  # one entry per schema a server sees: keep the newest
        _CELLS.pop(next(iter(_CELLS)))
    _CELLS[key] = (step, tokens, cell)
    return cell


def _template_of(res: tuple) -> tuple:
    """``build_nfa``'s ``make_template`` result in the template layout (see ``Oracle._entry_table``), no entry table."""
    return (res[4], res[5], res[6], res[13], res[2], res[8], res[9], res[3]) + _NO_TEMPLATE[8:]


class _Scratch:
    """``build_nfa``'s working arrays (see the kernel): ``work``, 14 int32 arrays of room for pending lexemes, lexemes
    in progress and lexeme edges; ``marks``, its "seen" marks (int64, never cleared: ``base[0]`` moves past every
    value a build wrote); ``base[1:]``, the mark lengths the last canvas needed. One set per thread, shared by every
    oracle (builds never nest), grown to the largest canvas seen."""

    def __init__(self, room: int = 4096, marks: int = 1 << 16):
        self.work = tuple(np.empty(room, dtype=np.int32) for _ in range(14))
        self.base = np.array([1, 0, 0], dtype=np.int64)
        self._marks(marks, marks)

    def _marks(self, g: int, t: int) -> None:
        self.marks = (np.zeros(g, np.int64), np.zeros(t, np.int64), np.zeros(g, np.int64), np.zeros(g, np.int64),
                      np.zeros(t, np.int64))
        self.base[0] = 1  # fresh zeros: any positive mark is new

    def grow_marks(self) -> None:
        self._marks(max(2 * int(self.base[1]), self.marks[0].shape[0]),
                    max(2 * int(self.base[2]), self.marks[1].shape[0]))

    def grow_work(self) -> None:
        self.work = tuple(np.empty(4 * a.shape[0], dtype=np.int32) for a in self.work)


_SCRATCH = threading.local()  # this thread's ``_Scratch``


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
                 max_pops: int = 20_000_000, token_table: "TokenTable | list[bytes | None] | None" = None,
                 exact_cells: int = EXACT_CELLS, count_gaps: bool = False):
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
        self._build, self._search, self._search_counted = K.kernels(self.backend)
        self.open_end = bool(open_end)
        self.max_pops = int(max_pops)
        self.excluded = self.tokens.excluded.copy()
        for e in self.eos_ids:
            if 0 <= e < len(self.excluded):
                self.excluded[e] = False
        if 0 <= self.mask_id < len(self.excluded):
            self.excluded[self.mask_id] = True
        if isinstance(exact_cells, bool) or not isinstance(exact_cells, int) or exact_cells < 0:
            raise ValueError(f"exact_cells must be an integer >= 0 (got {exact_cells!r})")
        self.exact_cells = exact_cells
        if not isinstance(count_gaps, bool):
            raise ValueError(f"count_gaps must be True or False (got {count_gaps!r})")
        self.count_gaps = count_gaps
        self.use_template = True  # tests compare with False (every counted run swept in full)
        self._template = None
        self._counted_builds = 0  # the entry table is built after ENTRY_AFTER of them (``_loop_template``)
        self.use_entry_table = True  # benchmarks compare with False (the template alone, the run swept for entries)
        self.use_cell_table = True  # tests and benchmarks compare with False (unrolled cells swept byte by byte)
        self.use_prefix = True  # tests and benchmarks compare with False (every check sweeps the committed text)
        self._snaps: "OrderedDict[bytes, tuple]" = OrderedDict()  # committed prefix -> its sweep (``_prefix``)
        self._snap_lengths: dict[int, int] = {}  # prefix length -> snapshots of that length
        self._cells_table = None
        self._by_bytes: dict[bytes, int] | None = None  # allowed tokens by their bytes (``spell``)
        self._queue_room = 1 << 14  # queue entries of the counted search (grows when a search runs out)
        self.own_scratch: "_Scratch | None" = None  # tests give an oracle its own working arrays (``_scratch``)
        allowed = ~self.excluded
        for e in self.eos_ids:
            if 0 <= e < len(allowed):
                allowed[e] = False
        self.cell = _cell_automaton(self.grammar, self.tokens, allowed)
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
    def _nfa(self, cells: np.ndarray, focus: tuple[int, int] | None = None, split_at: int = -1,
             counted: Sequence[int] = (), unroll: int | None = None, make_template: bool = False, seed: int = -1,
             template: tuple | None = None, by_cell: bool = False, snap_at: int = -1, resume: tuple | None = None):
        ar = self.grammar.arrays
        c = self.cell
        if resume is None:
            resume = self._prefix(cells) if self.use_prefix and not make_template and snap_at < 0 else _NO_RESUME
        args = (cells, self.tokens.off, self.tokens.data, self.open_end, ar["g_step"], ar["g_acc"], ar["g_term"],
                ar["g_start"], ar["clo_ptr"], ar["clo_idx"], c.step, c.final, c.live, c.class_byte,
                self.exact_cells if unroll is None else unroll, *(focus or (0, int(cells.shape[0]))), split_at,
                np.asarray(counted, dtype=np.int32),
                template if template is not None else
                _NO_TEMPLATE if make_template or not counted else self._loop_template(), make_template, seed,
                *(self._cell_table() if by_cell and not make_template else (_NO_TEMPLATE, _NO_TEMPLATE)), snap_at,
                resume)
        scratch = self._scratch()
        while True:
            res = self._build(*args, scratch.work, scratch.marks, scratch.base)
            if scratch.base[1] > scratch.marks[0].shape[0] or scratch.base[2] > scratch.marks[1].shape[0]:
                scratch.grow_marks()  # the build used fresh marks: this canvas needs longer ones
            if res[0] != 5:
                return res
            scratch.grow_work()  # out of room for pending lexemes or edges: again with four times as much

    def _scratch(self) -> "_Scratch":
        """This thread's working arrays for ``build_nfa`` (kept between builds: allocating and clearing them cost more
        than most builds' own work; per thread, since the kernels release the GIL), or the oracle's own (tests)."""
        if self.own_scratch is not None:
            return self.own_scratch
        scratch = getattr(_SCRATCH, "arrays", None)
        if scratch is None:
            scratch = _SCRATCH.arrays = _Scratch()
        return scratch

    def _prefix(self, cells: np.ndarray) -> tuple:
        """The sweep of the canvas's committed prefix (the cells before its first mask or EOS), for ``build_nfa`` to go
        on from: the longest snapshot kept for a prefix of it, or a new one when the prefix runs ``PREFIX_STEP`` or
        more cells past that (taken from the old one). Why: every check re-swept the whole committed text, about 5
        us per token, while a step's checks of a row differ only after its first mask; the prefix never changes
        once committed (nothing is overwritten), so its sweep is kept per oracle, keyed by the prefix's cells."""
        masked = np.flatnonzero(cells < 0)
        end = int(masked[0]) if masked.size else int(cells.shape[0])
        if end < PREFIX_STEP:
            return _NO_RESUME
        best, best_len = _NO_RESUME, 0
        for length in sorted((n for n in self._snap_lengths if n <= end), reverse=True)[:8]:
            key = cells[:length].tobytes()
            hit = self._snaps.get(key)
            if hit is not None:
                self._snaps.move_to_end(key)
                best, best_len = hit, length
                break
        if end - best_len < PREFIX_STEP:
            return best
        head = np.append(cells[:end], np.int32(K.EOS)).astype(np.int32)
        r = self._nfa(head, snap_at=end, resume=best)
        snap = (r[2], r[8], r[9], r[4], r[5], r[6], r[13], r[3], r[7])
        self._snaps[cells[:end].tobytes()] = snap
        self._snap_lengths[end] = self._snap_lengths.get(end, 0) + 1
        while len(self._snaps) > PREFIX_SNAPSHOTS:
            key, _ = self._snaps.popitem(last=False)
            n = len(key) // 4
            self._snap_lengths[n] -= 1
            if not self._snap_lengths[n]:
                del self._snap_lengths[n]
        return snap

    def long_runs(self, cells: np.ndarray) -> list[tuple[int, int]]:
        """(start, length) of every run of masks before the end of output that is not unrolled (longer than
        ``exact_cells``, not an open trailing gap)."""
        eos = np.flatnonzero(cells == K.EOS)
        end = int(eos[0]) if eos.size else int(cells.shape[0])
        masked = np.concatenate(([False], cells[:end] == K.MASK, [False]))
        edges = np.flatnonzero(masked[1:] != masked[:-1])
        runs = []
        for j, k in zip(edges[::2].tolist(), edges[1::2].tolist()):
            if k - j <= self.exact_cells or (k == cells.shape[0] and self.open_end):
                continue
            runs.append((j, k - j))
        return runs

    def _loop_template(self) -> tuple:
        """What lexemes that start inside a counted run do there: the same in every counted run of every canvas (the
        looped automaton is the same), so it is swept once per oracle (``build_nfa(make_template=True)``) and laid
        into each counted run. Measured on a tiny-cot schema canvas (253 automaton states): the counted build takes
        0.5 ms instead of 6.7 ms. (Unrolled cells get the same with their own entry table, ``_cell_table``.)

        Then the entry table: what a lexeme entering the run in lexer state s does there, one sweep per state
        (``seed=s``: n_gs small sweeps, once per oracle: about 40 ms for a tiny-cot schema, so it is built after
        ``ENTRY_AFTER`` counted builds, or by ``warm``). With it a counted check never sweeps the run: the lexemes
        at its root take their edges and exit states from the table. Measured on a tiny-cot schema canvas (prefix,
        a 2-cell gap, a counted tail): counted build 4.4 -> 1.4 ms, whole-canvas check 6.2 -> 3.1 ms; on 7,582
        decoding canvases (a schema and JSON) the same answers as sweeping every run in full."""
        if not self.use_template:
            return _NO_TEMPLATE
        if self._template is None:
            self._template = _template_of(self._nfa(_LONE, counted=[0], make_template=True))
        self._counted_builds += 1
        if self._template[8].shape[0] == 0 and self._counted_builds > ENTRY_AFTER and self.use_entry_table:
            self._template = self._entry_table(self._template[:8] + _NO_TEMPLATE[8:], [0])
        return self._template

    def _entry_table(self, inside: tuple, counted: list[int]) -> tuple:
        """``inside`` (a template: what lexemes starting inside a lone run or cell do there) plus its entry table: per
        lexer state, one sweep of a lexeme entering there at the root (origin offset 0) and of the lexemes starting
        where only it reaches (their own offsets); ``counted=[0]``: the looped run, ``[]``: one unrolled cell."""
        # layout (``build_nfa`` reads it by index): 0-7 the template (edge origins, terminals, ends, costs; exit
        # origins, states, costs; started flags), 8-16 the entry table (edge offsets per state, terminals, ends,
        # costs; exit offsets per state, states, costs; edge origins, exit origins: 0 = the entering lexeme)
        n_gs = self.grammar.arrays["g_acc"].shape[0]
        e_ptr, x_ptr = np.zeros(n_gs + 1, dtype=np.int32), np.zeros(n_gs + 1, dtype=np.int32)
        parts: list[tuple] = []
        for state in range(n_gs):
            r = self._nfa(_LONE, counted=counted, unroll=1, make_template=True, seed=state, template=inside)
            parts.append((r[5], r[6], r[13], r[8], r[9], r[4], r[2]))
            e_ptr[state + 1] = e_ptr[state] + r[5].shape[0]
            x_ptr[state + 1] = x_ptr[state] + r[8].shape[0]
        joined = [np.concatenate([p[i] for p in parts]).astype(np.int32) if parts else np.zeros(0, np.int32)
                  for i in range(7)]
        return inside[:8] + (e_ptr, joined[0], joined[1], joined[2], x_ptr, joined[3], joined[4], joined[5], joined[6])

    def _cell_table(self) -> tuple[tuple, tuple]:
        """One unrolled cell's template and entry table (``_entry_table``), swept once per oracle: with it a check
        jumps from each unrolled cell's junction to the next instead of pushing every lexeme in progress along the
        cell automaton's byte edges (those are still laid out: a witness spells its lexemes along them). And the entry
        table of a cell whose junction no lexeme reached (a token boundary inside a lexeme, e.g. a string's): there
        the template's lexemes, which start at the junction, do not exist, so the lexemes entering the cell start
        their own wherever they end (measured on tiny-cot schema checks at threshold 0.5: laying the template at
        every junction gave 1,400 lexeme edges on a canvas with ten unrolled cells)."""
        if self._cells_table is None:
            inside = _template_of(self._nfa(_LONE, unroll=1, make_template=True))
            n_cs = self.cell.final.shape[0]
            alone = _NO_TEMPLATE[:7] + ((np.arange(n_cs) == 0).astype(np.uint8),) + _NO_TEMPLATE[8:]
            self._cells_table = (self._entry_table(inside, []), self._entry_table(alone, []))
        return self._cells_table

    def forget_prefixes(self) -> None:
        """Drop the committed-prefix snapshots (``_prefix``). A generation starts with none, so a decode repeated
        on the same prompts (a benchmark) does not find its prefixes swept already."""
        self._snaps.clear()
        self._snap_lengths.clear()

    def warm(self) -> "Oracle":
        """Build what the first checks would build lazily (the cell table, the counted-run template and entry
        table), e.g. at a server's start-up."""
        if self.use_cell_table:
            self._cell_table()
        if self.count_gaps:
            self._counted_builds = max(self._counted_builds, ENTRY_AFTER)
            self._loop_template()
        return self

    def _counted(self, cells: np.ndarray, starts: Sequence[int], budget: int) -> int:
        """The canvas with the runs that start at ``starts`` holding at most ``budget`` tokens together (the
        other long runs stay "any text"): 1 feasible, 0 not, 2 work cap."""
        res = self._nfa(cells, counted=starts, by_cell=self.use_cell_table)
        if res[0] != 1:
            return 0
        g = self.grammar
        ar = g.arrays
        while True:
            status = int(self._search_counted(res[1], res[3], res[7], res[4], res[5], res[6], res[13],
                                              g.n_nonterminals, g.start_nt, ar["t_ptr"], ar["t_a"], ar["u_ptr"],
                                              ar["u_a"], ar["l_ptr"], ar["l_c"], ar["l_a"], ar["r_ptr"], ar["r_c"],
                                              ar["r_a"], ar["eps_a"], budget, self.max_pops, self._queue_room))
            if status != 5:
                return status
            self._queue_room *= 4  # the counted search ran out of queue entries: again with more

    def _run(self, cells: np.ndarray, want_bp: bool, focus: tuple[int, int] | None = None, split_at: int = -1,
             unroll: int | None = None):
        res = self._nfa(cells, focus, split_at, unroll=unroll, by_cell=self.use_cell_table)
        if res[0] != 1:
            return 0, res, None
        g = self.grammar
        ar = g.arrays
        n = res[1]
        out = self._search(n, res[3], res[7], res[4], res[5], res[6], g.n_nonterminals, g.start_nt,
                           ar["t_ptr"], ar["t_a"], ar["t_rule"], ar["u_ptr"], ar["u_a"], ar["u_rule"],
                           ar["l_ptr"], ar["l_c"], ar["l_a"], ar["l_rule"], ar["r_ptr"], ar["r_c"], ar["r_a"],
                           ar["r_rule"], ar["eps_a"], ar["eps_rule"], want_bp, self.max_pops)
        return int(out[0]), res, out

    def status_cells(self, cells: np.ndarray, near: int | None = None) -> int:
        """0 infeasible, 1 feasible, 2 work cap hit (treated as infeasible). With ``near`` (the cell just
        committed) only the gaps next to it are unrolled token by token, the others stand for any text: the
        answer is still sound (a looser canvas), and the check costs a few unrolled cells instead of every
        short gap of the canvas (those were unrolled when the commits that made them were checked)."""
        focus = None if near is None else (near - 1, near + 1)
        cells = np.ascontiguousarray(cells, dtype=np.int32)
        status = self._run(cells, False, focus=focus)[0]
        if status == 1 and self.count_gaps and near is None:
            runs = self.long_runs(cells)
            checks = [([j], m) for j, m in runs]
            if len(runs) > 1:  # together: text one run cannot take must fit in the others
                checks.append(([j for j, _ in runs], sum(m for _, m in runs)))
            for starts, budget in checks:
                status = self._counted(cells, starts, budget)
                if status != 1:
                    break
        return status

    def feasible(self, tokens: Sequence[int]) -> bool:
        """Can the masked cells of this canvas be filled so that the output is in the grammar?"""
        return self.status_cells(self.encode(tokens)) == 1

    def nfa_size(self, tokens: Sequence[int]) -> int:
        """Number of NFA nodes kept for this canvas (0 when lexing alone already rejects it)."""
        res = self._nfa(self.encode(tokens))
        return int(res[1]) if res[0] == 1 else 0

    def witness_cells(self, cells: np.ndarray) -> bytes | None:
        """A completion: the output bytes (up to end of output) with every gap filled, or None."""
        found = self._witness(cells)
        return None if found is None else found[0]

    def witness_tokens(self, cells: np.ndarray, split_at: int = -1, unroll: int | None = None,
                       only: int | None = None) -> dict[int, int] | None:
        """{cell index: token id} of one completion for every masked cell in a gap of at most
        ``exact_cells`` masks (longer gaps are filled with text, not tokens), or None when infeasible. With
        ``split_at`` (a masked cell) that cell gets a token even inside a longer gap: its gap is cut there,
        and the completion is one of the canvas with that token committed. ``unroll`` overrides ``exact_cells``
        for this witness (a wider unroll is slower but respects more gaps' token counts). ``only`` (a cell): just
        that cell's token (only the lexemes crossing it are spelled out; the grammar filter's forced cells)."""
        found = self._witness(cells, split_at, unroll, only)
        return None if found is None else found[1]

    def completion_tokens(self, cells: np.ndarray, eos_id: int) -> dict[int, int] | None:
        """{cell: token id} for every masked cell: one completion of the canvas laid into its cells, or None.

        Short gaps (at most ``exact_cells`` masks) take the witness's tokens; the last long gap, which must end at the
        end of output (the grammar filter's frontier leaves at most that one), takes the witness's text there spelled
        greedily in the vocabulary's longest tokens, then ``eos_id`` in the cells left over (masked cells after an end
        of output, and short-gap cells the witness leaves empty before one, are ``eos_id`` too). When that text needs
        more tokens than the gap has cells (the witness is not the shortest completion: it may write optional
        properties) or cannot be spelled, a witness cut to fit (``_fitted``) gives every cell. None when there are
        several long gaps, nothing fits, or the filled canvas fails the check. The grammar filter finishes a derailed
        row with it (``complete_after``)."""
        cells = np.ascontiguousarray(cells, dtype=np.int32)
        found = self._witness(cells)
        runs = self.long_runs(cells)
        if found is None or len(runs) > 1:
            return None
        text, chosen = found
        eos = np.flatnonzero(cells == K.EOS)
        end = int(eos[0]) if eos.size else int(cells.shape[0])
        tail_start, tail_len = runs[0] if runs else (end, 0)
        if tail_start + tail_len != end:
            return None
        table = self.tokens.table
        plan: dict[int, int] = {}
        before = bytearray()
        for pos in range(tail_start):
            code = int(cells[pos])
            if code >= 0:
                before += table[code]
            elif code == K.MASK:
                plan[pos] = chosen.get(pos, eos_id)
                before += table[plan[pos]] if pos in chosen else b""
        spelled = self.spell(text[len(before):]) if text.startswith(bytes(before)) else None
        if spelled is not None and len(spelled) <= tail_len:
            for i in range(tail_len):
                plan[tail_start + i] = spelled[i] if i < len(spelled) else eos_id
        else:  # the witness's text does not fit the gap (it need not be the shortest): a witness cut to fit
            fitted = self._fitted(cells, tail_start, tail_len)
            if fitted is None:
                return None
            for pos in range(end):
                if int(cells[pos]) == K.MASK:
                    plan[pos] = fitted.get(pos, eos_id)
        for pos in range(end, int(cells.shape[0])):
            if int(cells[pos]) == K.MASK:
                plan[pos] = eos_id
        filled = cells.copy()
        for pos, token in plan.items():
            filled[pos] = self.code(token)
        return plan if self.status_cells(filled) == 1 else None

    def _fitted(self, cells: np.ndarray, start: int, cells_left: int) -> dict[int, int] | None:
        """{cell: token id} of a completion whose last gap (``cells_left`` masks from ``start`` to the end of output)
        holds its text in as few tokens as the canvas allows: the fewest k for which the gap cut to k masks and an end
        of output still checks (the counted check; bisected), then a witness with that gap unrolled token by token
        (``FIT_UNROLL`` cells at most: the unrolled search grows with them). None when none fits."""
        def cut(k: int) -> np.ndarray:
            return np.concatenate([cells[:start], np.full(k, K.MASK, np.int32), np.array([K.EOS], np.int32)])

        lo, hi = 0, min(cells_left, FIT_UNROLL)
        if self.status_cells(cut(hi)) != 1:
            return None
        while lo < hi:  # fewest masks that still check
            mid = (lo + hi) // 2
            if self.status_cells(cut(mid)) == 1:
                hi = mid
            else:
                lo = mid + 1
        for k in sorted({hi, min(2 * hi, cells_left, FIT_UNROLL)}):  # a length-blind check may pass with too few
            chosen = self.witness_tokens(cut(k), unroll=max(k, self.exact_cells))
            if chosen is not None:
                return chosen
        return None

    def spell(self, data: bytes, count: int | None = None) -> list[int] | None:
        """``data`` as allowed tokens, greedily the longest vocabulary entry at each point (None if some byte cannot be
        spelled that way); with ``count``, only its first ``count`` tokens."""
        if self._by_bytes is None:
            self._by_bytes = {b: i for i, b in enumerate(self.tokens.table)
                              if b and not self.excluded[i] and i not in self.eos_ids}
            self._longest = max(map(len, self._by_bytes), default=0)
        out, at = [], 0
        while at < len(data) and (count is None or len(out) < count):
            for n in range(min(len(data) - at, self._longest), 0, -1):
                token = self._by_bytes.get(data[at:at + n])
                if token is not None:
                    out.append(token)
                    at += n
                    break
            else:
                return None
        return out

    def _witness(self, cells: np.ndarray, split_at: int = -1, unroll: int | None = None, only: int | None = None):
        status, res, out = self._run(np.ascontiguousarray(cells, dtype=np.int32), True, split_at=split_at,
                                     unroll=unroll)
        if status != 1:
            return None
        return _realize(self.grammar, res, out, self._space_ok(), self.cell, self.tokens.table,
                        -1 if only is None else only)

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
        self.rejected_at: dict[int, int] = {}  # position -> rejections there
        self.checks = 0
        self.cap_hits = 0
        self._memo: dict[tuple[int, int, bool], bool] = {}  # (position, token, exact) -> allowed
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

    def allows(self, position: int, token_id: int, exact: bool = False) -> bool:
        """Would committing ``token_id`` at ``position`` keep the canvas completable? Pure query: the
        canvas is unchanged; a "no" is remembered (the rejection list) and counted in ``rejections``.

        ``exact=False`` (fast): only the gaps next to ``position`` are unrolled token by token, the others
        stand for any text; ``exact=True`` unrolls every short gap. Both are sound (a "no" is final); the
        fast one can say "yes" to a commit that leaves some other short gap unable to hold what it must
        (the engine's grammar filter therefore checks each row's whole step once more exactly)."""
        key = (int(position), int(token_id))
        if key in self.rejected:
            return False
        code = self.oracle.code(token_id)
        cur = int(self.cells[position])
        if cur != K.MASK:
            return cur == code
        hit = self._memo.get(key + (exact,)) or (not exact and self._memo.get(key + (True,)))
        if hit:
            return True
        ok = False
        if not self.oracle.excluded[token_id] and self.feasible():
            cand = self.cells.copy()
            cand[position] = code
            st = self.oracle.status_cells(cand, near=None if exact else position)
            self.checks += 1
            self.cap_hits += st == 2
            ok = st == 1
        if ok:
            self._memo[key + (exact,)] = True
        else:
            self.rejected.add(key)
            self.rejections += 1
            self.rejected_at[key[0]] = self.rejected_at.get(key[0], 0) + 1
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
        was_ok = self._memo.get((int(position), int(token_id), True))
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


def _realize(g: Grammar, res, out, space_ok: bool, cell, table, only: int = -1) -> tuple[bytes, dict[int, int]]:
    """Follow the back-pointers from the goal triple, spell every lexeme along the canvas DAG, then give
    each unrolled cell a real token with the same class string. Returns the bytes and {cell: token id}. With ``only``
    (an unrolled cell) just the lexemes crossing that cell are spelled (spelling is Python, ~0.1 ms a lexeme; every
    path between two nodes of the canvas passes through the cells between them), so only that cell's token and
    the bytes around it are right."""
    node_orig, ks, kt, kd = res[2], res[4], res[5], res[6]
    lo, hi = -1, -1  # the cell ``only``: its junction node and the next one
    if only >= 0:
        inside = np.flatnonzero(res[12] == only)
        if inside.size:
            lo = int(np.searchsorted(res[8], inside.min(), side="right")) - 1
            hi = int(res[9][inside].max())
        else:  # not an unrolled cell: spell everything
            only = -1
    d_gap = res[11]
    n = res[1]
    _, bpr, bpa, goal = out
    nn = n * n
    items: list[tuple] = []
    stack = [(g.start_nt, 0, int(goal) % n)]  # the goal triple is (0, S, q) for an end node q
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
    pieces: list[tuple[bytes, int]] = []   # (bytes, cell index of an unrolled cell or -1)
    prev_word = False
    for it in items:
        if it[0] == "edge":
            k = it[1]
            o, w = int(node_orig[ks[k]]), int(node_orig[kd[k]])
            if only >= 0 and not (o < hi and w > lo):
                continue
            chunk = _spell_lexeme(g, int(kt[k]), o, w, res)
            at_gap = bool(d_gap[o])
        else:
            _, a, node = it
            chunk = [(g.terminals[t].shortest(0), -1) for t in g.shortest_terminals(a)]
            at_gap = True
        for data, tag in chunk:
            if not data:
                continue
            if space_ok and at_gap and prev_word and data[0] in _WORD:
                pieces.append((b" ", -1))
            pieces.append((data, tag))
            prev_word = data[-1] in _WORD
            at_gap = at_gap and it[0] == "loop"
    # unrolled cells: class string -> the bytes of one real token
    text = bytearray()
    chosen: dict[int, int] = {}
    i = 0
    while i < len(pieces):
        data, tag = pieces[i]
        if tag < 0:
            text += data
            i += 1
            continue
        run = bytearray()
        while i < len(pieces) and pieces[i][1] == tag:
            run += pieces[i][0]
            i += 1
        token = cell.tokens_by_class.get(tuple(int(cell.byte_class[b]) for b in run))
        if token is None:  # pragma: no cover - every unrolled path spells some token's class string
            raise RuntimeError("witness: an unrolled cell spells no token")
        chosen[tag] = token
        text += table[token]
    return bytes(text), chosen


def _spell_lexeme(g: Grammar, t: int, o: int, w: int, res) -> list[tuple[bytes, int]]:
    """Bytes of one lexeme of terminal ``t`` from DAG node o to w, as (bytes, cell tag) pieces: a forward
    search over (node, DFA state) along byte edges, widening through the closure at loose gaps (the same
    order of events as the sweep in ``kernels.build_nfa``)."""
    ar = g.arrays
    step, acc, clo_ptr, clo_idx = ar["g_step"], ar["g_acc"], ar["clo_ptr"], ar["clo_idx"]
    d_ptr, d_dst, d_byte, d_gap, d_cell = res[8], res[9], res[10], res[11], res[12]
    off = g.state_offsets[t]
    term = g.terminals[t]
    arrive: dict[int, dict[int, tuple | None]] = {o: {int(ar["g_start"][t]): None}}
    post: dict[int, dict[int, int]] = {}   # node -> state after widening -> the arrived state it came from
    goal = None
    for u in range(o, w + 1):
        if u not in arrive:
            continue
        here = {s: s for s in arrive[u]}
        if d_gap[u]:
            for s in arrive[u]:
                for ci in range(int(clo_ptr[s]), int(clo_ptr[s + 1])):
                    here.setdefault(int(clo_idx[ci]), s)
        post[u] = here
        if u == w:
            goal = next((s for s in sorted(here) if acc[s]), None)
            break
        for ei in range(int(d_ptr[u]), int(d_ptr[u + 1])):
            v = int(d_dst[ei])
            if v > w:
                continue
            b = int(d_byte[ei])
            for s in here:
                s2 = int(step[s * 256 + b])
                if s2 >= 0:
                    arrive.setdefault(v, {}).setdefault(s2, (u, s, ei))
    if goal is None:  # pragma: no cover - the search only reports lexemes the sweep found
        raise RuntimeError("witness: lexeme not found along the canvas")
    pieces: list[tuple[bytes, int]] = []
    u, s = w, goal
    while True:
        src = post[u][s]
        if src != s:
            pieces.append((term.shortest(src - off, s - off) or b"", -1))
        how = arrive[u][src]
        if how is None:
            break
        u, s, ei = how
        pieces.append((bytes([int(d_byte[ei])]), int(d_cell[ei])))
    pieces.reverse()
    return pieces
