"""``dllm report RUN_DIR``: which sampler wins — accuracy against parallelism, AUP and the Pareto front.

Reads the lm-eval results JSONs of a run directory (``dllm eval`` writes one per sampler x cache point; a
``dllm lm-eval`` output folder works too: everything is read from lm-eval's own file, where dllm's settings
and speed block live under ``config.dllm``) and writes, into the report folder:

* per task a PNG: accuracy against TPF (left) and against tokens/s (right), one line per sampler family, the
  EGP oracle (sampler ``oracle``) as the upper bound, static one-token-per-step as the dotted reference, the
  Pareto front of each panel ringed;
* ``report.md``: per task the figure, the AUP table per sampler family and the table of every point;
* ``report.html``: the same as one self-contained page (figures embedded as base64 PNGs).

A *sampler family* is one curve: points sharing the sampler and every setting that is not a numeric knob.
Numeric sampler options and ``steps`` are the knobs swept along the curve (``threshold``, ``tau``, …);
boolean or text options (``strict=true``), the cache, ``gen_length`` and ``block_length`` give separate
families. Accuracy is the task's primary lm-eval metric in percent. AUP uses the task's best accuracy over
all non-oracle points as ``y_max`` (see :mod:`dllm.eval.aup`); the oracle is an upper bound, not a
contender: it is drawn and scored but takes no part in ``y_max`` or the Pareto fronts.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .aup import DROP, aup_detail, pareto_front

FIG_SIZE = (12.0, 4.8)  # inches; at DPI 100 every PNG is 1200 x 480 pixels
DPI = 100
ORACLE = "oracle"
REFERENCE_LABEL = "static, 1 token/step (reference)"
_KNOB_SETTINGS = ("steps",)
_NOT_FAMILY = ("sampler", "sampler_options", "steps", "mc_num", "mc_batch_size", "greedy_check", "max_length",
               "seed", "cache_options")


@dataclass
class Point:
    """One (settings, task) result."""

    file: Path
    task: str
    sampler: str
    knobs: dict
    family_settings: dict
    metric: str
    accuracy: float | None  # percent
    tpf: float | None
    tokens_per_second: float | None
    nfe_per_sample: float | None
    docs: int
    model: str
    family: str = ""
    reference: bool = False
    front_tpf: bool = False
    front_tps: bool = False

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in self.knobs.items()) or "default"

    @property
    def oracle(self) -> bool:
        return self.sampler == ORACLE


@dataclass
class FamilyScore:
    family: str
    sampler: str
    points: int
    best: float | None
    tpf_range: tuple[float, float] | None
    aup: float | None
    dropped: int
    oracle: bool


@dataclass
class TaskReport:
    task: str
    metric: str
    points: list[Point]
    scores: list[FamilyScore]
    y_max: float | None
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
def check_output_dir(out_dir: Path | str) -> Path:
    """The report folder, refused in one line when it is a file (call before a sweep starts)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder '{out}' is an existing file: give a directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"report folder '{out}' lies under the file '{parent}': give a directory")
    return out


def load_points(run_dir: Path | str, files=None) -> list[Point]:
    """Every (file, task) point of a run directory (or of ``files``), checked to come from one model."""
    run = Path(run_dir)
    if files is None:
        if not run.is_dir():
            raise ValueError(f"run directory '{run}' does not exist" if not run.exists()
                             else f"'{run}' is a file, not a run directory")
        files = sorted(p for p in run.rglob("*.json") if _is_result_name(p.relative_to(run)))
    points: list[Point] = []
    model_of: dict[str, Path] = {}
    for path in map(Path, files):
        results = _read(path)
        if results is None:
            continue
        dllm_block = results.get("config", {}).get("dllm")
        if not isinstance(dllm_block, dict) or "settings" not in dllm_block:
            raise ValueError(f"'{path}' is an lm-eval results file without dllm's block (config.dllm): "
                             f"not written by the dllm model")
        model = str(dllm_block.get("model", {}).get("path") or results.get("dllm_eval", {}).get("run", {}).get("model"))
        model_of.setdefault(model, path)
        if len(model_of) > 1:
            (a, fa), (b, fb) = list(model_of.items())[:2]
            raise ValueError(f"'{run}' mixes models: {a} ('{_relative(fa, run)}') and {b} ('{_relative(fb, run)}'); "
                             f"report one model's run at a time")
        points.extend(_points_of(path, results, model))
    if not points:
        raise ValueError(f"no lm-eval results JSONs with scores in '{run}': run `dllm eval --output {run}` first")
    return points


def build(points: list[Point]) -> list[TaskReport]:
    """Group points per task into families; mark references and Pareto fronts; score AUP."""
    reports = []
    for task in dict.fromkeys(p.task for p in points):
        mine = [p for p in points if p.task == task]
        _name_families(mine)
        contenders = [p for p in mine if not p.oracle and p.accuracy is not None]
        y_max = max((p.accuracy for p in contenders), default=None)
        for speed, front in (("tpf", "front_tpf"), ("tokens_per_second", "front_tps")):
            timed = [p for p in contenders if getattr(p, speed)]
            for p, flag in zip(timed, pareto_front([(getattr(p, speed), p.accuracy) for p in timed])):
                setattr(p, front, flag)
        _mark_references(mine)
        scores = [_score(family, [p for p in mine if p.family == family], y_max)
                  for family in dict.fromkeys(p.family for p in mine)]
        scores.sort(key=lambda s: (s.oracle, -(s.aup if s.aup is not None else -1.0), s.family))
        mine.sort(key=lambda p: (p.oracle, p.family, p.tpf if p.tpf is not None else 0.0, p.label))
        report = TaskReport(task, mine[0].metric, mine, scores, y_max)
        if len({p.docs for p in mine}) > 1:
            report.notes.append("points were scored on different numbers of documents "
                                f"({', '.join(str(d) for d in sorted({p.docs for p in mine}))}): compare with care")
        unscored = [p for p in mine if not p.tpf]
        if unscored:
            report.notes.append(f"{len(unscored)} point(s) have no generation speed (TPF) and are not drawn")
        reports.append(report)
    return reports


def task_figure(report: TaskReport):
    """The two-panel matplotlib figure of one task, drawn by Agg (no pyplot state: nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    FigureCanvasAgg(fig)  # rendered by Agg, without pyplot's global state
    left, right = fig.subplots(1, 2)
    families = [s.family for s in report.scores if not s.oracle]
    colors = {f: f"C{i % 10}" for i, f in enumerate(sorted(families))}
    for ax, attr, front, xlabel in ((left, "tpf", "front_tpf", "tokens per forward (TPF)"),
                                    (right, "tokens_per_second", "front_tps", "tokens / second")):
        drawn = [p for p in report.points if getattr(p, attr) and p.accuracy is not None]
        for family in families:  # each curve in TPF order (the knob's), also when drawn against tokens/s
            line = sorted((p for p in drawn if p.family == family), key=lambda p: (p.tpf or 0.0, p.accuracy))
            if not line:
                continue
            xs, ys = [getattr(p, attr) for p in line], [p.accuracy for p in line]
            line_color = to_rgba(colors[family], 1.0 if attr == "tpf" else 0.35)  # tokens/s is noisy: faint path
            ax.plot(xs, ys, "-o", color=line_color, markerfacecolor=colors[family], markeredgecolor=colors[family],
                    label=family, markersize=5, linewidth=1.5)
            if len(line) <= 12:
                for p, x, y in zip(line, xs, ys):
                    ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6,
                                color=colors[family])
        for i, p in enumerate(p for p in drawn if p.reference):
            ax.axhline(p.accuracy, color="gray", linestyle=":", linewidth=1.2, label=None if i else REFERENCE_LABEL)
        oracle = [p for p in drawn if p.oracle]
        if oracle:
            ax.scatter([getattr(p, attr) for p in oracle], [p.accuracy for p in oracle], marker="*", s=160,
                       color="gold", edgecolors="black", zorder=5, label="EGP oracle (upper bound)")
        ring = [p for p in drawn if getattr(p, front)]
        if ring:
            ax.scatter([getattr(p, attr) for p in ring], [p.accuracy for p in ring], s=150, facecolors="none",
                       edgecolors="black", linewidths=1.4, zorder=4, label="Pareto front")
        values = [getattr(p, attr) for p in drawn]
        if attr == "tokens_per_second" and values and max(values) / min(values) > 20:
            ax.set_xscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -2.0), min(high, 102.0))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"accuracy (%, {report.metric})")
        ax.grid(True, alpha=0.3)
        if drawn and len(families) <= 4:
            ax.legend(fontsize=7, loc="best")
    left.set_title(f"{report.task}: accuracy vs parallelism")
    right.set_title(f"{report.task}: accuracy vs throughput")
    if len(families) > 4:  # many curves: one legend beside the panels, not over the data
        handles, labels = left.get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0, 0.68, 1))
    else:
        fig.tight_layout()
    return fig


def write_report(run_dir: Path | str, out_dir: Path | str | None = None, files=None) -> list[Path]:
    """Write the PNGs, ``report.md`` and ``report.html`` of a run (default folder ``RUN_DIR/report``);
    ``files`` restricts the report to those results JSONs (``dllm eval --report`` passes its sweep's)."""
    run = Path(run_dir)
    reports = build(load_points(run, files))
    out = check_output_dir(out_dir if out_dir is not None else run / "report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create report folder '{out}': {exc.strerror or exc}") from None
    written = []
    for report in reports:
        if not any(p.tpf or p.tokens_per_second for p in report.points):
            continue
        fig = task_figure(report)
        report.figure = out / f"{_slug(report.task)}.png"
        fig.savefig(report.figure, dpi=DPI)
        written.append(report.figure)
    model = reports[0].points[0].model
    md = out / "report.md"
    md.write_text(_markdown(reports, run, model))
    page = out / "report.html"
    page.write_text(_html(reports, run, model))
    return written + [md, page]


# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="folder of lm-eval results JSONs (`dllm eval --output`)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default RUN_DIR/report)")


def run(args) -> int:
    for path in write_report(args.run_dir, args.out):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``dllm report RUN_DIR [--out DIR]`` on its own."""
    parser = argparse.ArgumentParser(prog="dllm report", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dllm report: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------
def _is_result_name(relative: Path) -> bool:
    return (not any(part.startswith(".") for part in relative.parts) and not relative.name.endswith(".samples.json")
            and relative.parts[0] != "report")


def _relative(path: Path, run: Path) -> str:
    return str(path.relative_to(run)) if path.is_relative_to(run) else str(path)


def _read(path: Path) -> dict | None:
    """A results JSON, or None for a JSON that is not one (no ``results``)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read '{path}': {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"'{path}' is not valid JSON ({exc}): a results file cut short? rerun that point") from None
    return data if isinstance(data, dict) and isinstance(data.get("results"), dict) else None


def _points_of(path: Path, results: dict, model: str) -> list[Point]:
    from .sweep import table_rows

    block = results["config"]["dllm"]
    settings = dict(block["settings"])
    sampler = str(settings.get("sampler"))
    options = dict(settings.get("sampler_options") or {})
    resolved_cache = block.get("decoding", {}).get("cache", {}).get("cache") or settings.get("cache") or "default"
    knobs = {k: v for k, v in options.items() if _is_number(v)}
    knobs.update({k: settings[k] for k in _KNOB_SETTINGS if settings.get(k) is not None})
    family = {k: v for k, v in options.items() if not _is_number(v)}
    family.update({k: v for k, v in settings.items() if k not in _NOT_FAMILY + ("modifier_options",)})
    if isinstance(family.get("modifiers"), (list, tuple)):  # compact: modifiers=eoser+other, gamma_min=0.01
        family["modifiers"] = "+".join(map(str, family["modifiers"])) or None
    family.update(settings.get("modifier_options") or {})
    family["cache"] = resolved_cache
    family.update({f"cache.{k}": v for k, v in (settings.get("cache_options") or {}).items()})
    points = []
    speed = block.get("speed", {})
    for row in table_rows(results, sampler, resolved_cache):
        if row["score"] is None or row["task"] not in speed:
            continue  # a group's aggregate, or a task without a number
        points.append(Point(file=path, task=row["task"], sampler=sampler, knobs=knobs, family_settings=family,
                            metric=row["metric"], accuracy=100.0 * float(row["score"]), tpf=row["tpf"] or None,
                            tokens_per_second=row["tokens_per_second"] or None,
                            nfe_per_sample=row["nfe_per_sample"], docs=int(row["samples"] or 0), model=model))
    return points


def _name_families(points: list[Point]) -> None:
    """``sampler`` plus the family settings that differ between the task's points."""
    keys = sorted({k for p in points for k in p.family_settings})
    varying = [k for k in keys if len({json.dumps(p.family_settings.get(k), default=str) for p in points}) > 1]
    for p in points:
        extra = [f"{k}={_fmt_value(p.family_settings.get(k))}" for k in varying
                 if not _is_default(p.family_settings.get(k))]
        p.family = p.sampler + (f" [{', '.join(extra)}]" if extra else "")


def _mark_references(points: list[Point]) -> None:
    """Static one-token-per-step: the static points whose step budget is the canvas (steps unset or =
    gen_length), one per family (the one with the lowest TPF)."""
    for family in dict.fromkeys(p.family for p in points if p.sampler == "static"):
        candidates = [p for p in points if p.family == family and p.accuracy is not None and _one_per_step(p)]
        if candidates:
            min(candidates, key=lambda p: p.tpf if p.tpf is not None else float("inf")).reference = True


def _is_default(value) -> bool:
    """Settings left at their neutral value say nothing about a family (no modifiers, no schedule option)."""
    return value is None or value == "linear" or value == [] or value == {} or value == ()


def _one_per_step(p: Point) -> bool:
    """Static one token per step: the canvas as the step budget, LLaDA's linear schedule, no modifiers."""
    steps = p.knobs.get("steps")
    plain = p.family_settings.get("schedule", "linear") == "linear" and not p.family_settings.get("modifiers")
    return plain and (steps is None or steps >= (p.family_settings.get("gen_length") or 0))


def _score(family: str, points: list[Point], y_max: float | None) -> FamilyScore:
    pairs = [(p.tpf, p.accuracy) for p in points if p.tpf and p.accuracy is not None]
    best = max((p.accuracy for p in points if p.accuracy is not None), default=None)
    value, dropped, span = None, 0, None
    if pairs:
        detail = aup_detail(pairs, y_max=y_max)
        value, dropped = detail.value, len(detail.dropped)
        span = (min(r for r, _ in pairs), max(r for r, _ in pairs))
    return FamilyScore(family, points[0].sampler, len(points), best, span, value, dropped, points[0].oracle)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text) or "task"


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _tables(report: TaskReport):
    """(title, header, right-aligned columns, rows) of the task's two tables."""
    return [("AUP per sampler family", *_aup_table(report)), ("All points", *_points_table(report))]


def _aup_table(report: TaskReport):
    header = ["sampler family", "points", "best accuracy %", "TPF range", "AUP", f"dropped (> {DROP:g} below y_1)"]
    rows = []
    for s in report.scores:
        span = "-" if s.tpf_range is None else f"{s.tpf_range[0]:.2f}–{s.tpf_range[1]:.2f}"
        name = s.family + (" (upper bound)" if s.oracle else "")
        rows.append([name, str(s.points), _num(s.best, 1), span, _num(s.aup, 2), str(s.dropped)])
    return header, {1, 2, 3, 4, 5}, rows


def _points_table(report: TaskReport):
    header = ["sampler family", "setting", "accuracy %", "TPF", "tokens/s", "NFE/sample", "docs",
              "Pareto (TPF)", "Pareto (tok/s)", "file"]
    rows = []
    for p in report.points:
        tag = " (reference)" if p.reference else " (upper bound)" if p.oracle else ""
        rows.append([p.family, p.label + tag, _num(p.accuracy, 1), _num(p.tpf, 2), _num(p.tokens_per_second, 1),
                     _num(p.nfe_per_sample, 1), str(p.docs), "★" if p.front_tpf else "", "★" if p.front_tps else "",
                     p.file.name])
    return header, {2, 3, 4, 5, 6}, rows


def _intro(run: Path, model: str) -> str:
    return (f"Model `{model}`, run `{run}`. Accuracy is each task's primary lm-eval metric in percent; TPF = "
            f"generated tokens / forwards per sample. AUP (Accuracy Under Parallelism, d3LLM): area under the "
            f"accuracy–TPF curve of one sampler family, accuracy weighted by min(exp(−3(1 − y/y_max)), 1), points "
            f"more than {DROP:g} points below the accuracy at the lowest TPF left out; y_max = the task's best "
            f"accuracy over all non-oracle points. ★ = on the Pareto front (no other setting is both as fast and "
            f"as accurate).")


def _markdown(reports: list[TaskReport], run: Path, model: str) -> str:
    lines = ["# dllm report: accuracy under parallelism", "", _intro(run, model), ""]
    for r in reports:
        lines += [f"## {r.task}", "", f"Metric `{r.metric}`; y_max = {_num(r.y_max, 1)} %.", ""]
        if r.figure is not None:
            lines += [f"![{r.task}: accuracy vs TPF and tokens/s]({r.figure.name})", ""]
        lines += [f"- {note}" for note in r.notes] + ([""] if r.notes else [])
        for title, header, right, rows in _tables(r):
            lines += [f"### {title}", "", "| " + " | ".join(header) + " |",
                      "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows] + [""]
    return "\n".join(lines)


def _html(reports: list[TaskReport], run: Path, model: str) -> str:
    esc = html.escape
    intro = re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(_intro(run, model)))
    body = ["<h1>dllm report: accuracy under parallelism</h1>", f"<p>{intro}</p>"]
    for r in reports:
        body.append(f"<h2>{esc(r.task)}</h2><p>Metric <code>{esc(r.metric)}</code>; y_max = {_num(r.y_max, 1)} %.</p>")
        if r.figure is not None:
            data = base64.b64encode(r.figure.read_bytes()).decode("ascii")
            body.append(f'<img alt="{esc(r.task)}: accuracy vs TPF and tokens/s" src="data:image/png;base64,{data}">')
        if r.notes:
            body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in r.notes) + "</ul>")
        for title, header, right, rows in _tables(r):
            head = "".join(f"<th>{esc(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i in right else f"<td>{esc(c)}</td>"
                                             for i, c in enumerate(row)) + "</tr>" for row in rows)
            body.append(f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:1240px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%;border:1px solid #ddd}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
             "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}"
             "td.num{text-align:right}code{background:#f3f3f3;padding:0 .2em}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dllm report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


if __name__ == "__main__":
    sys.exit(main())
