"""``dllm eval``: every (sampler, cache) combination through lm-eval, one table, resumable.

Each finished combination is written at once (temp file, then rename) as
``<sampler spec>__<cache spec>__<digest>.json``, where the digest is taken over every setting that decides
the result (model and checkpoint files, tasks, limit, sampler and cache options, model args, batch size,
few-shot, chat template, dllm version); the settings themselves are inside. A rerun with identical
settings loads the file instead of recomputing (an interrupted sweep loses at most the combination in
flight); a run with other settings writes beside it. A finished result is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import registry
from .settings import DECODE_KEYS, LIKELIHOOD_KEYS, LOAD_KEYS, modifier_option_names

SPEC_HELP = "name[:key=value[:key=value...]], comma-separated, e.g. static,threshold:threshold=0.9"
SPEC_DECODE_KEYS = tuple(k for k in DECODE_KEYS if k not in ("sampler", "cache"))
DLLM_KEYS = LOAD_KEYS + DECODE_KEYS + LIKELIHOOD_KEYS


@dataclass(frozen=True)
class SamplerSpec:
    """One ``--samplers`` entry: a sampler name and its options (values as the option types make them)."""

    name: str
    options: tuple[tuple[str, object], ...] = ()
    text: str = ""

    @property
    def slug(self) -> str:
        return _slug(self.name, self.options)


@dataclass(frozen=True)
class CacheSpec:
    """One ``--caches`` entry (``dual``, ``dual:refresh_every=2``)."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def text(self) -> str:
        return spec_text(self.name, self.options)

    @property
    def slug(self) -> str:
        return _slug(self.name, self.options)


def spec_text(name: str, options) -> str:
    return ":".join([name] + [f"{k}={v}" for k, v in options])


def _slug(name: str, options) -> str:
    parts = [name] + [f"{k}-{v}" for k, v in options]
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", "_".join(parts))


def _entry(entry: str, flag: str) -> tuple[str, list[tuple[str, object]]]:
    return registry.parse_spec(entry, flag, example="static,threshold:threshold=0.9" if flag == "--samplers"
                               else "none,dual:refresh_every=2")


def parse_samplers(text: str) -> list[SamplerSpec]:
    """Parse ``--samplers``, sweeps included (``threshold:threshold=0.5..0.95/0.05``, ``localleap:tau=0.6,0.7``);
    a malformed entry or range, unknown sampler or option, or a value of the wrong type fails in one line.
    Besides the sampler's own options an entry may set decoding args (``static:steps=24``)."""
    from .ranges import expand_samplers, point_text

    return [SamplerSpec(name, tuple(options.items()), point_text(name, options))
            for name, options in expand_samplers(text)]


def parse_caches(text: str | None) -> list[CacheSpec | None]:
    """Parse ``--caches`` (None: the family's default cache); entries take options, ``dual:refresh_every=2``."""
    from dllm import caches  # noqa: F401  (fills the cache registry)

    if text is None:
        return [None]
    specs = []
    for entry in _split(text, "--caches"):
        name, options = _entry(entry, "--caches")
        typed = registry.check_options("cache", name, dict(options), where=" in --caches")
        specs.append(CacheSpec(name, tuple(typed.items())))
    return specs


def parse_tasks(text: str, manager) -> list[str]:
    """Task names checked against lm-eval's index (the embedded suite included)."""
    tasks = _split(text, "--tasks")
    for task in tasks:
        if task not in manager.all_tasks:
            embedded = ", ".join(t for t in manager.all_tasks if t.startswith("dllm_"))
            raise ValueError(f"unknown task '{task}'{registry.did_you_mean(task, manager.all_tasks)}; "
                             f"the embedded tasks are: {embedded}")
    return tasks


def _split(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise ValueError(f"{flag} '{text}' has an empty entry: give a comma-separated list without blanks")
    return items


# --------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """What ``dllm eval`` runs; ``model_args`` are extra ``dllm`` options shared by every combination (a
    sampler or cache option among them goes to the combinations whose sampler / cache takes it)."""

    model: str
    tasks: list[str]
    samplers: list[SamplerSpec]
    caches: list[CacheSpec | None]
    output: Path
    limit: float | None = None
    batch_size: int = 32
    model_args: dict = field(default_factory=dict)
    log_samples: bool = False
    apply_chat_template: bool = False
    num_fewshot: int | None = None
    checkpoint: dict = field(default_factory=dict)  # filled once the model is loaded: what was evaluated
    files: list = field(default_factory=list)  # filled by ``run``: the results file of every combination

    def effective(self, spec: SamplerSpec, cache: CacheSpec) -> tuple[dict, dict, dict]:
        """One combination's (sampler options, cache options, other dllm model args): the spec's own options
        first, then the shared ones (``-o``, ``--threshold``, ``--steps`` ...) that this sampler / cache takes."""
        from dllm import caches, samplers

        own_sampler, own_cache = samplers.option_names(spec.name), caches.option_names(cache.name)
        own_modifiers = self.modifier_options(spec)
        sampler_options, cache_options = dict(spec.options), dict(cache.options)
        other = {}
        for key, value in self.model_args.items():
            if key in sampler_options or key in cache_options:
                continue  # the entry's own value wins
            if key in own_modifiers:  # as dllm.generate routes them: a modifier's options before the sampler's
                other[key] = value
            elif key in own_sampler:
                sampler_options[key] = value
            elif key in own_cache:
                cache_options[key] = value
            elif key in DLLM_KEYS:
                other[key] = value
        return sampler_options, cache_options, other

    def modifier_options(self, spec: SamplerSpec) -> set[str]:
        """The option names of the modifiers a combination runs (the entry's ``modifiers=``, else ``-o``'s)."""
        options = dict(spec.options)
        return modifier_option_names(options["modifiers"] if "modifiers" in options
                                     else self.model_args.get("modifiers"))

    def combination_args(self, spec: SamplerSpec, cache: CacheSpec) -> dict:
        """The dllm model args of one combination (without ``pretrained``)."""
        sampler_options, cache_options, other = self.effective(spec, cache)
        return {**other, **cache_options, **sampler_options, "sampler": spec.name, "cache": cache.name}

    def labels(self, spec: SamplerSpec, cache: CacheSpec) -> tuple[str, str]:
        """The table's sampler and cache columns: the entries as typed plus the shared options they take."""
        sampler_options, cache_options, _ = self.effective(spec, cache)
        extra = [(k, v) for k, v in sampler_options.items() if k not in dict(spec.options)]
        return spec.text + "".join(f":{k}={v}" for k, v in extra), spec_text(cache.name, cache_options.items())

    def run_key(self, spec: SamplerSpec, cache: CacheSpec) -> dict:
        """Everything that determines a combination's result: a saved file counts only if this matches."""
        import dllm

        sampler_options, cache_options, other = self.effective(spec, cache)
        key = {"model": self.model, "tasks": self.tasks, "limit": self.limit, "sampler": spec.name,
               "sampler_options": sampler_options, "cache": cache.name, "cache_options": cache_options,
               "model_args": other, "batch_size": self.batch_size, "apply_chat_template": self.apply_chat_template,
               "num_fewshot": self.num_fewshot, "checkpoint": self.checkpoint, "dllm": dllm.__version__}
        return json.loads(json.dumps(key, default=str))

    def path(self, spec: SamplerSpec, cache: CacheSpec) -> Path:
        """``<sampler>__<cache>__<digest of run_key>.json``: readable, and distinct for distinct settings."""
        sampler_options, cache_options, _ = self.effective(spec, cache)
        digest = hashlib.sha256(json.dumps(self.run_key(spec, cache), sort_keys=True).encode()).hexdigest()[:10]
        return self.output / f"{_slug(spec.name, sampler_options.items())}__{_slug(cache.name, cache_options.items())}__{digest}.json"


def check_output(output: Path) -> None:
    """``--output`` must be a folder this process can create and write: checked before anything loads."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file: give a folder for the results")
    ancestor = output
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--output {output} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output} is not writable ({ancestor} does not allow writing): pick another folder")


def _prepare_output(output: Path) -> None:
    """Create the results folder and prove it takes a file, removing what it created if not."""
    created = [p for p in [output, *output.parents] if not p.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".dllm-write-check.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        for path in created:
            try:
                path.rmdir()
            except OSError:
                pass
        raise ValueError(f"--output {output} is not writable: {exc.strerror or exc}") from None


def run(sweep: Sweep, dtype=None, device=None, progress: bool = True, out=print) -> list[dict]:
    """Run the missing combinations, print the table, return its rows. Every check (tasks, caches, model
    args, the output folder) runs before the first combination; the output folder is created only then."""
    import dllm

    from . import check_num_fewshot, quiet_lm_eval, task_manager
    from ..cli import Interrupted

    check_output(sweep.output)
    manager = task_manager(include_defaults=False)  # the embedded suite alone indexes in milliseconds
    if any(task not in manager.all_tasks for task in sweep.tasks):
        manager = task_manager()
    parse_tasks(",".join(sweep.tasks), manager)
    check_num_fewshot(manager, sweep.tasks, sweep.num_fewshot)
    model = dllm.load(sweep.model, dtype=dtype, device=device)
    sweep.checkpoint = fingerprint(model)
    default = "block" if model.attention == "block_causal" else "none"
    caches = [cache or CacheSpec(default) for cache in sweep.caches]
    for cache in dict.fromkeys(caches):
        dllm.caches.build(cache.name, model.attention, model.family, dict(cache.options))  # must fit: fail now
    combos = list(dict.fromkeys((spec, cache) for spec in sweep.samplers for cache in caches))
    results = {}
    todo = []
    for spec, cache in combos:
        saved = _load_finished(sweep.path(spec, cache), sweep.run_key(spec, cache))
        if saved is not None:
            results[(spec, cache)] = saved
        else:
            todo.append((spec, cache))
    _check_shared(sweep, combos)
    sweep.files = [sweep.path(spec, cache) for spec, cache in combos]
    out(f"plan: {len(combos)} combination(s) ({len(sweep.samplers)} sampler point(s) x {len(caches)} cache(s)); "
        f"{len(combos) - len(todo)} reuse finished results, {len(todo)} to run")
    for spec, cache in todo:
        out(f"  to run: {' / '.join(sweep.labels(spec, cache))}")
    models = {combo: _lm(sweep, model, *combo, progress=progress) for combo in todo}  # bad settings fail now
    _prepare_output(sweep.output)
    bar = _bar(len(combos), len(combos) - len(todo), progress)
    try:
        with quiet_lm_eval(progress):
            for spec, cache in todo:
                bar.set_postfix_str(" / ".join(sweep.labels(spec, cache)))
                results[(spec, cache)] = _run_one(sweep, models[(spec, cache)], manager, spec, cache)
                bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        kept = len(results)
        raise Interrupted(f"interrupted: {kept} of {len(combos)} combination(s) finished and kept in {sweep.output} "
                          f"(rerun the same command to resume; the one in flight is lost)") from None
    bar.close()
    rows = [row for spec, cache in combos for row in table_rows(results[(spec, cache)], *sweep.labels(spec, cache))]
    text = markdown(rows)
    (sweep.output / "table.md").write_text(text + "\n")
    out(text)
    out(f"\nresults: {sweep.output}")
    return rows


def _check_shared(sweep: Sweep, combos) -> None:
    """A shared option that no combination takes is a typo, not something to drop silently."""
    from dllm import caches, samplers
    from dllm import modifiers as dllm_modifiers

    known = set(DLLM_KEYS)
    for spec, cache in combos:
        own_sampler, own_cache = samplers.option_names(spec.name), caches.option_names(cache.name)
        known |= set(own_sampler) | set(own_cache) | sweep.modifier_options(spec)
        # a bad shared value is an error even where an entry's own value overrides it
        samplers.build(spec.name, {k: v for k, v in sweep.model_args.items() if k in own_sampler})
        registry.check_options("cache", cache.name, {k: v for k, v in sweep.model_args.items() if k in own_cache})
    for key in sweep.model_args:
        owners = [m for m in dllm_modifiers.available() if key in dllm_modifiers.option_names(m)]
        if key not in known and owners:
            raise ValueError(f"option '{key}' in -o belongs to modifier '{owners[0]}', which no combination of this "
                             f"sweep runs: add -o modifiers={owners[0]} (or modifiers={owners[0]} in a --samplers entry)")
        if key not in known:
            raise ValueError(f"unknown option '{key}' in -o{registry.did_you_mean(key, sorted(known))}: no sampler or "
                             f"cache of this sweep takes it, and it is not a dllm model arg ({', '.join(sorted(known))})")


def fingerprint(model) -> dict:
    """Which weights were evaluated, in what precision: a retrained or re-exported checkpoint, or another
    dtype/device, does not reuse old results."""
    from ..models.loader import weight_files

    weights = sorted(weight_files(model.path))
    files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]
    return {"path": str(model.path.resolve()), "files": files, "dtype": str(model.dtype), "device": str(model.device)}


def _lm(sweep: Sweep, model, spec: SamplerSpec, cache: CacheSpec, progress: bool = True):
    from .lm import DiffusionLM

    lm = DiffusionLM(pretrained=model, batch_size=sweep.batch_size, **sweep.combination_args(spec, cache))
    lm.progress = progress
    return lm


def _run_one(sweep: Sweep, lm, manager, spec: SamplerSpec, cache: CacheSpec) -> dict:
    import lm_eval

    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=sweep.tasks, task_manager=manager, limit=sweep.limit,
                                      batch_size=sweep.batch_size, log_samples=sweep.log_samples,
                                      apply_chat_template=sweep.apply_chat_template, num_fewshot=sweep.num_fewshot)
    samples = results.pop("samples", None)
    sampler_label, cache_label = sweep.labels(spec, cache)
    results["dllm_eval"] = {"run": sweep.run_key(spec, cache), "sampler_spec": spec.text, "sampler_label": sampler_label,
                            "cache_label": cache_label, "wall_seconds": time.perf_counter() - started}
    path = sweep.path(spec, cache)
    if samples is not None:
        _write_atomic(path.with_name(path.stem + ".samples.json"), samples)
    _write_atomic(path, results)  # last: its presence marks the combination finished
    return json.loads(json.dumps(results, default=str))


def _load_finished(path: Path, key: dict) -> dict | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("dllm_eval", {}).get("run") == key else None


def _write_atomic(path: Path, data) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False))
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def _bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="dllm eval", unit="combination", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
PRIMARY_METRICS = ("exact_match", "acc", "field_accuracy", "valid_json", "acc_norm")
#: columns shown after the speed columns when some row has them: (row key, header, digits)
EXTRA_COLUMNS = (("valid_json", "valid JSON", 3), ("schema_valid", "schema-valid", 3), ("accepted", "accepted", 2),
                 ("grammar_rejections", "rejections/sample", 2), ("stuck", "stuck", 0))


def table_rows(results: dict, spec: SamplerSpec | str, cache: str) -> list[dict]:
    """One row per task of a combination's results JSON: its main score and the speed columns (``spec``:
    a :class:`SamplerSpec` or the sampler column's text; ``cache``: the cache column's text)."""
    sampler = spec.text if isinstance(spec, SamplerSpec) else str(spec)
    speed = results.get("config", {}).get("dllm", {}).get("speed", {})
    rows = []
    for task, metrics in results.get("results", {}).items():
        metric, score = _primary(metrics)
        stats = speed.get(task, {})
        docs = results.get("n-samples", {}).get(task, {}).get("effective") or stats.get("samples") or 0
        forwards = stats.get("forwards", 0) + stats.get("ll_forwards", 0)
        seconds = stats.get("seconds", 0.0) + stats.get("ll_seconds", 0.0)
        rows.append({"task": task, "sampler": sampler, "cache": cache, "metric": metric, "score": score,
                     "nfe_per_sample": forwards / docs if docs else None,
                     "tpf": stats.get("tpf") if stats.get("tokens") else None,
                     "tokens_per_second": stats.get("tokens_per_second") if stats.get("tokens") else None,
                     "seconds": seconds, "samples": docs, **_method_columns(metrics, stats)})
    return rows


def _method_columns(metrics: dict, stats: dict) -> dict:
    """The extra columns of one task: the valid-JSON rate (the task's ``valid_json`` metric, else the share of
    outputs that parse under ``grammar=json`` / ``schema=``), the schema-valid rate, FreeDave's mean accepted
    draft length, grammar rejections per sample and stuck rows — each only where the run produced it."""
    values = {k.split(",")[0]: v for k, v in metrics.items() if "_stderr" not in k}
    out = {}
    valid = values.get("valid_json", stats.get("json_valid_rate"))
    for key, value in (("valid_json", valid), ("schema_valid", stats.get("schema_valid_rate")),
                       ("accepted", stats.get("accepted_mean")),
                       ("grammar_rejections", stats.get("grammar_rejections_per_sample")),
                       ("stuck", stats.get("stuck"))):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def _primary(metrics: dict) -> tuple[str, float | None]:
    values = {k.split(",")[0]: v for k, v in metrics.items()
              if "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name in PRIMARY_METRICS:
        if name in values:
            return name, values[name]
    return next(iter(values.items()), ("-", None))


def markdown(rows: list[dict]) -> str:
    extra = [column for column in EXTRA_COLUMNS if any(column[0] in r for r in rows)]
    header = "| task | sampler | cache | metric | score | NFE/sample | TPF | tokens/s | seconds |"
    header += "".join(f" {title} |" for _, title, _ in extra)
    lines = [header, "|---|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['sampler']} | {r['cache']} | {r['metric']} | {_num(r['score'], 3)} | "
                     f"{_num(r['nfe_per_sample'], 1)} | {_num(r['tpf'], 2)} | {_num(r['tokens_per_second'], 1)} | "
                     f"{_num(r['seconds'], 2)} |" + "".join(f" {_num(r.get(key), digits)} |" for key, _, digits in extra))
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
