"""The decoding loop. It exists once: caches, samplers, modifiers, filters and logit processors plug into it.

One step (see DESIGN.md, "The flow of one generation"):

 1. plan      the cache says which columns enter the network and which K/V are reused
 2. forward   the network scores the span (the logit shift is applied here, once) — or the logits the
              previous step handed over are used, when the cache says the skipped forward leaves nothing behind
 3. process   logit processors and guidance; persistent (position, token) bans from filters
 4. view      proposals, raw and candidate-masked confidences, per-row state, a read-only hypothesis forward
 5. rescore   modifiers reshape the ranking
 6. select    the sampler returns a Decision
 7. progress  at least one commit per row that has candidates (the most confident one if none)
 8. filter    filters adjust the decision (AR block opening, per-row end) and may reject (position, token)
              pairs: a rejection bans the pair and the row re-selects; a row past ``max_rejections`` is stuck
 9. commit    write the canvas, statistics, trajectory, per-row ends
10. stop      EOS / stop strings / stuck; settled rows retire and stop costing compute; rows with nothing left
              in the span sit out its uncached forwards (``_working_rows``)
11. event     a :class:`StepEvent` for ``dllm.stream``

Rows advance in lockstep over the canvas's decode spans; inside a step everything is vectorised over the
batch and the host synchronises once ("is anything left to do", plus the few flags that ride along).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from ..caches.base import Feed, StepContext
from ..models.model import Model, attention_mask_for
from .canvas import Canvas
from .events import StepEvent
from .proposals import guided, propose_and_score
from .result import Stats, Trajectory, TrajectoryStep
from .stop_strings import StopWatcher
from .view import Decision, RowState, StepView, top_k_mask

if TYPE_CHECKING:
    from ..caches.base import Cache
    from ..filters.base import Filter
    from ..modifiers.base import Modifier
    from ..samplers.base import Sampler

#: A logit processor: (logits [B, W, V], context) -> logits. Context: the engine's ProcessorContext.
LogitProcessor = Callable[[torch.Tensor, "ProcessorContext"], torch.Tensor]


class DecodeError(RuntimeError):
    """Decoding cannot go on (non-finite logits, a plug-in that broke the contract); the message says where."""


@dataclass
class ProcessorContext:
    span: tuple[int, int]
    canvas: torch.Tensor
    rows: torch.Tensor
    step: int
    mask_id: int
    eos_ids: tuple[int, ...]


@dataclass
class DecodeSettings:
    steps_per_span: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    confidence: str = "prob"
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    record: bool = False
    generators: list[torch.Generator] | None = None  # one per row (sampling, random remasking)
    processors: list[LogitProcessor] = field(default_factory=list)
    max_rejections: int = 100  # filter rejections a row may collect without a commit before it ends as stuck


class Engine:
    def __init__(self, model: Model, sampler: Sampler, cache: Cache, settings: DecodeSettings,
                 modifiers: list[Modifier] = (), filters: list[Filter] = ()):
        self.model, self.sampler, self.cache, self.settings = model, sampler, cache, settings
        self.modifiers, self.filters = list(modifiers), list(filters)
        self.mask_id = model.mask_id
        self.eos = torch.tensor(settings.eos_ids, dtype=torch.long, device=model.device)

    # ------------------------------------------------------------------------------------------------
    def run(self, canvas: Canvas) -> tuple[torch.Tensor, Stats, Trajectory | None]:
        """Decode ``canvas`` in place; return the final canvas of every row, statistics and trajectory."""
        for _ in self.steps(canvas):
            pass
        return self.final, self.stats, self.trajectory

    @torch.inference_mode()
    def steps(self, canvas: Canvas) -> Iterator[StepEvent]:
        """Decode ``canvas``, yielding one :class:`StepEvent` per step (per forward, or per handed-over step).

        After the iterator is exhausted, ``self.final``, ``self.stats`` and ``self.trajectory`` hold the result.
        """
        settings, model = self.settings, self.model
        started = time.perf_counter()
        batch, width = canvas.x.shape
        device = canvas.x.device
        self.canvas = canvas
        self.rows = torch.arange(batch)  # active row -> caller's row (CPU)
        self.final = canvas.x.clone()
        self.row_nfe = torch.zeros(batch, dtype=torch.long, device=device)
        self.nfe = 0
        self.counters: dict[str, list] = {}
        self.status = ["length"] * batch
        self.reasons: dict[int, str] = {}
        self.end = canvas.gen_end.clone()  # per-row end: columns from here on are EOS, never candidates
        self.gen_length = int((canvas.gen_end - canvas.gen_start).max())  # once: a host read
        self.rejections = torch.zeros(batch, dtype=torch.long, device=device)
        self.bans: list[tuple[int, int, int]] = []  # (caller row, column, token) vetoed by a filter
        self.state = RowState()
        self.generators = list(settings.generators) if settings.generators else None
        self.stops = StopWatcher(model.tokenizer, settings.stop_strings, batch) if settings.stop_strings else None
        self.trajectory = (Trajectory(initial=self._row_sequences(canvas.x, canvas.pad), pads=canvas.pad.tolist())
                           if settings.record else None)
        self.guidance = settings.cfg_scale > 0
        self.total_steps = 0
        self.event_index = 0
        self.stuck_now = None
        self.sampler_masked = None
        self._refresh_row_geometry()
        self.cache.start(model.network, batch * (2 if self.guidance else 1), width, canvas.block_size)
        self.sampler.start(self)
        for plugin in self.filters:
            plugin.start(self)

        for index, span in enumerate(canvas.spans):
            if self.rows.numel() == 0:
                break
            if not bool((canvas.x[:, span[0]:span[1]] == self.mask_id).any()):
                continue
            yield from self._decode_span(index, span)
        if self.rows.numel():
            self._finish_rows(torch.ones(self.rows.numel(), dtype=torch.bool))
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        self.stats = Stats(nfe=self.nfe, seconds=time.perf_counter() - started, row_nfe=self.row_nfe.tolist(),
                           sampler=self.sampler.describe(), cache=self.cache.describe(),
                           modifiers=[m.describe() for m in self.modifiers],
                           counters=self.counters, status=self.status, reasons=dict(self.reasons))
        for plugin in self.filters:
            plugin.finish(self.stats)

    # ------------------------------------------------------------------------------------------------
    def _decode_span(self, index: int, span: tuple[int, int]) -> Iterator[StepEvent]:
        settings, canvas = self.settings, self.canvas
        start, end = span
        self.forwards = self.sampler_steps = 0
        self.opening = None
        self.handed: torch.Tensor | None = None
        any_opening_undecided = True
        self.span_masked = self._candidates(span).sum(-1)
        self.idle: torch.Tensor | None = None  # [B] bool on the host: rows with no candidate left in this span
        while True:
            masked = self._candidates(span)
            feed = self.cache.plan(self._context(span, masked, any_opening_undecided, self.forwards, self.sampler_steps))
            if self.handed is not None and feed.ephemeral and self.handed.shape[0] == masked.shape[0]:
                logits, ran = self.handed, False  # the previous step already computed this forward
                self.working = None
            else:
                self.working = self._working_rows(feed)
                logits, ran = self._predict(feed, span, working=self.working), True
                if feed.after is not None:
                    feed.after()
            self.handed = None
            # handed-over logits come from a hypothesis forward, which already ran the logit processors
            logits = self._process(logits, span) if ran else self._apply_bans(logits, span)
            if self.bans:  # a cell whose every token is banned can never be filled: its row is stuck
                dead = masked & (logits.amax(-1) == float("-inf"))  # NaN (a broken model) stays NaN: not dead
                masked = masked & ~dead
                self._mark_stuck(dead.any(-1))
            draw = self._draw_flags(masked)
            x0, raw = propose_and_score(logits, settings.confidence, settings.temperature, self.generators_active,
                                        exclude=self.mask_id, draw=draw)
            view = self._view(index, span, logits, x0, raw, masked, feed, any_opening_undecided)
            decision = self._decide(view)
            commit, tokens = decision.commit, decision.tokens
            self._mark_stuck(masked.any(-1) & ~commit.any(-1))  # nothing allowed is left: never loop
            # a commit is progress: the budget counts rejections since the row's last commit (a row still ends,
            # since every commit fills a cell; a filter that forces tokens after vetoes needs this)
            self.rejections = torch.where(commit.any(-1), torch.zeros_like(self.rejections), self.rejections)
            window = canvas.x[:, start:end]
            canvas.x[:, start:end] = torch.where(commit, tokens, window)
            if decision.end is not None:
                self._move_end(decision.end)
            self.forwards += 1
            if decision.counts_as_step:
                self.sampler_steps += 1
                self.total_steps += 1
            if ran:
                self.nfe += 1
                self.row_nfe[self.rows_device] += masked.any(-1).long()
            for key, value in decision.counters.items():
                self.counters.setdefault(key, []).extend(value)
            if decision.next_logits is not None:
                if decision.next_tokens is None:
                    raise DecodeError(f"sampler '{self.sampler.name}' handed over next_logits without next_tokens "
                                      "(the span contents they were computed for)")
                if bool((canvas.x[:, start:end] == decision.next_tokens).all()):
                    self.handed = decision.next_logits
            for plugin in self.filters:
                plugin.committed(view, commit, tokens)
            if self.trajectory is not None:
                self._record(feed, span, commit, tokens, view.raw_confidence)
            event = self._event(span, commit, tokens, ran)
            more, any_opening_undecided = self._retire_and_continue(span, raw, masked)
            yield event
            if not more:
                return

    def _context(self, span, masked, any_opening_undecided, forwards, sampler_steps) -> StepContext:
        undecided = masked[:, 0]
        if self.guidance:
            undecided = torch.cat([undecided, undecided])
        return StepContext(span, forwards, sampler_steps, self.canvas.width, undecided, any_opening_undecided)

    def _candidates(self, span: tuple[int, int]) -> torch.Tensor:
        """[B, W] bool: MASK inside the span and before each row's end."""
        start, end = span
        cols = self.columns[start:end]
        return (self.canvas.x[:, start:end] == self.mask_id) & (cols[None, :] < self.end[:, None])

    def _draw_flags(self, masked: torch.Tensor) -> list[bool] | None:
        if self.generators is None:
            self.generators_active = None
            return None
        self.generators_active = [self.generators[int(r)] for r in self.rows]
        return masked.any(-1).tolist()  # one extra host read, only when sampling

    def _view(self, index, span, logits, x0, raw, masked, feed, any_opening_undecided) -> StepView:
        conf = raw.masked_fill(~masked, float("-inf"))
        view = StepView(logits=logits, x0=x0, confidence=conf, masked=masked, span=span, step=self.sampler_steps,
                        steps_per_span=self.settings.steps_per_span, canvas=self.canvas.x, rows=self.rows,
                        generator=self.generators_active[0] if self.generators_active else None,
                        mask_id=self.mask_id, span_masked=self.span_masked, raw_confidence=raw, eos_ids=self.eos,
                        state=self.state, span_index=index, spans=tuple(self.canvas.spans),
                        total_step=self.total_steps, gen_start=self.canvas.gen_start,
                        gen_length=self.gen_length, end=self.end,
                        sampler=self.sampler)
        view.forwards = self.forwards
        view.generators = self.generators_active
        view.forward = lambda hypotheses, charge=None: self._hypotheses(view, hypotheses, charge)
        view.can_hand_over = lambda next_tokens: self._hypothesis_feed(view.span, next_tokens[:, None]).ephemeral
        for modifier in self.modifiers:
            view.confidence = modifier.rescore(view).masked_fill(~masked, float("-inf"))
        return view

    # ------------------------------------------------------------------------------------------------
    def _decide(self, view: StepView) -> Decision:
        """select -> progress -> filters, re-selecting rows whose (position, token) a filter rejected."""
        limit = self.settings.max_rejections
        decision = self._select(view)
        if not self.filters:
            return decision
        while True:
            for plugin in self.filters:
                decision = plugin.adjust(view, decision)
                self._check_plugin(plugin, view, decision)
            rejected = torch.zeros_like(view.masked)
            for plugin in self.filters:
                vetoed = plugin.reject(view, decision)
                if vetoed is not None:
                    rejected |= vetoed & decision.commit
            row_rejected = rejected.any(-1)
            if not bool(row_rejected.any()):
                return decision
            self.rejections += rejected.sum(-1)
            stuck = row_rejected & (self.rejections > limit)
            self._ban(view, rejected & ~stuck[:, None], decision.tokens)
            # stuck rows commit nothing more; the others re-select with the banned pairs removed
            decision.commit = decision.commit & ~row_rejected[:, None]
            self._mark_stuck(stuck)
            again = row_rejected & ~stuck
            if not bool(again.any()):
                return decision
            retry = self._select(view)
            decision.commit = torch.where(again[:, None], retry.commit, decision.commit)
            decision.tokens = torch.where(again[:, None], retry.tokens, decision.tokens)

    def _mark_stuck(self, rows: torch.Tensor) -> None:
        self.stuck_now = rows if self.stuck_now is None else self.stuck_now | rows

    def _select(self, view: StepView) -> Decision:
        """Run the sampler; keep only candidates; guarantee progress (the most confident one if none)."""
        decision = Decision.of(self.sampler.select(view), view)
        commit = decision.commit & view.masked
        masking = commit & (decision.tokens == self.mask_id)  # never lands; reported on the step's status read
        self.sampler_masked = masking.any(-1) if self.sampler_masked is None else self.sampler_masked | masking.any(-1)
        commit &= ~masking
        stalled = view.masked.any(-1) & ~commit.any(-1)
        decision.commit = commit | top_k_mask(view.confidence, stalled.long())
        return decision

    def _check_plugin(self, plugin, view: StepView, decision: Decision) -> None:
        if bool((decision.commit & ~view.masked).any()):
            raise DecodeError(f"filter '{plugin.name}' committed a position that is not a candidate "
                              f"(span {view.span}): a filter may only keep, drop or retarget candidate positions")
        if bool((decision.commit & (decision.tokens == self.mask_id)).any()):
            raise DecodeError(f"filter '{plugin.name}' asked to commit the MASK token (span {view.span}): "
                              "commit a real token or leave the position out")

    def _ban(self, view: StepView, rejected: torch.Tensor, tokens: torch.Tensor) -> None:
        """Persist rejected (position, token) pairs and remove them from this step's proposals."""
        if not bool(rejected.any()):
            return
        where = rejected.nonzero()
        banned_tokens = tokens[rejected]
        view.logits[where[:, 0], where[:, 1], banned_tokens] = float("-inf")
        cols = where[:, 1] + view.span[0]
        for r, c, t in zip(where[:, 0].tolist(), cols.tolist(), banned_tokens.tolist()):
            self.bans.append((int(self.rows[r]), c, t))
        self._rescore(view, where)

    def _rescore(self, view: StepView, where: torch.Tensor) -> None:
        """New proposals and confidences after bans at ``where`` ([N, 2] row, column).

        Only the banned positions are scored again: nothing else in the logits changed. (Scoring the whole
        [B, W, V] window again after every rejection was half the grammar filter's overhead at low thresholds.)
        """
        rows, cols = where[:, 0], where[:, 1]
        logits = view.logits[rows, cols]  # [N, V]
        x0_new, raw_new = propose_and_score(logits[None], self.settings.confidence, 0.0, None, exclude=self.mask_id)
        x0_new, raw_new = x0_new[0], raw_new[0]
        if self.settings.temperature > 0:  # keep sampled proposals where they are still allowed
            old = view.x0[rows, cols]
            allowed = logits.gather(-1, old[:, None]).squeeze(-1) > float("-inf")
            x0_new = torch.where(allowed, old, x0_new)
            raw_new = torch.where(allowed, view.raw_confidence[rows, cols], raw_new)
        view.x0, view.raw_confidence = view.x0.clone(), view.raw_confidence.clone()
        view.x0[rows, cols], view.raw_confidence[rows, cols] = x0_new, raw_new
        if not self.modifiers:
            usable = view.masked[rows, cols] & torch.isfinite(logits).any(-1)
            view.confidence = view.confidence.clone()
            view.confidence[rows, cols] = raw_new.masked_fill(~usable, float("-inf"))
            return
        # modifiers may rank each position against the others: they score the whole window again
        finite = torch.isfinite(view.logits).any(-1)
        view.confidence = view.raw_confidence.masked_fill(~view.masked | ~finite, float("-inf"))
        for modifier in self.modifiers:
            view.confidence = modifier.rescore(view).masked_fill(~view.masked | ~finite, float("-inf"))

    def _apply_bans(self, logits: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        if not self.bans:
            return logits
        where = {int(r): i for i, r in enumerate(self.rows.tolist())}
        hits = [(where[r], c - span[0], t) for r, c, t in self.bans if r in where and span[0] <= c < span[1]]
        if hits:
            index = torch.tensor(hits, device=logits.device)
            logits[index[:, 0], index[:, 1], index[:, 2]] = float("-inf")
        return logits

    # ------------------------------------------------------------------------------------------------
    def _process(self, logits: torch.Tensor, span: tuple[int, int], rows: torch.Tensor | None = None,
                 step: int | None = None) -> torch.Tensor:
        context = ProcessorContext(span, self.canvas.x, self.rows if rows is None else rows,
                                   self.sampler_steps if step is None else step, self.mask_id, self.settings.eos_ids)
        for process in self.settings.processors:
            logits = process(logits, context)
        if rows is None:
            logits = self._apply_bans(logits, span)
        return logits

    def _predict(self, feed: Feed, span: tuple[int, int], ids=None, kv=None, repeat: int = 1,
                 working: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, W, V] scoring the span's columns: the logit shift is applied here, once.

        Logit-shift families score column i with the output at i-1. When a forward starts at the span
        itself (a cached step feeding only the block), the span's first column uses the output at its
        preceding column from the latest forward that covered it (kept in ``self.opening``). ``ids``/``kv``/
        ``repeat`` run hypotheses (read-only; ``self.opening`` is then neither updated nor needed anew).
        ``working`` (row indices): only these rows enter the network (``_working_rows``).
        """
        start, end = span
        if not self.model.logit_shift:
            return self._forward(feed, (start - feed.start, end - feed.start), ids, kv, repeat, working)
        lo, hi = start - 1 - feed.start, end - 1 - feed.start
        if lo >= 0:
            raw = self._forward(feed, (lo, hi), ids, kv, repeat, working)
            if ids is None:
                opening = raw[:, 0].clone()  # later steps may edit their logits in place
                if working is not None and self.opening is not None:  # rows that sat out keep theirs
                    opening = self.opening.index_copy(0, working, opening[working])
                self.opening = opening
            return raw
        raw = self._forward(feed, (0, max(hi, 1)), ids, kv, repeat, working)
        if self.opening is None:
            # Only canvas column 0 (always a prompt token, never a candidate) lacks a preceding output: like
            # the references, it reads its own output.
            return torch.cat([raw[:, :1], raw[:, :hi]], dim=1)
        opening = self.opening.repeat_interleave(repeat, 0) if repeat > 1 else self.opening
        return torch.cat([opening[:, None], raw[:, :hi]], dim=1)

    def _working_rows(self, feed: Feed) -> torch.Tensor | None:
        """Row indices that enter this step's forward, or None for all of them.

        A row with no candidate left in the span waits for the others to finish it: its logits there are never
        read (nothing of it can commit), yet it costs as much compute as any other row, and where compute is the
        bound (a CPU; a full canvas on a GPU) a forward's cost follows its rows. So it sits out forwards that
        touch no cache. Sound because a span's candidates only shrink: commits fill cells and ends only move in;
        its logits are zeros, never read. The set comes from the previous step's one host read
        (``_retire_and_continue``): no extra synchronisation. Measured with ``benchmarks/bench_engine.py --sit-out``
        (tiny-cot, 60 rows, batch 16, no cache, side by side): see benchmarks/README.md.

        Cached forwards keep every row: a sub-batch must gather its rows' K/V for attention in every forward (and
        scatter the writes back). Tried with the ``dual`` cache (tiny-cot as above, a version that gathered and
        scattered them): 1.01 / 1.00 / 0.89x the time at thresholds 0.9 / 0.5 / 0 on the CPU, within this machine's
        noise (the same code measured against itself: 0.96-1.16x); and on a GPU, by arithmetic (not measured), a
        batch of 16 rows of LLaDA-8B (full multi-head attention) at a 1K canvas would copy about 8 GB of K/V per
        step, half of what reading its weights costs.
        """
        idle = self.idle
        if feed.write is not None or self.guidance or idle is None or not bool(idle.any()):
            return None
        return (~idle).nonzero().flatten().to(self.canvas.x.device)

    def _forward(self, feed: Feed, columns: tuple[int, int], ids=None, kv=None, repeat: int = 1,
                 working: torch.Tensor | None = None) -> torch.Tensor:
        canvas, model = self.canvas, self.model
        a, b = feed.start, feed.end
        if ids is None:
            ids = canvas.x[:, a:b]
        positions = canvas.positions[:, a:b]
        mask = self._mask(feed)
        if repeat > 1:
            positions = positions.repeat_interleave(repeat, 0)
            mask = None if mask is None else mask.repeat_interleave(repeat, 0)
        if self.guidance:
            if repeat > 1:
                raise DecodeError("hypothesis forwards do not support classifier-free guidance (cfg_scale > 0)")
            unconditional = ids.masked_fill(self.prompt_columns[:, a:b], self.mask_id)
            ids, positions = torch.cat([ids, unconditional]), torch.cat([positions, positions])
            mask = None if mask is None else torch.cat([mask, mask])
        if feed.write is not None and kv is None:
            kv = self.cache.kv
        if working is not None:  # rows with nothing to do in the span sit out (``_working_rows``)
            some = model.network(ids[working], positions[working], None if mask is None else mask[working], None,
                                 None, logits_columns=columns)
            logits = some.new_zeros((ids.shape[0],) + tuple(some.shape[1:]))
            return logits.index_copy_(0, working, some)
        logits = model.network(ids, positions, mask, kv if feed.write is not None else None, feed.write,
                               logits_columns=columns)
        return guided(logits, self.settings.cfg_scale) if self.guidance else logits

    def _mask(self, feed: Feed) -> torch.Tensor | None:
        """The attention mask of a feed, built once per geometry (span, retirement, end move)."""
        a, b = feed.start, feed.end
        k0, k1 = (a, b) if feed.write is None else (0, feed.write.key_len)
        key = (a, b, k0, k1)
        if key not in self.masks:
            canvas = self.canvas
            keep = canvas.keep[:, k0:k1] if self.padded else None
            self.masks[key] = attention_mask_for(self.model, canvas.positions[:, a:b], canvas.positions[:, k0:k1], keep)
        return self.masks[key]

    def _hypotheses(self, view: StepView, hypotheses: torch.Tensor, charge: torch.Tensor | None = None) -> torch.Tensor:
        """Read-only forward of H hypothesised span fillings per row, through the same cache (1 NFE).

        ``hypotheses`` [B, H, W] are full span contents (MASK where undecided). The forward is the one the
        *next* step would run for each hypothesis (the cache's plan for it, with each hypothesis' own
        "span opens with MASK" flag), so its logits can be handed over with ``Decision.next_logits``; the
        cache's stored K/V are never changed (hypotheses attend over a copy). The logits are processed (logit
        processors) exactly as the next step would process them. ``charge`` [B] bool: the rows that need
        this forward (default: rows with candidates) — only they are charged in the per-row NFE, so a row
        that would not need it decoding alone costs what it costs alone.
        """
        b, h, w = hypotheses.shape
        start, end = view.span
        if w != end - start or b != view.masked.shape[0]:
            raise DecodeError(f"hypotheses must be [B={view.masked.shape[0]}, H, W={end - start}] span fillings, "
                              f"got {tuple(hypotheses.shape)}")
        if self.guidance:
            raise DecodeError("hypothesis forwards do not support classifier-free guidance (cfg_scale > 0)")
        if not getattr(self.cache, "serves_hypotheses", True):
            raise DecodeError(f"cache '{self.cache.name}' cannot serve read-only hypothesis forwards: use a cache "
                              "whose plan has no side effects (none, prefix, dual, block)")
        flat = hypotheses.reshape(b * h, w)
        feed = self._hypothesis_feed(view.span, hypotheses)
        ids = self.canvas.x[:, feed.start:feed.end].repeat_interleave(h, 0)
        lo, hi = max(start, feed.start), min(end, feed.end)
        ids[:, lo - feed.start:hi - feed.start] = flat[:, lo - start:hi - start]
        kv = self.cache.kv.expanded(h) if feed.write is not None else None
        logits = self._predict(feed, view.span, ids=ids, kv=kv, repeat=h)
        rows = self.rows.repeat_interleave(h)
        logits = self._process(logits, view.span, rows=rows, step=self.sampler_steps + 1)
        self.nfe += 1
        charged = view.masked.any(-1) if charge is None else charge.to(view.masked.device) & view.masked.any(-1)
        self.row_nfe[self.rows_device] += charged.long()
        return logits.view(b, h, w, -1)

    def _hypothesis_feed(self, span: tuple[int, int], hypotheses: torch.Tensor) -> Feed:
        """The cache's plan for the next step run on hypotheses [B, H, W] (no side effects). Its ``ephemeral``
        says whether logits computed for a hypothesis could replace that forward (``StepView.can_hand_over``)."""
        b, h, _ = hypotheses.shape
        opening = (hypotheses.reshape(b * h, -1)[:, 0] == self.mask_id) & (self.end.repeat_interleave(h) > span[0])
        return self.cache.plan(StepContext(span, self.forwards + 1, self.sampler_steps + 1, self.canvas.width, opening,
                                           bool(opening.any())))

    # ------------------------------------------------------------------------------------------------
    def _move_end(self, new_end: torch.Tensor) -> None:
        """Pull rows' ends in: columns from the end on become EOS and leave attention (keys hidden)."""
        new_end = torch.minimum(new_end.to(self.end.device), self.end)
        changed = new_end < self.end
        if not bool(changed.any()):
            return
        canvas = self.canvas
        cut = (self.columns[None, :] >= new_end[:, None]) & self.generated
        eos = int(self.settings.eos_ids[0]) if self.settings.eos_ids else self.model.pad_id
        canvas.x[cut] = eos
        canvas.keep &= ~cut
        self.end = new_end
        self._refresh_row_geometry()

    def _retire_and_continue(self, span: tuple[int, int], raw: torch.Tensor, masked: torch.Tensor) -> tuple[bool, bool]:
        """Retire settled rows; return whether any remaining row still has masks in ``span`` and whether
        any remaining row's span still opens with MASK (the one host read of the step)."""
        canvas = self.canvas
        x, cols = canvas.x, self.columns
        is_eos = torch.isin(x, self.eos) & self.generated
        first_eos = torch.where(is_eos, cols, canvas.width).min(-1).values
        undecided = (x == self.mask_id) & self.generated & (cols[None, :] < self.end[:, None])
        first_mask = torch.where(undecided, cols, canvas.width).min(-1).values
        settled = (first_mask > first_eos) | ~undecided.any(-1)
        window = self._candidates(span)
        broken = (torch.isnan(raw) & masked).any(-1)
        stuck = torch.zeros_like(settled) if self.stuck_now is None else self.stuck_now & ~settled
        self.stuck_now = None
        masking = torch.zeros_like(settled) if self.sampler_masked is None else self.sampler_masked
        self.sampler_masked = None
        status = torch.stack([settled.long(), window.any(-1).long(), window[:, 0].long(),
                              torch.minimum(first_mask, first_eos), broken.long(), stuck.long(),
                              (first_eos < canvas.width).long(), masking.long()]).cpu()
        settled_now, still_now, opening_now = status[0].bool(), status[1].bool(), status[2].bool()
        prefix_end, broken_now, stuck_now, has_eos = status[3], status[4].bool(), status[5].bool(), status[6].bool()
        if bool(status[7].any()):
            raise DecodeError(f"sampler '{self.sampler.name}' asked to commit the MASK token at step {self.total_steps} "
                              f"(span {span}): commit a real token or leave the position out")
        if bool(broken_now.any()):
            rows = self.rows[broken_now].tolist()
            raise DecodeError(f"the model produced non-finite logits at step {self.total_steps} (span {span}) for "
                              f"row(s) {rows}: check the weights, dtype and logit processors")
        for r in self.rows[stuck_now].tolist():
            self.reasons[r] = (f"stuck: filters rejected more than {self.settings.max_rejections} tokens without a "
                               "commit or left no allowed token to commit")
        if self.stops is not None:
            seen = self.stops.seen(x, self.rows, canvas.gen_start, prefix_end)
            for r in self.rows[seen & ~settled_now].tolist():
                self.status[r] = "stop"
            settled_now |= seen
        for r, eos_seen in zip(self.rows[settled_now].tolist(), has_eos[settled_now].tolist()):
            if self.status[r] == "length":
                self.status[r] = "eos" if eos_seen else "length"
        for r in self.rows[stuck_now].tolist():
            self.status[r] = "stuck"
        done = settled_now | stuck_now
        if bool(done.any()):
            self._finish_rows(done)
            still_now, opening_now = still_now[~done], opening_now[~done]
        self.idle = ~still_now
        return bool(still_now.any()), bool(opening_now.any())

    def _finish_rows(self, settled: torch.Tensor) -> None:
        canvas = self.canvas
        device_settled = settled.to(canvas.x.device)
        self.final[self.rows_device[device_settled]] = canvas.x[device_settled]
        keep = (~settled).nonzero().flatten()
        self.rows = self.rows[keep]
        if keep.numel() == 0:
            return
        device_keep = keep.to(canvas.x.device)
        canvas.select_rows(device_keep)
        self.end = self.end[device_keep]
        self.rejections = self.rejections[device_keep]
        if self.opening is not None:
            self.opening = self.opening[device_keep]
        if self.handed is not None:
            self.handed = self.handed[device_keep]
        self.span_masked = self.span_masked[device_keep]
        self.state.select(device_keep)
        for plugin in self.filters:
            plugin.select_rows(device_keep)
        rows = torch.cat([device_keep, device_keep + settled.shape[0]]) if self.guidance else device_keep
        self.cache.select_rows(rows)
        self._refresh_row_geometry()

    def _refresh_row_geometry(self) -> None:
        canvas = self.canvas
        self.rows_device = self.rows.to(canvas.x.device)
        self.columns = torch.arange(canvas.width, device=canvas.x.device)
        self.generated = canvas.generated_region()
        self.prompt_columns = canvas.keep & (self.columns < canvas.gen_start[:, None])
        self.padded = canvas.has_padding or bool((self.end < canvas.gen_end).any())
        self.masks: dict = {}

    # ------------------------------------------------------------------------------------------------
    def _event(self, span, commit: torch.Tensor, tokens: torch.Tensor, ran: bool) -> StepEvent:
        self.event_index += 1
        return StepEvent(step=self.event_index, nfe=self.nfe, forward=ran, span=span, rows=self.rows.clone(),
                         commit=commit, tokens=tokens, offsets=span[0] - self.canvas.gen_start,
                         tokenizer=self.model.tokenizer)

    def _record(self, feed: Feed, span, commit: torch.Tensor, tokens: torch.Tensor, raw: torch.Tensor) -> None:
        batch = self.final.shape[0]
        commits: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
        confidences: list[list[float] | None] = [None] * batch
        pad = self.canvas.pad.tolist()
        where = commit.nonzero().tolist()
        values = tokens[commit].tolist()
        rows = self.rows.tolist()
        for (r, c), t in zip(where, values):
            commits[rows[r]].append((span[0] + c - pad[r], t))
        fed = None if self.working is None else [rows[i] for i in self.working.tolist()]
        sat_out = set() if fed is None else set(rows) - set(fed)
        for r, row_conf in enumerate(raw.float().cpu().tolist()):
            if rows[r] not in sat_out:
                confidences[rows[r]] = row_conf
        self.trajectory.steps.append(TrajectoryStep(feed=(feed.start, feed.end - feed.start), span=span, commits=commits,
                                                    confidences=confidences, rows=rows, fed=fed))

    def _row_sequences(self, x: torch.Tensor, pad: torch.Tensor) -> list[list[int]]:
        return [row[int(p):].tolist() for row, p in zip(x.cpu(), pad.cpu())]
