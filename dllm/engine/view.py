"""What the plug-ins of one step see (:class:`StepView`) and what a sampler answers (:class:`Decision`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


class RowState:
    """Per-row state that survives steps and follows row retirement.

    Plug-ins keep tensors with the batch as their first dimension under a key of their own
    (``view.state["eoser"] = ...``); when rows finish, the engine drops their entries from every tensor, so
    index ``b`` always means active row ``b``. Non-tensor values are kept as they are (per-generation facts).
    """

    def __init__(self):
        self._data: dict[str, object] = {}

    def __getitem__(self, key: str):
        return self._data[key]

    def __setitem__(self, key: str, value) -> None:
        self._data[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default=None):
        return self._data.get(key, default)

    def select(self, rows: torch.Tensor) -> None:
        for key, value in self._data.items():
            if isinstance(value, torch.Tensor):
                self._data[key] = value[rows.to(value.device)]


@dataclass
class StepView:
    """One step of one decode span, for the active (unfinished) rows of the batch.

    Window tensors are [B, W] over the span's columns ``span[0]..span[1]-1``; positions that are not
    candidates (already decoded, prompt, padding, past the row's end) have ``masked`` False and ``confidence``
    -inf. Confidences are fp32; ``x0`` is the proposal (argmax, or the Gumbel-noised argmax when
    temperature > 0). ``confidence`` is the ranking the sampler uses: the raw confidence after the modifiers
    rescored it; ``raw_confidence`` is the model's own, before any modifier and before -inf masking.
    """

    logits: torch.Tensor  # [B, W, V] processed logits (after shift, guidance and logit processors)
    x0: torch.Tensor  # [B, W] proposed tokens
    confidence: torch.Tensor  # [B, W] fp32 ranking score, -inf where not a candidate
    masked: torch.Tensor  # [B, W] bool: candidate positions (MASK inside the span, before the row's end)
    span: tuple[int, int]  # canvas columns [start, end)
    step: int  # sampler steps already taken in this span (0 at the span's first sampler step)
    steps_per_span: int | None  # the ``steps`` budget of each decode span (block), when there is one
    canvas: torch.Tensor  # [B, T] current tokens (read-only)
    rows: torch.Tensor  # [B] index of each active row in the caller's batch
    generator: torch.Generator | None = None
    #: hypotheses [B, H, W] (, charge [B] bool) -> logits [B, H, W, V]: read-only, 1 NFE, charged to ``charge`` rows
    forward: Callable | None = None
    #: next_tokens [B, W] -> bool: whether the next step's forward for that span content may be replaced by
    #: handed-over logits (the cache's plan for it is ``ephemeral``); plans only, runs nothing
    can_hand_over: Callable | None = None
    mask_id: int | None = None
    span_masked: torch.Tensor | None = None  # [B] candidates in the span when the span started
    raw_confidence: torch.Tensor | None = None  # [B, W] fp32 model confidence of x0, every column
    eos_ids: torch.Tensor | None = None  # [E] stop token ids
    state: RowState = field(default_factory=RowState)
    span_index: int = 0  # which decode span of the canvas (0 = first)
    spans: tuple[tuple[int, int], ...] = ()  # every decode span of the canvas
    total_step: int = 0  # sampler steps already taken over the whole canvas
    gen_start: torch.Tensor | None = None  # [B] first generated column per row
    gen_length: int = 0
    end: torch.Tensor | None = None  # [B] one past the last column each row may still fill (per-row end)
    sampler: object = None  # the sampler of this generation (modifiers read its schedule via ``progress``)
    forwards: int = 0  # steps already run in this span (sampler steps plus forced ones such as an AR opening)
    generators: list | None = None  # one torch.Generator per active row (sampling / random choices)

    @property
    def masked_count(self) -> torch.Tensor:
        """[B] number of candidate positions per row."""
        return self.masked.sum(-1)

    @property
    def steps_per_block(self) -> int | None:
        """Deprecated name of ``steps_per_span`` (the budget is per decode span, which is a block unless the
        sampler lays out its own spans)."""
        return self.steps_per_span

    @property
    def steps_left(self) -> int | None:
        if self.steps_per_span is None:
            return None
        return self.steps_per_span - self.step

    @property
    def is_eos(self) -> torch.Tensor:
        """[B, W] bool: the proposal is a stop token."""
        if self.eos_ids is None or self.eos_ids.numel() == 0:
            return torch.zeros_like(self.masked)
        return torch.isin(self.x0, self.eos_ids)

    def uniform(self) -> torch.Tensor:
        """[B, W] uniform noise from each row's own generator (drawn only for rows with candidates, so a
        row's random stream advances as it would decoding alone)."""
        noise = torch.zeros(self.masked.shape, device=self.masked.device)
        active = self.masked.any(-1).tolist()
        for b, generator in enumerate(self.generators or ()):
            if active[b]:
                noise[b] = torch.rand(self.masked.shape[1], generator=generator, device=self.masked.device)
        return noise

    def columns(self) -> torch.Tensor:
        """[W] canvas column of each window position."""
        return torch.arange(self.span[0], self.span[1], device=self.x0.device)


@dataclass
class Decision:
    """A sampler's answer for one step.

    ``commit`` [B, W] bool: candidates to commit now; ``tokens`` [B, W]: what they become (default: the
    proposals). ``next_logits`` [B, W, V]: logits of the *next* step that the sampler already computed (e.g.
    draft-and-verify's verified forward) for the span contents ``next_tokens`` [B, W]; the engine uses them
    instead of running that forward (they are processed logits, as ``view.forward`` returns them: the engine
    applies only its bans to them) when what was finally committed (after every filter) equals
    ``next_tokens`` in every row and the cache says the forward would leave nothing behind
    (``Feed.ephemeral``); otherwise it runs the forward. ``end`` [B]: a new per-row end
    column (positions from it on are no longer candidates nor attended; they become EOS).
    ``counts_as_step``: False for a commit that is not a sampler step (the AR opening of a block).
    """

    commit: torch.Tensor
    tokens: torch.Tensor | None = None
    next_logits: torch.Tensor | None = None
    next_tokens: torch.Tensor | None = None
    end: torch.Tensor | None = None
    counts_as_step: bool = True
    counters: dict = field(default_factory=dict)  # method-specific statistics to add to Stats.counters

    @classmethod
    def of(cls, answer, view: StepView) -> "Decision":
        """Normalise what ``Sampler.select`` returned: a Decision, a bool mask, or ``(mask, tokens)``."""
        if isinstance(answer, Decision):
            decision = answer
        elif isinstance(answer, tuple):
            decision = Decision(answer[0], answer[1])
        else:
            decision = Decision(answer)
        if decision.tokens is None:
            decision.tokens = view.x0
        decision.commit = decision.commit.bool()
        return decision


def rank_order(confidence: torch.Tensor) -> torch.Tensor:
    """Column order by confidence descending, ties by position ascending (the documented tie rule)."""
    return torch.sort(confidence, dim=-1, descending=True, stable=True).indices


def top_k_mask(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool [B, W]: the ``k[b]`` highest-confidence finite entries of each row (tie rule as ``rank_order``)."""
    order = rank_order(confidence)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(confidence)
