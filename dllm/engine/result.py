"""What ``dllm.generate`` returns: texts, token ids, statistics and (optionally) the trajectory."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    """Speed statistics. NFE counts network calls (a batched call is one; cache refreshes count).

    ``tokens``: generated tokens before the first EOS (prompt, padding and EOS excluded), summed over rows.
    ``row_nfe[r]``: the forwards in which row r had candidates — what the row would cost decoding alone
    (a forward it only waited through in lockstep is not charged), so per-row NFE and TPF do not depend on
    the batch. ``tpf``: tokens per forward per sequence = sum(row tokens) / sum(row NFE) (equals tokens / NFE
    for one prompt). ``tokens_per_second``: tokens / wall seconds.
    """

    nfe: int = 0
    tokens: int = 0
    seconds: float = 0.0
    row_nfe: list[int] = field(default_factory=list)
    row_tokens: list[int] = field(default_factory=list)
    sampler: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    modifiers: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)  # method-specific per-event lists (e.g. accepted draft lengths)
    status: list = field(default_factory=list)  # per row: "eos", "stop", "length" or "stuck"
    reasons: dict = field(default_factory=dict)  # row -> one-line reason, for rows that did not finish normally
    witnesses: dict = field(default_factory=dict)  # row -> a completion a grammar accepts (rows that ended stuck)

    @property
    def tpf(self) -> float:
        forwards = sum(self.row_nfe)
        return self.tokens / forwards if forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def counter_summaries(self) -> dict:
        """Per numeric counter (e.g. FreeDave's ``accepted`` draft lengths): events, mean and histogram."""
        out = {}
        for key, values in self.counters.items():
            if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                histogram: dict = {}
                for v in sorted(values):
                    histogram[v] = histogram.get(v, 0) + 1
                out[key] = {"count": len(values), "mean": sum(values) / len(values), "histogram": histogram}
        return out

    def summary(self) -> str:
        return (f"{self.tokens} tokens, NFE {self.nfe}, TPF {self.tpf:.2f}, {self.seconds:.2f}s, "
                f"{self.tokens_per_second:.1f} tok/s, sampler {self.sampler.get('sampler')}, cache {self.cache.get('cache')}")

    def as_dict(self) -> dict:
        return {"nfe": self.nfe, "tokens": self.tokens, "tpf": self.tpf, "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second, "row_nfe": self.row_nfe, "row_tokens": self.row_tokens,
                "sampler": self.sampler, "cache": self.cache, "modifiers": self.modifiers,
                "counters": self.counters, "counter_summaries": self.counter_summaries, "status": self.status, "reasons": self.reasons,
                "witnesses": self.witnesses}


@dataclass
class TrajectoryStep:
    """One forward: the columns fed ([start, length] in canvas columns, as the goldens' ``forwards``) and,
    per row, the ``(position, token)`` pairs it committed (positions index the row's own sequence)."""

    feed: tuple[int, int]
    span: tuple[int, int]
    commits: list[list[tuple[int, int]]]
    #: per caller row (None when the row had retired or sat out the forward): the model's raw confidence of its
    #: proposal at every span column this step, before modifiers (learned filters train on these); decoded
    #: columns included
    confidences: list[list[float] | None] | None = None
    rows: list[int] | None = None  # caller rows still decoding (the batch the engine holds)
    #: caller rows the network saw, when some of ``rows`` sat the forward out (nothing left in the span,
    #: ``Engine._working_rows``); None: all of ``rows``
    fed: list[int] | None = None


@dataclass
class Trajectory:
    """Frame/delta record: the first frame (each row's prompt + MASK region) and one delta per forward.

    ``pads[r]`` is row r's left padding: canvas column c is position c - pads[r] of row r.
    """

    initial: list[list[int]]
    pads: list[int]
    steps: list[TrajectoryStep] = field(default_factory=list)

    def frame(self, step: int) -> list[list[int]]:
        """Each row's sequence after the first ``step`` forwards."""
        rows = [list(r) for r in self.initial]
        for record in self.steps[:step]:
            for row, commits in enumerate(record.commits):
                for position, token in commits:
                    rows[row][position] = token
        return rows


@dataclass
class Generation:
    """``texts`` are cut at the first EOS and the first stop string; ``sequences`` are the generated ids
    before the first EOS; ``canvases`` are each row's full prompt + generated ids as decoded (nothing cut,
    MASK left where decoding stopped early)."""

    texts: list[str]
    sequences: list[list[int]]
    canvases: list[list[int]]
    prompt_lengths: list[int]
    stats: Stats
    trajectory: Trajectory | None = None

    @property
    def status(self) -> list[str]:
        """Per row: ``"eos"``, ``"stop"`` (a stop string), ``"length"`` (canvas full) or ``"stuck"`` (a filter
        left no allowed token; ``stats.reasons[row]`` says why)."""
        return self.stats.status
