"""Speed statistics per lm-eval task, merged across data-parallel ranks, and the versions that produced them.

Users cannot compare dLLM speed claims because nobody states what was counted (peers.md §3.4). The
``dllm`` model therefore accumulates, per task, the engine's own counters (NFE = batched network calls,
tokens = generated tokens before EOS/stop, TPF, seconds; method statistics where a method produces them:
FreeDave's mean accepted draft length, grammar rejections and stuck rows, JSON / schema-valid rates under
``grammar=json`` / ``schema=``) and hands them to lm-eval through
``LM.get_model_info()``, which lm-eval merges into the results JSON's ``config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TaskSpeed:
    """Counters of one task on one rank. ``forwards`` sums each sample's own forwards (its row NFE), so
    ``forwards / samples`` is what a sample costs alone; ``nfe`` counts batched calls."""

    samples: int = 0
    nfe: int = 0
    forwards: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ll_requests: int = 0
    ll_forwards: int = 0
    ll_seconds: float = 0.0
    # method statistics: FreeDave's accepted draft lengths (events, their sum), grammar filter rejections over
    # the rows it constrained, rows that ended "stuck", JSON outputs checked / parsed / valid for the schema
    accepted_events: int = 0
    accepted_tokens: int = 0
    grammar_rows: int = 0
    grammar_rejections: int = 0
    stuck: int = 0
    json_checked: int = 0
    json_valid: int = 0
    schema_checked: int = 0
    schema_valid: int = 0

    def add(self, other: "TaskSpeed") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> dict:
        """The numbers as reported: raw counters plus NFE per sample, TPF and tokens/s (only the parts of
        the task that ran: generation, likelihood or both)."""
        out: dict = {}
        if self.samples:
            out.update(samples=self.samples, nfe=self.nfe, forwards=self.forwards, tokens=self.tokens,
                       seconds=self.seconds, nfe_per_sample=self.forwards / self.samples,
                       tokens_per_sample=self.tokens / self.samples,
                       tpf=self.tokens / self.forwards if self.forwards else 0.0,
                       tokens_per_second=self.tokens / self.seconds if self.seconds > 0 else 0.0)
        if self.accepted_events:
            out.update(accepted_events=self.accepted_events, accepted_mean=self.accepted_tokens / self.accepted_events)
        if self.grammar_rows:
            out.update(grammar_rejections=self.grammar_rejections,
                       grammar_rejections_per_sample=self.grammar_rejections / self.grammar_rows)
        if self.grammar_rows or self.stuck:
            out.update(stuck=self.stuck, stuck_rate=self.stuck / self.samples if self.samples else 0.0)
        if self.json_checked:
            out.update(json_valid_rate=self.json_valid / self.json_checked)
        if self.schema_checked:
            out.update(schema_valid_rate=self.schema_valid / self.schema_checked)
        if self.ll_requests:
            out.update(ll_requests=self.ll_requests, ll_forwards=self.ll_forwards, ll_seconds=self.ll_seconds,
                       ll_forwards_per_request=self.ll_forwards / self.ll_requests)
        return out


class SpeedLog:
    """Per-task counters of this process plus, on rank 0 after a gather, those of every rank."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskSpeed] = {}
        self.ranks: dict[int, dict[str, dict]] | None = None

    def task(self, name: str | None) -> TaskSpeed:
        return self.tasks.setdefault(name or "unknown", TaskSpeed())

    def snapshot(self) -> dict[str, dict]:
        return {name: asdict(speed) for name, speed in self.tasks.items()}

    def merged(self) -> dict[str, dict]:
        """Per-task summaries over all ranks: counters summed, seconds = the slowest rank's (ranks run
        concurrently, so that is the wall time the task took)."""
        per_rank = self.ranks or {0: self.snapshot()}
        out: dict[str, dict] = {}
        for name in sorted({n for snap in per_rank.values() for n in snap}):
            total = TaskSpeed()
            slowest = slowest_ll = 0.0
            for snap in per_rank.values():
                if name in snap:
                    part = TaskSpeed(**snap[name])
                    total.add(part)
                    slowest, slowest_ll = max(slowest, part.seconds), max(slowest_ll, part.ll_seconds)
            total.seconds, total.ll_seconds = slowest, slowest_ll
            out[name] = total.summary()
        return out


def versions() -> dict:
    """Versions of dllm and the libraries that shape its numbers."""
    import importlib.metadata as metadata
    import platform

    import dllm

    found = {"dllm": dllm.__version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "lm_eval", "accelerate", "tokenizers"):
        try:
            found[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[package] = None
    return found
