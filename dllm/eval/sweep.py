"""``dllm eval``: every (sampler, cache) combination through lm-eval, one table, resumable.

Each finished combination is written at once (temp file, then rename) as ``<sampler>__<cache>.json`` with
the run's settings inside; a rerun with the same settings loads it instead of recomputing, so an
interrupted sweep loses at most the combination in flight.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .settings import DECODE_KEYS, coerce

SPEC_HELP = "name[:key=value[:key=value...]], comma-separated, e.g. static,threshold:threshold=0.9"
SPEC_DECODE_KEYS = tuple(k for k in DECODE_KEYS if k not in ("sampler", "cache"))
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class SamplerSpec:
    """One ``--samplers`` entry: a sampler name and its options, as typed."""

    name: str
    options: tuple[tuple[str, object], ...] = ()
    text: str = ""

    @property
    def slug(self) -> str:
        parts = [self.name] + [f"{k}-{v}" for k, v in self.options]
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", "_".join(parts))


def parse_samplers(text: str) -> list[SamplerSpec]:
    """Parse ``--samplers``; a malformed entry, unknown sampler or option fails in one line. Besides the
    sampler's own options an entry may set decoding args (``static:steps=24`` = 2 tokens per step on a
    48-token canvas)."""
    from dllm import samplers

    specs = []
    for entry in _split(text, "--samplers"):
        name, *pairs = entry.split(":")
        if not _NAME.match(name):
            raise ValueError(f"malformed --samplers entry '{entry}': expected {SPEC_HELP}")
        options = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not _NAME.match(key) or value == "":
                raise ValueError(f"malformed --samplers entry '{entry}' at '{pair}': expected {SPEC_HELP}")
            options.append((key, coerce(value)))
        own = {k: v for k, v in options if k not in SPEC_DECODE_KEYS}
        samplers.build(name, own)  # unknown sampler / option / bad value: one-line ValueError
        specs.append(SamplerSpec(name, tuple(options), entry))
    return specs


def parse_caches(text: str | None) -> list[str | None]:
    """Parse ``--caches`` (None: the family's default cache)."""
    from dllm import caches

    if text is None:
        return [None]
    names = _split(text, "--caches")
    for name in names:
        if name not in caches.available():
            hint = difflib.get_close_matches(name, caches.available(), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ValueError(f"unknown cache '{name}' in --caches{suggestion}; available: {', '.join(caches.available())}")
    return names


def parse_tasks(text: str, manager) -> list[str]:
    """Task names checked against lm-eval's index (the embedded suite included)."""
    tasks = _split(text, "--tasks")
    for task in tasks:
        if task not in manager.all_tasks:
            hint = difflib.get_close_matches(task, manager.all_tasks, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ValueError(f"unknown task '{task}'{suggestion}; the embedded tasks are: "
                             f"{', '.join(t for t in manager.all_tasks if t.startswith('dllm_'))}")
    return tasks


def _split(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise ValueError(f"{flag} '{text}' has an empty entry: give a comma-separated list without blanks")
    return items


# --------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """What ``dllm eval`` runs; ``model_args`` are extra ``dllm`` model args shared by every combination."""

    model: str
    tasks: list[str]
    samplers: list[SamplerSpec]
    caches: list[str | None]
    output: Path
    limit: float | None = None
    batch_size: int = 32
    model_args: dict = field(default_factory=dict)
    log_samples: bool = False
    apply_chat_template: bool = False
    num_fewshot: int | None = None
    checkpoint: dict = field(default_factory=dict)  # filled once the model is loaded: what was evaluated

    def run_key(self, spec: SamplerSpec, cache: str) -> dict:
        """Everything that determines a combination's result: a saved file counts only if this matches."""
        import dllm

        return {"model": self.model, "tasks": self.tasks, "limit": self.limit, "sampler": spec.name,
                "sampler_options": dict(spec.options), "cache": cache, "model_args": self.model_args,
                "batch_size": self.batch_size, "apply_chat_template": self.apply_chat_template,
                "num_fewshot": self.num_fewshot, "checkpoint": self.checkpoint, "dllm": dllm.__version__}


def run(sweep: Sweep, dtype=None, device=None, progress: bool = True, out=print) -> list[dict]:
    """Run the missing combinations, print the table, return its rows."""
    import dllm

    from . import task_manager

    manager = task_manager(include_defaults=False)  # the embedded suite alone indexes in milliseconds
    if any(task not in manager.all_tasks for task in sweep.tasks):
        manager = task_manager()
    parse_tasks(",".join(sweep.tasks), manager)
    model = dllm.load(sweep.model, dtype=dtype, device=device)
    sweep.checkpoint = fingerprint(model)
    caches = [cache or ("block" if model.attention == "block_causal" else "none") for cache in sweep.caches]
    for cache in dict.fromkeys(caches):
        dllm.caches.build(cache, model.attention, model.family, {})  # a cache that does not fit: fail now
    sweep.output.mkdir(parents=True, exist_ok=True)
    combos = [(spec, cache) for spec in sweep.samplers for cache in caches]
    results = {}
    todo = []
    for spec, cache in combos:
        saved = _load_finished(_path(sweep, spec, cache), sweep.run_key(spec, cache))
        if saved is not None:
            results[(spec, cache)] = saved
        else:
            todo.append((spec, cache))
    models = {combo: _lm(sweep, model, *combo) for combo in todo}  # bad settings fail before any run
    bar = _bar(len(combos), len(combos) - len(todo), progress)
    for spec, cache in todo:
        bar.set_postfix_str(f"{spec.text} / {cache}")
        results[(spec, cache)] = _run_one(sweep, models[(spec, cache)], manager, spec, cache)
        bar.update(1)
    bar.close()
    rows = [row for spec, cache in combos for row in table_rows(results[(spec, cache)], spec, cache)]
    text = markdown(rows)
    (sweep.output / "table.md").write_text(text + "\n")
    out(text)
    out(f"\nresults: {sweep.output}")
    return rows


def fingerprint(model) -> dict:
    """Which weights were evaluated, in what precision: a retrained or re-exported checkpoint, or another
    dtype/device, does not reuse old results."""
    weights = sorted(model.path.glob("*.safetensors"))
    files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]
    return {"path": str(model.path.resolve()), "files": files, "dtype": str(model.dtype), "device": str(model.device)}


def _lm(sweep: Sweep, model, spec: SamplerSpec, cache: str):
    from .lm import DiffusionLM

    args = {**sweep.model_args, **dict(spec.options), "sampler": spec.name, "cache": cache}
    return DiffusionLM(pretrained=model, batch_size=sweep.batch_size, **args)


def _run_one(sweep: Sweep, lm, manager, spec: SamplerSpec, cache: str) -> dict:
    import lm_eval

    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=sweep.tasks, task_manager=manager, limit=sweep.limit,
                                      batch_size=sweep.batch_size, log_samples=sweep.log_samples,
                                      apply_chat_template=sweep.apply_chat_template, num_fewshot=sweep.num_fewshot)
    samples = results.pop("samples", None)
    results["dllm_eval"] = {"run": sweep.run_key(spec, cache), "sampler_spec": spec.text,
                            "wall_seconds": time.perf_counter() - started}
    path = _path(sweep, spec, cache)
    if samples is not None:
        _write_atomic(path.with_name(path.stem + ".samples.json"), samples)
    _write_atomic(path, results)  # last: its presence marks the combination finished
    return json.loads(json.dumps(results, default=str))


def _path(sweep: Sweep, spec: SamplerSpec, cache: str) -> Path:
    return sweep.output / f"{spec.slug}__{cache}.json"


def _load_finished(path: Path, key: dict) -> dict | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("dllm_eval", {}).get("run") == json.loads(json.dumps(key, default=str)) else None


def _write_atomic(path: Path, data) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    os.replace(temp, path)


def _bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="dllm eval", unit="combination", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
PRIMARY_METRICS = ("exact_match", "acc", "field_accuracy", "valid_json", "acc_norm")


def table_rows(results: dict, spec: SamplerSpec, cache: str) -> list[dict]:
    """One row per task of a combination's results JSON: its main score and the speed columns."""
    speed = results.get("config", {}).get("dllm", {}).get("speed", {})
    rows = []
    for task, metrics in results.get("results", {}).items():
        metric, score = _primary(metrics)
        stats = speed.get(task, {})
        docs = results.get("n-samples", {}).get(task, {}).get("effective") or stats.get("samples") or 0
        forwards = stats.get("forwards", 0) + stats.get("ll_forwards", 0)
        seconds = stats.get("seconds", 0.0) + stats.get("ll_seconds", 0.0)
        rows.append({"task": task, "sampler": spec.text, "cache": cache, "metric": metric, "score": score,
                     "nfe_per_sample": forwards / docs if docs else None,
                     "tpf": stats.get("tpf") if stats.get("tokens") else None,
                     "tokens_per_second": stats.get("tokens_per_second") if stats.get("tokens") else None,
                     "seconds": seconds, "samples": docs})
    return rows


def _primary(metrics: dict) -> tuple[str, float | None]:
    values = {k.split(",")[0]: v for k, v in metrics.items()
              if "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name in PRIMARY_METRICS:
        if name in values:
            return name, values[name]
    return next(iter(values.items()), ("-", None))


def markdown(rows: list[dict]) -> str:
    header = "| task | sampler | cache | metric | score | NFE/sample | TPF | tokens/s | seconds |"
    lines = [header, "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['sampler']} | {r['cache']} | {r['metric']} | {_num(r['score'], 3)} | "
                     f"{_num(r['nfe_per_sample'], 1)} | {_num(r['tpf'], 2)} | {_num(r['tokens_per_second'], 1)} | "
                     f"{_num(r['seconds'], 2)} |")
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
