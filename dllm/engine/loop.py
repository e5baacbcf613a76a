"""The decoding loop. It exists once: caches, samplers and logit processors plug into it.

Per step: the cache plans the forward, the network runs once on the planned columns, the logit shift is
applied (here and only here), processors and guidance shape the logits, proposals and confidences are
computed, the sampler selects, the engine commits, records statistics and retires rows whose output is
settled (EOS or a stop string with nothing undecided before it), so finished rows stop costing compute.

Rows advance in lockstep over the canvas's decode spans; inside a step everything is vectorised over the
batch and the only host synchronisation is one small status read ("is anything left to do").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from ..caches.base import Feed, StepContext
from ..models.model import Model, attention_mask_for
from .canvas import Canvas
from .proposals import confidence as confidence_of
from .proposals import guided, propose
from .result import Stats, Trajectory, TrajectoryStep
from .view import StepView, top_k_mask

if TYPE_CHECKING:
    from ..caches.base import Cache
    from ..samplers.base import Sampler

#: A logit processor: (logits [B, W, V], context) -> logits. Context: the engine's ProcessorContext.
LogitProcessor = Callable[[torch.Tensor, "ProcessorContext"], torch.Tensor]


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
    steps_per_block: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    confidence: str = "prob"
    ar_first: bool = False
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    record: bool = False
    generator: torch.Generator | None = None
    processors: list[LogitProcessor] = field(default_factory=list)


class Engine:
    def __init__(self, model: Model, sampler: Sampler, cache: Cache, settings: DecodeSettings):
        self.model, self.sampler, self.cache, self.settings = model, sampler, cache, settings
        self.mask_id = model.mask_id
        self.eos = torch.tensor(settings.eos_ids, dtype=torch.long, device=model.device)

    # ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, canvas: Canvas) -> tuple[torch.Tensor, Stats, Trajectory | None]:
        """Decode ``canvas`` in place; return the final canvas of every row, statistics and trajectory."""
        settings, model = self.settings, self.model
        started = time.perf_counter()
        batch, width = canvas.x.shape
        self.canvas = canvas
        self.rows = torch.arange(batch)  # active row -> caller's row (CPU)
        self.final = canvas.x.clone()
        self.row_nfe = torch.zeros(batch, dtype=torch.long)
        self.nfe = 0
        self.checked_prefix = torch.zeros(batch, dtype=torch.long)
        self.trajectory = (Trajectory(initial=self._row_sequences(canvas.x, canvas.pad), pads=canvas.pad.tolist())
                           if settings.record else None)
        self.guidance = settings.cfg_scale > 0
        self._refresh_row_geometry()
        self.cache.start(model.network, batch * (2 if self.guidance else 1), width, canvas.block_size)

        for span in canvas.spans:
            if self.rows.numel() == 0:
                break
            if not bool((canvas.x[:, span[0]:span[1]] == self.mask_id).any()):
                continue
            self._decode_span(span)
        if self.rows.numel():
            self.final[self.rows] = canvas.x
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        stats = Stats(nfe=self.nfe, seconds=time.perf_counter() - started, row_nfe=self.row_nfe.tolist(),
                      sampler=self.sampler.describe(), cache=self.cache.describe())
        return self.final, stats, self.trajectory

    # ------------------------------------------------------------------------------------------------
    def _decode_span(self, span: tuple[int, int]) -> None:
        settings, canvas = self.settings, self.canvas
        start, end = span
        block = canvas.block_size
        opens_block = settings.ar_first and (block is None or start % block == 0)
        forwards = sampler_steps = 0
        self.opening = None
        any_opening_undecided = True
        self.span_masked = (canvas.x[:, start:end] == self.mask_id).sum(-1)
        while True:
            window = canvas.x[:, start:end]
            masked = window == self.mask_id
            undecided = masked[:, 0]
            if self.guidance:
                undecided = torch.cat([undecided, undecided])
            feed = self.cache.plan(StepContext(span, forwards, sampler_steps, canvas.width, undecided,
                                               any_opening_undecided))
            logits = self._predict(feed, span)
            context = ProcessorContext(span, canvas.x, self.rows, sampler_steps, self.mask_id, settings.eos_ids)
            for process in settings.processors:
                logits = process(logits, context)
            x0 = propose(logits, settings.temperature, settings.generator, exclude=self.mask_id)
            conf = confidence_of(logits, x0, settings.confidence).masked_fill(~masked, float("-inf"))
            view = StepView(logits=logits, x0=x0, confidence=conf, masked=masked, span=span, step=sampler_steps,
                            steps_per_block=settings.steps_per_block, canvas=canvas.x, rows=self.rows,
                            generator=settings.generator, mask_id=self.mask_id, span_masked=self.span_masked)
            commit, tokens = self._select(view)
            forced = opens_block and forwards == 0
            if forced:
                # The block opens with the greedy token predicted from the preceding known token (Fast-dLLM
                # v2's AR token, Fast-dLLM v1 Dream's block start); rows whose opening is masked commit only it.
                opening = masked[:, :1]
                only_opening = torch.zeros_like(masked)
                only_opening[:, 0] = True
                commit = torch.where(opening, only_opening & masked, commit)
                tokens = tokens.clone()
                tokens[:, 0] = torch.where(opening[:, 0], propose(logits[:, :1], 0.0, None, self.mask_id)[:, 0], tokens[:, 0])
            canvas.x[:, start:end] = torch.where(commit, tokens, window)
            forwards += 1
            sampler_steps += 0 if forced else 1
            self.nfe += 1
            self.row_nfe[self.rows] += 1
            if self.trajectory is not None:
                self._record(feed, span, commit, tokens)
            more, any_opening_undecided = self._retire_and_continue(span)
            if not more:
                return

    def _select(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the sampler; keep only candidates; guarantee progress (the most confident one if none)."""
        chosen = self.sampler.select(view)
        commit, tokens = chosen if isinstance(chosen, tuple) else (chosen, view.x0)
        commit = commit.bool() & view.masked
        stalled = view.masked.any(-1) & ~commit.any(-1)
        best = top_k_mask(view.confidence, stalled.long())
        return commit | best, tokens

    # ------------------------------------------------------------------------------------------------
    def _predict(self, feed: Feed, span: tuple[int, int]) -> torch.Tensor:
        """Logits [B, W, V] scoring the span's columns: the logit shift is applied here, once.

        Logit-shift families score column i with the output at i-1. When a forward starts at the span
        itself (a cached step feeding only the block), the span's first column uses the output at its
        preceding column from the latest forward that covered it (kept in ``self.opening``).
        """
        start, end = span
        if not self.model.logit_shift:
            return self._forward(feed, (start - feed.start, end - feed.start))
        lo, hi = start - 1 - feed.start, end - 1 - feed.start
        if lo >= 0:
            raw = self._forward(feed, (lo, hi))
            self.opening = raw[:, 0]
            return raw
        raw = self._forward(feed, (0, max(hi, 1)))
        if self.opening is None:
            # Only canvas column 0 (always a prompt token, never a candidate) lacks a preceding output: like
            # the references, it reads its own output.
            return torch.cat([raw[:, :1], raw[:, :hi]], dim=1)
        return torch.cat([self.opening[:, None], raw[:, :hi]], dim=1)

    def _forward(self, feed: Feed, rows: tuple[int, int]) -> torch.Tensor:
        canvas, model = self.canvas, self.model
        a, b = feed.start, feed.end
        ids, positions = canvas.x[:, a:b], canvas.positions[:, a:b]
        k0, k1 = (a, b) if feed.write is None else (0, feed.write.key_len)
        keep = canvas.keep[:, k0:k1] if canvas.has_padding else None
        mask = attention_mask_for(model, positions, canvas.positions[:, k0:k1], keep)
        if self.guidance:
            unconditional = ids.masked_fill(self.prompt_columns[:, a:b], self.mask_id)
            ids, positions = torch.cat([ids, unconditional]), torch.cat([positions, positions])
            mask = None if mask is None else torch.cat([mask, mask])
        kv = self.cache.kv if feed.write is not None else None
        logits = model.network(ids, positions, mask, kv, feed.write, logits_rows=rows)
        if feed.after is not None:
            feed.after()
        return guided(logits, self.settings.cfg_scale) if self.guidance else logits

    # ------------------------------------------------------------------------------------------------
    def _retire_and_continue(self, span: tuple[int, int]) -> tuple[bool, bool]:
        """Retire settled rows; return whether any remaining row still has masks in ``span`` and whether
        any remaining row's span still opens with MASK (the one host read of the step)."""
        canvas = self.canvas
        x, cols = canvas.x, self.columns
        is_eos = torch.isin(x, self.eos) & self.generated
        first_eos = torch.where(is_eos, cols, canvas.width).min(-1).values
        undecided = (x == self.mask_id) & self.generated
        first_mask = torch.where(undecided, cols, canvas.width).min(-1).values
        settled = first_mask > first_eos
        settled |= ~undecided.any(-1)
        window = x[:, span[0]:span[1]] == self.mask_id
        status = torch.stack([settled.long(), window.any(-1).long(), window[:, 0].long(),
                              torch.minimum(first_mask, first_eos)]).cpu()
        settled_now, still_now, opening_now, prefix_end = status[0].bool(), status[1].bool(), status[2].bool(), status[3]
        if self.settings.stop_strings:
            settled_now |= self._stop_string_seen(prefix_end)
        if bool(settled_now.any()):
            self._retire(settled_now)
            still_now, opening_now = still_now[~settled_now], opening_now[~settled_now]
        return bool(still_now.any()), bool(opening_now.any())

    def _stop_string_seen(self, prefix_end: torch.Tensor) -> torch.Tensor:
        """Rows whose committed prefix (before any MASK or EOS) contains a stop string (checked on growth)."""
        seen = torch.zeros(prefix_end.shape[0], dtype=torch.bool)
        grown = (prefix_end > self.checked_prefix[self.rows]).nonzero().flatten().tolist()
        if not grown:
            return seen
        starts = self.canvas.gen_start.cpu()
        x = self.canvas.x.cpu() if self.canvas.x.device.type != "cpu" else self.canvas.x
        for r in grown:
            text = self.model.tokenizer.decode(x[r, int(starts[r]):int(prefix_end[r])].tolist(), skip_special_tokens=False)
            seen[r] = any(stop in text for stop in self.settings.stop_strings)
        self.checked_prefix[self.rows] = torch.maximum(self.checked_prefix[self.rows], prefix_end)
        return seen

    def _retire(self, settled: torch.Tensor) -> None:
        canvas = self.canvas
        self.final[self.rows[settled]] = canvas.x[settled.to(canvas.x.device)]
        keep = (~settled).nonzero().flatten()
        self.rows = self.rows[keep]
        if keep.numel() == 0:
            return
        device_keep = keep.to(canvas.x.device)
        canvas.select_rows(device_keep)
        if self.opening is not None:
            self.opening = self.opening[device_keep]
        self.span_masked = self.span_masked[device_keep]
        rows = torch.cat([device_keep, device_keep + settled.shape[0]]) if self.guidance else device_keep
        self.cache.select_rows(rows)
        self._refresh_row_geometry()

    def _refresh_row_geometry(self) -> None:
        canvas = self.canvas
        self.columns = torch.arange(canvas.width, device=canvas.x.device)
        self.generated = canvas.generated_region()
        self.prompt_columns = canvas.keep & (self.columns < canvas.gen_start[:, None])

    # ------------------------------------------------------------------------------------------------
    def _record(self, feed: Feed, span, commit: torch.Tensor, tokens: torch.Tensor) -> None:
        batch = self.final.shape[0]
        commits: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
        pad = self.canvas.pad.tolist()
        for r, c in commit.nonzero().tolist():
            row = int(self.rows[r])
            commits[row].append((span[0] + c - pad[r], int(tokens[r, c])))
        self.trajectory.steps.append(TrajectoryStep(feed=(feed.start, feed.end - feed.start), span=span, commits=commits))

    def _row_sequences(self, x: torch.Tensor, pad: torch.Tensor) -> list[list[int]]:
        return [row[int(p):].tolist() for row, p in zip(x.cpu(), pad.cpu())]
