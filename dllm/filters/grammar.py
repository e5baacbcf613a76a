"""Grammar-constrained decoding as a commit filter: every token that lands keeps the output completable.

The oracle (``dllm.grammars``) answers "can the masked cells of this canvas still be filled so that the
output is in the grammar?". This filter drives one oracle state per row over the row's generated region
(the output: fixed template text, committed tokens, MASK, EOS; the first EOS ends the output).

Per step, for each row, the commits the sampler (and the progress guarantee, and earlier filters such as
the AR opening) chose are checked **one at a time in confidence order** (``view.confidence``, ties by
position; or left to right, ``check_order`` below), each against the canvas including the earlier accepted ones
of the same step:

* accepted -> kept;
* infeasible against the row's canvas *as it stands* (before this step) -> a true rejection: returned by
  ``reject``; the engine bans the (position, token) pair for the rest of the generation and re-selects the
  row; past ``max_rejections`` rejections since its last commit the row ends as ``stuck``. Such a rejection stays valid because the canvas
  only gains information;
* feasible alone but not together with an earlier accepted token of this step (a *conflict*) -> dropped
  from this step's commit (``adjust``), not banned: it may be right once the model sees the earlier token.
  With ``conflict_waits=True`` (default) the row's remaining, less confident commits of the step wait too
  (unchecked, not banned): they were proposed without the accepted tokens either. Measured on tiny-cot
  (60 rows, oracles built first, side by side): schema grammar at threshold 0.5 15.7 -> 12.1 s, exact 36 -> 39
  rows; at 0 27.7 -> 19.3 s, exact 35 -> 38, NFE 3.70 -> 3.35; JSON at 0 8.5 -> 5.9 s; at 0.9 no change.
  The first pair of a row is always checked against the standing canvas, so a row that is not rejected
  keeps at least one commit (progress).

The order of that check is ``check_order``: ``"confidence"`` (default) or ``"position"`` (left to right, so a
row's step keeps the longest completable run of its commits from the left). Measured on tiny-cot (60 rows, NFE /
exact rows, confidence -> position): at threshold 0 schema 3.35 / 38 -> 2.58 / 40 and scaffold 3.32 / 39 ->
2.62 / 41, but JSON 3.28 / 30 -> 4.00 / 31 and at 0.5 schema 3.43 / 39 -> 5.03 / 42, JSON 3.53 / 33 -> 4.12 / 35:
a few more exact rows everywhere, forwards up or down by a third depending on which rows derail (measured with
forced cells landing alone). So it is an option, not the default.

A veto sends the row back to the sampler and drops the step's other checked commits of that row with it (the
engine's contract). A derailed row whose proposals keep failing (threshold 0: every cell of the block proposed,
most of them wrong) then collects vetoes in one step until its budget is spent and it ends stuck (2 JSON rows of
60 on tiny-cot once forced cells stopped landing alone). So after ``VETO_ROUNDS`` vetoes of a row in one step, a
failing commit behind kept ones waits instead (not banned, checked again next step) and the kept ones land.

With ``batch_vetoes=True`` (default) a veto also checks the row's remaining commits of the step alone against its
canvas, and vetoes every one that fails in the same round (``_veto_rest``): a commit that fails alone fails for good,
so it would be vetoed when its turn came, one re-selection (and one more walk through the commits before it) later.
And a canvas checked inside a step is remembered until the step's commits land (``_status``): after a veto the row
proposes the same commits again, minus the vetoed ones, and walks through the same canvases. Measured on tiny-cot
(60 rows, side by side; NFE, exact rows and oracle checks, without -> with both): at threshold 0.5 schema 3.43 ->
3.27, JSON 3.52 -> 3.47, scaffold 3.47 -> 3.42; at 0 schema 3.13 -> 2.97 (checks 3,977 -> 3,218), JSON 3.02 -> 2.82,
scaffold 3.17 -> 3.00; at 0.9 NFE equal (schema checks 781 -> 690); exact rows equal everywhere, no row stuck.

A row that has collected ``complete_after`` rejections (default 8) has derailed: the model keeps proposing text the
grammar cannot take. Its remaining cells then take one completion of its canvas, the grammar's text
(``_complete``, ``Oracle.completion_tokens``), and it finishes within the span's forwards. Measured on tiny-cot (60
rows, side by side, NFE without -> with, exact rows equal in every case, no row stuck): threshold 0.9 schema 3.65 ->
3.37, scaffold 3.73 -> 3.42, JSON equal; 0.5 JSON 3.47 -> 3.12, schema 3.27 -> 2.87, scaffold 3.42 -> 2.85; 0 JSON
2.82 -> 2.52, schema 2.97 -> 2.43, scaffold 3.00 -> 2.57. There, no row that ended exact had more than 4 rejections
(none more than 0 at thresholds 0.5 and 0), and 4 instead of 8 cut NFE a little more at 0 (2.37 / 2.40 / 2.48) with
exact rows equal too: 8 keeps a margin. The witness need not be the shortest completion (it may write optional
properties), so where its text does not fit the last gap a witness cut to fit is taken (``Oracle._fitted``); without
that 0-5 of 9-14 derailed rows per variant and threshold had no completion, with it none (NFE at 0.5: schema 2.87 ->
2.80, scaffold 2.85 -> 2.80). A row whose canvas still has none decodes on as before. With completions on, forcing
cells (``force_after``) still pays: ``force_after=0`` cut NFE by 1-6 % but lost an exact row at 0.9 (schema, scaffold).

Short gaps are token-exact (``exact_cells``, default 4: a run of at most 4 masks must hold exactly that
many tokens, see ``dllm.grammars``), so a commit that leaves too few cells for what the grammar needs there
is rejected. Where few tokens fit a cell and the model keeps proposing others, the cell takes the token of
the oracle's witness completion after ``force_after`` rejections (default 3; ``_force``) instead of walking
down the model's ranking one rejection at a time: on tiny-cot JSON at threshold 0 that walk reached 1,741
rejections in one row and most such rows ended stuck. A forced cell is checked first, against the row's
standing canvas; the row's other commits of the step are then checked after it, and one that fails waits (it
was proposed without the forced token; no veto, which would send the forced cell back too). With
``forced_alone=True`` the forced cell lands alone instead, as before session 11. On tiny-cot (60 rows; exact
match unchanged to the row, no row stuck either way) landing the others too took NFE 3.28 -> 3.02 (JSON),
3.37 -> 3.13 (schema), 3.27 -> 3.15 (scaffold) at threshold 0, 3.45 -> 3.43 (schema) at 0.5, equal at 0.9.
The forced token is checked like any commit, and a blank one (a tab fits
almost anywhere in JSON) gives way to the witness's next non-blank token (``_content_token``). After the end of
output only EOS fits: any other token proposed there lands as EOS, without a rejection.

The frontier (``frontier=True``, default): a token other than EOS waits (dropped from the step, not banned) while
more than ``exact_cells`` masks precede it. Every gap that text follows is then short and token-exact, a canvas has
at most one long gap — the last one, before the end of output (a template's own slots longer than ``exact_cells``
are long gaps too; they are counted each alone and all together) — and the oracle counts that gap's tokens
(``count_gaps``: a gap of m masks must hold the text the grammar needs there in at most m tokens). The check is then
exact: an accepted commit always leaves a completable canvas, so no row ends stuck on a dead canvas. Measured on
tiny-cot schema rows (``benchmarks/bench_grammar.py``): without it 1 / 6 / 5 of 60 rows ended stuck at thresholds
0.9 / 0.5 / 0, each before a run of 5 or more masks too short for the remaining required keys, accepted while the
run stood for any text; with it none. The cost is forwards at low thresholds (tokens beyond the frontier wait) and
the counted check. ``frontier=False, count_gaps=True`` counts every long gap instead (each alone and all together;
not exact with several), which left 1 / 3 / 4 rows stuck there and was 10-40x slower.

Cost (``_check_row``): a row's step is first checked as a whole (one check with every short gap
unrolled); only if that fails is it checked pair by pair, each pair with only its neighbouring gaps
unrolled, and the kept set confirmed once more with every short gap unrolled.

With ``defer_eos=True`` an EOS that would end the output while masked cells remain before it is
*deferred*: dropped from this step, not banned, and it lands as soon as those cells are filled. Longer gaps
are not length-aware, so an early EOS can leave too few cells for what the grammar still needs, and the row
then ends stuck. When every commit a row's sampler chose was a deferred EOS, the filter commits the row's
most confident other candidate instead (progress). Off by default: measured gains were within noise on the
shipped tiny-cot and it costs forwards (``_deferred``).

Special tokens other than EOS (mask, pad, BOS, role markers) can never be part of an output: the filter
adds a logit processor that sets them to -inf up front, so they cost no rejections.

Stuck rows (a rejection budget spent, or ``frontier=False``): after the run (``finish``) every row whose output is
not a complete sentence of the grammar gets a witness completion — the current canvas with its gaps filled by the
oracle (long gaps without regard to their length) — in ``stats.witnesses[row]`` (text), and its reason says so. The row's own text stays
what the model wrote. Counters (per row, caller order): ``grammar_checks``, ``grammar_rejections``,
``grammar_conflicts``, ``grammar_deferrals``, ``grammar_cap_hits``, ``grammar_forced``, ``grammar_rechecks``,
``grammar_completed`` (cells of text a row's completion wrote); ``grammar_seconds`` (total time in the oracle).

Added by ``dllm.generate(grammar=..., schema=..., template=...)``; also usable as ``filters=["grammar"]``
(options ``grammar`` = anything ``dllm.grammars.load_grammar`` takes, ``grammar_backend``, ``open_end``,
``defer_eos``, ``exact_cells``, ``force_after``, ``count_gaps``, ``frontier``, ``conflict_waits``,
``forced_alone``, ``check_order``, ``batch_vetoes``, ``complete_after``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch

from ..engine.view import Decision, StepView
from ..grammars.kernels import EOS, MASK
from ..grammars.oracle import EXACT_CELLS
from .base import Filter, register

FORCE_UNROLL = 16  # a forced cell's second witness unrolls gaps up to this many masks (see ``_force``)
VETO_ROUNDS = 8  # vetoes of a row in one step after which a veto behind kept commits waits instead (``_check_pass``)
ORACLE_CACHE = 64  # oracles kept per process (``GrammarFilter._oracle``)
# the integer options (all >= 0) and what 0 means for each
_ZERO_MEANS = {"exact_cells": "length-blind gaps", "force_after": "never force", "complete_after": "never"}
_ORACLES: "OrderedDict[tuple, object]" = OrderedDict()


def build_oracles(model, grammars, **options) -> list:
    """Build (and cache, see ``GrammarFilter._oracle``) the oracle of each grammar for ``model`` ahead of the requests
    that use them, as a server does at start-up; ``options`` are the filter's (``exact_cells``, ``frontier``, ...)."""
    grammars = grammars if isinstance(grammars, (list, tuple)) else [grammars]
    flt = GrammarFilter(grammar=list(grammars), **options)
    flt.validate()
    eos = tuple(int(i) for i in model.eos_ids)
    return [flt._oracle(g, model, eos).warm() for g in flt.compiled]


def _masks_before(cells) -> int:
    """Number of masked cells right before the end of ``cells`` (the run a commit after them would close)."""
    filled = (cells != MASK).nonzero()[0]
    return int(cells.shape[0]) - (int(filled[-1]) + 1 if filled.size else 0)


@register("grammar")
@dataclass
class GrammarFilter(Filter):
    grammar: object = "json"  # "json", a .lark path, Lark text, a JSON Schema dict, or a dllm.grammars.Grammar
    grammar_backend: str | None = None  # "numba" | "python" | None (auto)
    open_end: bool = False  # True: no EOS = the output may continue past the region (the reference's mode)
    defer_eos: bool = False  # True: an EOS lands only once every cell before it is filled (see ``_deferred``)
    exact_cells: int = EXACT_CELLS  # gaps of at most this many masks are checked token by token (0: length-blind)
    force_after: int = 3  # rejections at one cell of such a gap before it takes the witness's token (0: never)
    count_gaps: bool = False  # True: whole-canvas checks also bound each longer gap's tokens (slow, see Oracle)
    frontier: bool = True  # a token waits while more than exact_cells masks precede it (``_deferred``)
    conflict_waits: bool = True  # after a row's first conflict in a step, its remaining commits wait for the next
    forced_alone: bool = False  # True: a forced cell lands alone in its step (see ``_force``)
    check_order: str = "confidence"  # or "position": the order a row's commits of a step are checked in
    batch_vetoes: bool = True  # a veto also vetoes the row's other commits that fail alone (``_veto_rest``)
    complete_after: int = 8  # rejections after which a row is finished by the grammar's completion (0: never)

    def validate(self) -> None:
        if self.check_order not in ("confidence", "position"):
            raise ValueError(f"check_order must be 'confidence' or 'position' (got {self.check_order!r})")
        if self.grammar_backend not in (None, "numba", "python", "auto"):
            raise ValueError(f"grammar_backend must be 'numba', 'python' or 'auto' (got {self.grammar_backend!r})")
        for option, zero in _ZERO_MEANS.items():
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{option} must be an integer >= 0 (got {value!r}); 0 = {zero}")
        for option in (f.name for f in fields(self) if isinstance(f.default, bool)):
            if not isinstance(getattr(self, option), bool):
                raise ValueError(f"{option} must be True or False (got {getattr(self, option)!r})")
        from ..grammars import load_grammar

        if isinstance(self.grammar, (list, tuple)):  # one grammar per row (e.g. a batch of requests, each its schema)
            if not self.grammar:
                raise ValueError("grammar is an empty list: give one grammar, or one per prompt")
            self.compiled = [load_grammar(g) for g in self.grammar]
        else:
            self.compiled = load_grammar(self.grammar)  # syntax errors, empty languages, schema keywords: now

    # ------------------------------------------------------------------------------------------------
    def attach(self, model, canvas, eos_ids) -> None:
        """Build one oracle state per row from the canvas's generated region; refuse a canvas (template)
        that no filling can complete. Called by ``dllm.generate``'s ``prepare`` (before any forward) and
        by ``start`` when the filter was not attached to this canvas yet."""
        from ..grammars import Oracle

        if not hasattr(self, "compiled"):
            self.validate()
        x = canvas.x.cpu()
        grammars = self.compiled if isinstance(self.compiled, list) else [self.compiled]
        if len(grammars) not in (1, x.shape[0]):
            raise ValueError(f"{len(grammars)} grammars for {x.shape[0]} prompts: give one grammar, or one per prompt")
        oracles = [self._oracle(g, model, tuple(eos_ids)) for g in grammars]
        for oracle in oracles:  # each generation sweeps its own committed prefixes (``Oracle._prefix``)
            oracle.forget_prefixes()
        self.oracle = oracles[0]  # the tokenizer-level tables (token codes, excluded tokens) are the same in every one
        excluded = torch.from_numpy(self.oracle.excluded.copy())
        if excluded.shape[0] < model.vocab_size:
            excluded = torch.cat([excluded, torch.ones(model.vocab_size - excluded.shape[0], dtype=torch.bool)])
        self._excluded = excluded[:model.vocab_size].to(model.device)
        self.canvas_id = id(canvas)
        starts, ends = canvas.gen_start.tolist(), canvas.gen_end.tolist()
        self.states, self.caller = [], []
        for row, (a, b) in enumerate(zip(starts, ends)):
            state = oracles[row if len(oracles) > 1 else 0].start(x[row, a:b].tolist())
            if not state.feasible():
                text = model.decode([t for t in x[row, a:b].tolist() if t != model.mask_id])
                raise ValueError(f"template of row {row}: its fixed text {text[:60]!r} can never be completed to "
                                 f"an output of the grammar (fix the template or the grammar)")
            self.states.append(state)
            self.caller.append(row)
        self.all_states = dict(zip(self.caller, self.states))
        self.ends = list(ends)
        self.eos_token = int(list(eos_ids)[0])  # what a cell after the end of output can only hold
        self.conflicts: dict[int, int] = {}  # caller row -> conflicts dropped
        self.deferrals: dict[int, int] = {}  # caller row -> EOS commits deferred (``_deferred``)
        self.forced: dict[int, int] = {}  # caller row -> cells given the witness's token (``_force``)
        self.rechecks: dict[int, int] = {}  # caller row -> steps checked again with every short gap exact
        self.completions: dict[int, dict[int, int]] = {}  # caller row -> its completion, once derailed (``_complete``)
        self.seconds = 0.0
        self._memo, self._vetoes, self._canvases = {}, {}, {}

    def _oracle(self, grammar, model, eos_ids: tuple):
        """The oracle of ``grammar`` for this model and these options, built once per process: its automata, the
        vocabulary's cell automaton and the counted-run template cost tens of milliseconds per grammar, and a
        server sees the same schema again and again (kept for the last ``ORACLE_CACHE`` combinations)."""
        from ..grammars import Oracle

        counted = self.count_gaps or self.frontier
        key = (id(grammar), id(model.tokenizer), model.mask_id, eos_ids, self.exact_cells, counted,
               self.grammar_backend, self.open_end)
        hit = _ORACLES.get(key)
        if hit is not None and hit.grammar is grammar and hit.tokens_of is model.tokenizer:
            _ORACLES.move_to_end(key)
            return hit
        oracle = Oracle(grammar, model.tokenizer, mask_id=model.mask_id, eos_ids=eos_ids,
                        backend=self.grammar_backend, open_end=self.open_end,
                        exact_cells=self.exact_cells, count_gaps=counted)
        oracle.tokens_of = model.tokenizer  # identity check for the cache key's id()s
        _ORACLES[key] = oracle
        while len(_ORACLES) > ORACLE_CACHE:
            _ORACLES.popitem(last=False)
        return oracle

    def processor(self, logits: torch.Tensor, context) -> torch.Tensor:
        """Logit processor: special tokens (not EOS) can never be part of an output."""
        return logits.masked_fill(self._excluded[:logits.shape[-1]], float("-inf"))

    def start(self, engine) -> None:
        if getattr(self, "canvas_id", None) != id(engine.canvas):
            self.attach(engine.model, engine.canvas, engine.settings.eos_ids)
        self.engine = engine
        processors = engine.settings.processors
        if not any(getattr(p, "__self__", None) is self for p in processors):
            processors.append(self.processor)

    # ------------------------------------------------------------------------------------------------
    def adjust(self, view: StepView, decision: Decision) -> Decision:
        commit = decision.commit
        device = commit.device
        started = time.perf_counter()
        ranking = torch.where(commit, view.confidence, torch.full_like(view.confidence, float("-inf")))
        order = torch.sort(ranking, dim=-1, descending=True, stable=True).indices
        counts = commit.sum(-1)
        self._kept = getattr(self, "_kept", {})
        commit_h, tokens_h, order_h, counts_h = commit.cpu(), decision.tokens.cpu(), order.cpu(), counts.tolist()
        offsets = (view.span[0] - view.gen_start).tolist()
        keep = commit_h.clone()
        veto = torch.zeros_like(commit_h)
        retarget, host = False, None
        for b, count in enumerate(counts_h):
            if not count:
                continue
            if self.complete_after and self.states[b].rejections >= self.complete_after:
                written = self._complete(b, view, offsets[b])
                if written:  # the row takes its completion's tokens at every masked cell of the span
                    commit_h[b], keep[b] = False, False
                    for w, t in written.items():
                        commit_h[b, w], keep[b, w], tokens_h[b, w] = True, True, t
                    self._kept[b] = {(w + offsets[b], t) for w, t in written.items()}
                    retarget = True
                    continue
            cols = order_h[b, :count].tolist()
            pairs = tuple((w, int(tokens_h[b, w])) for w in cols)
            memo = self._memo.setdefault(b, {})
            if pairs not in memo:
                kept, vetoed, landing = self._check_row(b, [(w + offsets[b], t) for w, t in pairs])
                memo[pairs] = (kept, vetoed, landing)
                if landing == [t for _, t in pairs] and not any(vetoed):  # only a fully checked set
                    memo[tuple(p for p, k in zip(pairs, kept) if k)] = ([True] * sum(kept), [False] * sum(kept),
                                                                         [t for (_, t), k in zip(pairs, kept) if k])
            kept, vetoed, landing = memo[pairs]
            for (w, t), t_new in zip(pairs, landing):
                if t_new != t:  # a forced cell (``_force``) takes the witness's token
                    tokens_h[b, w] = t_new
                    retarget = True
            pairs = tuple((w, t_new) for (w, _), t_new in zip(pairs, landing))
            if not any(kept) and not any(vetoed):  # every commit was a deferred EOS: commit something else
                if host is None:  # the window on the host, once per step and only when a fallback is needed
                    host = view.confidence.cpu(), view.x0.cpu()
                extra = self._fallback(b, *host, offsets[b], {w for w, _ in pairs})
                if extra is not None:
                    w, t = extra
                    k, v, t_new = self._check_row(b, [(w + offsets[b], t)])
                    pairs, kept, vetoed = pairs + ((w, t_new[0]),), kept + k, vetoed + v
                    commit_h[b, w] = True
                    tokens_h[b, w] = t_new[0]
                    retarget = True
            for (w, _), k, v in zip(pairs, kept, vetoed):
                keep[b, w] = k
                veto[b, w] = v
            self._kept[b] = {(w + offsets[b], t) for (w, t), k in zip(pairs, kept) if k}
        if retarget:  # a fallback commit (``_fallback``) joined the decision, or a forced cell (``_force``) moved
            commit = commit_h.to(device)
            decision.tokens = tokens_h.to(device)
        self._veto = veto.to(device)
        decision.commit = commit & keep.to(device) | (commit & self._veto)  # vetoed rows re-select anyway
        self.seconds += time.perf_counter() - started
        return decision

    def _complete(self, b: int, view: StepView, offset: int) -> dict[int, int] | None:
        """{window column: token} for every masked cell of row ``b`` in this span, from the row's completion (None: it
        has none, and decodes on as before).

        Why: a row that collects ``complete_after`` rejections has derailed: the model keeps proposing text the grammar
        cannot take, and each veto, wait and forced cell costs it forwards while the rest of the batch waits for it.
        Its remaining cells then take one completion of its canvas (``Oracle.completion_tokens``: the witness's tokens
        in short gaps, its text spelled in the longest tokens in the last gap, then EOS; or a witness cut to fit the
        gap), computed once and kept, so
        the row finishes within this span's forwards or the next ones'. The completion is the grammar's text, not
        the model's: counted in ``grammar_completed`` and said in the row's reason."""
        caller = self.caller[b]
        plan = self.completions.get(caller)
        if plan is None:
            state = self.states[b]
            plan = state.oracle.completion_tokens(state.cells, self.eos_token)
            if plan is None:
                return None
            self.completions[caller] = plan
        masked = view.masked[b].nonzero().flatten().tolist()
        return {w: plan[w + offset] for w in masked if w + offset in plan}

    def _deferred(self, cells, pos: int, code: int) -> bool:
        """Must this commit wait (dropped from the step, not banned)? With ``frontier`` a token other than EOS waits
        while more than ``exact_cells`` masks precede it, so every gap that text follows stays short enough to be
        checked token by token and a canvas keeps at most one long gap, the last one (whose tokens the oracle counts:
        the check is then exact). With ``defer_eos`` an EOS waits while any mask precedes it (below).

        ``defer_eos``: is this an EOS that must wait: no end of output before it yet, and masked cells before it?

        Why (measured when every gap was length-blind, ``exact_cells=0``): a gap stood for any string, so the
        oracle accepted an EOS that left too few cells for what the grammar still needs (``"sizes": [30,`` +
        one mask + EOS); every token at
        that cell is then rejected and the row ends stuck. Deferring is not a ban: the EOS lands as soon as
        the cells before it are filled (in the same step when this step fills them).

        Measured with ``benchmarks/bench_grammar.py --model tiny-cot --task cot_json --limit 60`` (grammar
        "json"), defer off -> on. Run-5 checkpoint: threshold 0.9 stuck 7 -> 4 rows, parse 88 -> 93 %, NFE
        4.7 -> 5.4; 0.5 parse 37 -> 43 %; 0 parse 30 -> 33 %. Shipped run-6 checkpoint: 0.9 parse 95 -> 93 %,
        stuck 3 -> 4; 0.5 parse 67 -> 70 %, NFE 2.9 -> 4.3; 0 parse equal, NFE 2.1 -> 3.3. So the gains are
        a few rows either way and the forwards are a real cost (the EOS tail waits for the text): off by
        default. A variant that let an EOS land early when a witness ending fitted the cells before it kept
        the forwards but also the stuck rows (the model later filled those cells with other text)."""
        before = cells[:pos]
        if (before == EOS).any():
            return False  # after the end of output: lands as EOS (``_check_pair``)
        if code != EOS:
            return self.frontier and _masks_before(before) > self.exact_cells
        return self.defer_eos and bool((before == MASK).any())

    def _frontier_holds(self, oracle, cells) -> bool:
        """Does every long gap (more than ``exact_cells`` masks) end at the end of output (``frontier``)?"""
        eos = (cells == EOS).nonzero()[0]
        end = int(eos[0]) if eos.size else int(cells.shape[0])
        return all(start + length == end for start, length in oracle.long_runs(cells))

    def _check_row(self, b: int, pairs: list[tuple[int, int]]) -> tuple[list[bool], list[bool], list[int]]:
        """Serial check of one row's commits (region positions, confidence order): kept and vetoed flags, and
        the token that lands at each (the proposal, or the witness's token at a forced cell, ``_force``).

        First the whole step in one check with every short gap unrolled: when it passes (the common case at
        high thresholds) every commit is kept, as the pair-by-pair check would keep them (a subset of a
        completable set of commits is completable). Otherwise two passes at most. The first checks each
        commit with only the gaps next to it unrolled token by token (``OracleState.allows(exact=False)``: a
        few cells per check); then the row's canvas with all of this step's kept commits is checked once with
        every short gap unrolled. Only when that fails (a commit left some other short gap unable to hold
        what it must) is the row checked again commit by commit with every short gap unrolled;
        ``grammar_rechecks`` counts those. Measured on tiny-cot JSON:
        unrolling every short gap in every check made a check 20-40x slower on heavily masked canvases,
        unrolling only the neighbours left 6 of 32 rows stuck at threshold 0 that the exact check finishes."""
        state = self.states[b]
        oracle = state.oracle
        if len(pairs) > 1 and not self.defer_eos and state.feasible():  # optimistic: the whole step at once
            together = state.cells.copy()
            for pos, tok in pairs:
                code = oracle.code(tok)
                if int(together[pos]) != MASK or oracle.excluded[tok]:
                    break
                together[pos] = code
            else:
                if (not self.frontier or self._frontier_holds(oracle, together)) and self._status(b, together, None) == 1:
                    return [True] * len(pairs), [False] * len(pairs), [t for _, t in pairs]
        kept, vetoed, landing, scratch = self._check_pass(b, pairs, exact=False)
        # the row's canvas with this step's kept commits, checked once more with every short gap unrolled
        if scratch is not None and not any(vetoed) and self.exact_cells and self._status(b, scratch, None) != 1:
            self.rechecks[self.caller[b]] = self.rechecks.get(self.caller[b], 0) + 1
            kept, vetoed, landing, _ = self._check_pass(b, pairs, exact=True)
        return kept, vetoed, landing

    def _check_pass(self, b: int, pairs: list[tuple[int, int]], exact: bool):
        """One pass of ``_check_row``: (kept, vetoed, landing tokens, the row's canvas after the kept ones or
        None when nothing was kept). Deferred EOS commits (``_deferred``) are retried, in position order,
        after the others."""
        state = self.states[b]
        oracle = state.oracle
        kept, vetoed = [False] * len(pairs), [False] * len(pairs)
        landing = [t for _, t in pairs]
        scratch = None  # the row's canvas plus this step's accepted tokens
        waiting = []
        # a cell due for forcing goes first, against the standing canvas (known to be completable, so its
        # witness exists); when it is forced, a later commit that fails waits (``forced_alone``: none is checked)
        due_at = [bool(self.force_after) and state.rejected_at.get(pos, 0) >= self.force_after for pos, _ in pairs]
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0] if self.check_order == "position" else i)
        order = sorted(order, key=lambda i: not due_at[i])
        forced = False  # the first commit checked landed as the witness's token: the others are behind a forced cell
        for n, i in enumerate(order):
            pos, tok = pairs[i]
            if n == 1:
                forced = kept[order[0]] and landing[order[0]] != pairs[order[0]][1]
                if forced and self.forced_alone:
                    return kept, vetoed, landing, scratch  # a forced cell lands alone; the others come next step
            if self._deferred(state.cells if scratch is None else scratch, pos, oracle.code(tok)):
                waiting.append(i)
                self.deferrals[self.caller[b]] = self.deferrals.get(self.caller[b], 0) + 1
                continue
            scratch, kept[i], vetoed[i], landing[i] = self._check_pair(b, pos, tok, scratch, exact)
            if vetoed[i] and self._veto_waits(b, kept, forced):
                vetoed[i] = False  # the kept ones land; this one is checked again next step (docstring)
                break
            if vetoed[i]:  # the row re-selects anyway: the rest is checked then, but its vetoes are found now
                self._vetoes[b] = self._vetoes.get(b, 0) + 1
                if self.batch_vetoes:
                    self._veto_rest(b, pairs, order[n + 1:], due_at, vetoed, exact)
                return kept, vetoed, landing, scratch
            if self.conflict_waits and not kept[i]:  # a conflict: the rest of the row's step waits (see docstring)
                break
        for i in sorted(waiting, key=lambda i: pairs[i][0]):
            pos, tok = pairs[i]
            if not self._deferred(state.cells if scratch is None else scratch, pos, oracle.code(tok)):
                self.deferrals[self.caller[b]] -= 1
                scratch, kept[i], vetoed[i], landing[i] = self._check_pair(b, pos, tok, scratch, exact)
                if vetoed[i]:
                    if self._veto_waits(b, kept, forced):
                        vetoed[i] = False
                    else:
                        self._vetoes[b] = self._vetoes.get(b, 0) + 1
                    break
        return kept, vetoed, landing, scratch

    def _veto_rest(self, b: int, pairs, rest, due_at, vetoed: list[bool], exact: bool) -> None:
        """Veto the row's other commits of the step that fail alone against its standing canvas, so that one
        re-selection drops them all instead of one per round (each round re-checks the commits before the veto). A
        commit that fails alone fails for good (the canvas only gains text), so it would be vetoed when its turn
        came. Not checked: cells due for forcing, commits that would wait (``_deferred``) and cells after the end
        of output (they land as EOS)."""
        state = self.states[b]
        cells, oracle = state.cells, state.oracle
        for j in rest:
            pos, tok = pairs[j]
            if due_at[j] or (cells[:pos] == EOS).any() or self._deferred(cells, pos, oracle.code(tok)):
                continue
            vetoed[j] = not state.allows(pos, tok, exact=exact)

    def _veto_waits(self, b: int, kept: list[bool], forced: bool) -> bool:
        """Does a vetoed commit of row ``b`` wait (unbanned, checked again next step) so that the row's kept commits
        land? Behind a forced cell always (a veto would send the forced cell back with the row); behind other kept
        commits once the row has been sent back ``VETO_ROUNDS`` times in this step (see the module docstring)."""
        return forced or (any(kept) and self._vetoes.get(b, 0) >= VETO_ROUNDS)

    def _check_pair(self, b: int, pos: int, tok: int, scratch, exact: bool = True):
        """(scratch canvas after it, kept, vetoed, token that lands) for one commit checked against
        ``scratch`` (None: the row's standing canvas); a commit feasible alone but not after this step's
        earlier ones is a conflict: dropped, not vetoed. A rejection at a cell rejected ``force_after`` times
        lands the witness's token instead (``_force``)."""
        state = self.states[b]
        oracle = state.oracle
        code = oracle.code(tok)
        cells = state.cells if scratch is None else scratch
        if (cells[:pos] == EOS).any() and (scratch is not None or state.feasible()):
            # after the end of output only EOS fits: an EOS changes nothing, any other token lands as EOS
            # (what banning and re-selecting would reach, one rejection per proposal, at every tail cell)
            scratch = state.cells.copy() if scratch is None else scratch
            scratch[pos] = EOS
            return scratch, True, False, tok if code == EOS else self.eos_token
        if scratch is None:
            if state.allows(pos, tok, exact=exact):
                scratch = state.cells.copy()
                scratch[pos] = code
                return scratch, True, False, tok
        else:
            cand = scratch.copy()
            cand[pos] = code
            if not oracle.excluded[tok] and self._status(b, cand, None if exact else pos) == 1:
                return cand, True, False, tok
            if state.allows(pos, tok, exact=exact):  # fine alone: a conflict with an earlier token of this step
                self.conflicts[self.caller[b]] = self.conflicts.get(self.caller[b], 0) + 1
                return scratch, False, False, tok
        forced = self._force(b, pos, cells)
        if forced is None:
            return scratch, False, True, tok
        cand = cells.copy()
        cand[pos] = oracle.code(forced)
        return cand, True, False, forced

    def _status(self, b: int, cells, near: int | None) -> int:
        """``status_cells`` of a canvas built inside this step (the row's canvas plus some of its commits), kept until
        the step's commits land: a row sent back to the sampler after a veto proposes the same commits again, minus
        the vetoed ones, and its check walks through the same canvases in the same order."""
        key = (cells.tobytes(), near)
        memo = self._canvases.setdefault(b, {})
        status = memo.get(key)
        if status is None:
            state = self.states[b]
            state.checks += 1
            status = memo[key] = state.oracle.status_cells(cells, near=near)
        return status

    def _force(self, b: int, pos: int, cells) -> int | None:
        """The token of the oracle's witness completion at ``pos`` once the cell has collected
        ``force_after`` rejections (None before that, or when ``cells`` has no completion).

        Why: where few tokens fit (``"sizes [ [7, 24`` + one mask + `` " "``: one token of 897 on tiny-cot)
        and the model keeps proposing others, ban-and-re-select walks down the model's ranking one check at a
        time; at threshold 0 on tiny-cot JSON rows collected up to 1,741 rejections and most ended stuck at
        the default budget of 100. The witness is a completion of the current canvas, so its token keeps
        the row completable; it is the grammar's choice, not the model's, and is counted in
        ``grammar_forced``. A cell in a longer gap gets its token from a witness with the gap cut at the cell
        (``Oracle.witness_tokens(split_at=)``). The witness's search does not count a long gap's tokens, so its
        token is checked like any commit; when it fails (it left a long gap more text than it has cells), a
        second witness unrolls gaps of up to ``FORCE_UNROLL`` masks; when that fails too, nothing is forced."""
        state = self.states[b]
        oracle = state.oracle
        if not self.force_after or state.rejected_at.get(pos, 0) < self.force_after:
            return None
        token = None
        for unroll in (None, FORCE_UNROLL):
            chosen = oracle.witness_tokens(cells, split_at=pos, unroll=unroll, only=pos)
            if chosen is None:
                return None
            # the cell is unrolled (split there): no token means the completion ends before it, i.e. EOS fits
            witness = chosen.get(pos, self.eos_token)
            blank = not oracle.tokens.table[witness].strip()  # fits almost anywhere, rarely progress
            for token in ([self._content_token(oracle, cells, pos)] if blank else []) + [witness]:
                if token is None:
                    continue
                cand = cells.copy()
                cand[pos] = oracle.code(token)
                state.checks += 1
                if oracle.status_cells(cand) == 1:
                    break
                token = None  # e.g. the witness filled a long gap with more tokens than it has cells
            if token is not None:
                break
        if token is not None:
            self.forced[self.caller[b]] = self.forced.get(self.caller[b], 0) + 1
        return token

    def _content_token(self, oracle, cells, pos: int) -> int | None:
        """The longest vocabulary token that starts the next non-blank text of a witness completion, when every
        cell before ``pos`` is filled (else None). Why: a blank witness token fits almost anywhere in JSON, so
        forcing it keeps a row completable without moving it on; measured on tiny-cot schema rows at
        threshold 0, one row had 32 cells forced to a tab and ended stuck on the rejection budget."""
        if (cells[:pos] == MASK).any():
            return None
        completion = oracle.witness_cells(cells)
        table = oracle.tokens.table
        prefix = b"".join(table[int(c)] for c in cells[:pos] if c >= 0)
        if completion is None or not completion.startswith(prefix):
            return None
        spelled = oracle.spell(completion[len(prefix):].lstrip(), count=1)
        return spelled[0] if spelled else None

    def _fallback(self, b: int, confidence: torch.Tensor, x0: torch.Tensor, offset: int,
                  tried: set[int]) -> tuple[int, int] | None:
        """The row's most confident candidate (window column, proposal) that is not a deferred EOS: what the
        row commits when every commit the sampler chose was a deferred EOS (progress, one per step).
        ``confidence`` and ``x0`` are the step's [B, W] window on the host."""
        state = self.states[b]
        for w in torch.sort(confidence[b], descending=True, stable=True).indices.tolist():
            if not bool(torch.isfinite(confidence[b, w])):
                return None
            tok = int(x0[b, w])
            if w not in tried and not self._deferred(state.cells, w + offset, state.oracle.code(tok)):
                return w, tok
        return None

    def reject(self, view: StepView, decision: Decision) -> torch.Tensor | None:
        return self._veto & decision.commit

    def committed(self, view: StepView, commit: torch.Tensor, tokens: torch.Tensor) -> None:
        self._memo, self._vetoes, self._canvases = {}, {}, {}
        where = commit.nonzero().tolist()
        values = tokens[commit].tolist()
        offsets = (view.span[0] - view.gen_start).tolist()
        landed: dict[int, set] = {}
        for (b, w), t in zip(where, values):
            self.states[b].commit(w + offsets[b], t)
            landed.setdefault(b, set()).add((w + offsets[b], t))
        for b, pairs in landed.items():  # a subset of a checked, feasible set of commits stays feasible
            if pairs <= self._kept.get(b, set()):
                self.states[b]._feasible = True
        self._kept = {}
        end = getattr(self.engine, "end", None)
        if end is not None:  # a filter pulled a row's end in: the columns from it on are EOS now
            for b, e in enumerate(end.tolist()):
                if e < self.ends[b]:
                    self._resync(b, view)
                    self.ends[b] = e

    def _resync(self, b: int, view: StepView) -> None:
        a = int(view.gen_start[b])
        region = view.canvas[b, a:a + len(self.states[b])].tolist()
        state = self.states[b].oracle.start(region)
        self.states[b] = state
        self.all_states[self.caller[b]] = state

    def select_rows(self, rows: torch.Tensor) -> None:
        keep = rows.tolist()
        self.states = [self.states[i] for i in keep]
        self.caller = [self.caller[i] for i in keep]
        self.ends = [self.ends[i] for i in keep]
        self._memo, self._vetoes, self._canvases = {}, {}, {}

    # ------------------------------------------------------------------------------------------------
    def finish(self, stats) -> None:
        rows = sorted(self.all_states)
        states = [self.all_states[r] for r in rows]
        stats.counters["grammar_checks"] = [s.checks for s in states]
        stats.counters["grammar_rejections"] = [s.rejections for s in states]
        stats.counters["grammar_cap_hits"] = [s.cap_hits for s in states]
        stats.counters["grammar_conflicts"] = [self.conflicts.get(r, 0) for r in rows]
        stats.counters["grammar_deferrals"] = [self.deferrals.get(r, 0) for r in rows]
        stats.counters["grammar_forced"] = [self.forced.get(r, 0) for r in rows]
        stats.counters["grammar_rechecks"] = [self.rechecks.get(r, 0) for r in rows]
        stats.counters["grammar_completed"] = [sum(t != self.eos_token for t in self.completions.get(r, {}).values())
                                               for r in rows]
        for row in self.completions:
            if row < len(stats.status):
                stats.reasons[row] = (f"derailed: {self.all_states[row].rejections} rejections, so the grammar's "
                                      "completion wrote the rest of the output (grammar_completed cells)")
        stats.counters["grammar_seconds"] = [self.seconds]
        for row, state in zip(rows, states):
            if row < len(stats.status) and stats.status[row] == "stuck" and not state.complete:
                witness = state.witness_text()
                if witness is not None:
                    stats.witnesses[row] = witness
                    stats.reasons[row] = (stats.reasons.get(row, "stuck") +
                                          "; a completion the grammar accepts is in stats.witnesses[row]")

    def describe(self) -> dict:
        one = lambda g: g if isinstance(g, (str, dict)) else type(g).__name__  # noqa: E731
        grammar = [one(g) for g in self.grammar] if isinstance(self.grammar, (list, tuple)) else one(self.grammar)
        return {"filter": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}, "grammar": grammar}
