"""``dllm report``: figures read back, report.md / report.html content, AUP and Pareto marks, bad input."""

import base64
import json
import re
from html.parser import HTMLParser

import pytest

from dllm.eval.aup import aup
from dllm.eval.report import (DPI, FIG_SIZE, REFERENCE_LABEL, build, check_output_dir, load_points, main,
                              task_figure, write_report)

WIDTH, HEIGHT = int(FIG_SIZE[0] * DPI), int(FIG_SIZE[1] * DPI)


def result_file(folder, name, scores, sampler="threshold", options=None, cache="none", steps=None, gen_length=32,
                model="/models/tiny", docs=20, metric="exact_match"):
    """A results JSON shaped like the ones ``dllm eval`` writes (lm-eval's file with dllm's config block);
    ``scores`` maps task -> (accuracy fraction, TPF, tokens/s), or (accuracy, None, None) for a
    loglikelihood task."""
    speed, results = {}, {}
    for task, (score, tpf, tps) in scores.items():
        results[task] = {"alias": task, f"{metric},none": score, f"{metric}_stderr,none": 0.05}
        if tpf is None:
            speed[task] = {"ll_requests": docs, "ll_forwards": 8 * docs, "ll_seconds": 1.0}
        else:
            forwards = 10 * docs
            tokens = round(tpf * forwards)
            speed[task] = {"samples": docs, "nfe": forwards, "forwards": forwards, "tokens": tokens,
                           "seconds": tokens / tps, "tpf": tokens / forwards, "tokens_per_second": tps}
    settings = {"sampler": sampler, "cache": cache, "gen_length": gen_length, "block_length": 16, "steps": steps,
                "temperature": 0.0, "cfg_scale": 0.0, "seed": None, "confidence": "prob", "ar_first": None,
                "mc_num": 128, "mc_batch_size": None, "greedy_check": False, "max_length": None,
                "sampler_options": dict(options or {}), "cache_options": {}}
    data = {"results": results, "n-samples": {t: {"original": 300, "effective": docs} for t in scores},
            "config": {"model": "DiffusionLM", "dllm": {
                "model": {"path": model, "family": "llada"}, "settings": settings,
                "decoding": {"sampler": {"sampler": sampler, **(options or {})}, "cache": {"cache": cache}},
                "speed": speed}},
            "dllm_eval": {"run": {"model": model}, "sampler_spec": sampler}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    arith = {  # threshold: (threshold, accuracy, TPF, tok/s)
        0.5: (0.70, 6.0, 900.0), 0.7: (0.84, 4.0, 700.0), 0.9: (0.86, 2.5, 500.0),
    }
    for t, (acc, tpf, tps) in arith.items():
        result_file(run, f"threshold_{t}__none", {"dllm_arith": (acc, tpf, tps), "dllm_sort": (0.5 + t / 2, tpf, tps),
                                                  "dllm_sort_mc": (0.4, None, None)}, options={"threshold": t})
    result_file(run, "static__none", {"dllm_arith": (0.88, 0.8, 150.0), "dllm_sort": (0.96, 0.9, 160.0),
                                      "dllm_sort_mc": (0.4, None, None)}, sampler="static")
    result_file(run, "static_steps-16__none", {"dllm_arith": (0.80, 1.6, 300.0), "dllm_sort": (0.9, 1.8, 320.0),
                                               "dllm_sort_mc": (0.4, None, None)}, sampler="static", steps=16)
    result_file(run, "oracle__none", {"dllm_arith": (0.99, 7.0, 950.0), "dllm_sort": (1.0, 8.0, 990.0),
                                      "dllm_sort_mc": (0.4, None, None)}, sampler="oracle")
    (run / "table.md").write_text("| a table |\n")
    (run / "static__none.samples.json").write_text("[]")  # per-sample outputs: not results
    (run / ".static__none.json.123.tmp").write_text("{")  # a write in flight: ignored
    (run / "notes.json").write_text('{"not": "results"}')
    return run


def test_points_families_fronts_and_aup(run_dir):
    reports = {r.task: r for r in build(load_points(run_dir))}
    assert list(reports) == ["dllm_arith", "dllm_sort", "dllm_sort_mc"]
    arith = reports["dllm_arith"]
    assert arith.metric == "exact_match"
    assert arith.y_max == pytest.approx(88.0)  # the oracle's 99 is an upper bound, not a contender
    by_label = {(p.sampler, p.label): p for p in arith.points}
    assert set(by_label) == {("threshold", "threshold=0.5"), ("threshold", "threshold=0.7"),
                             ("threshold", "threshold=0.9"), ("static", "default"), ("static", "steps=16"),
                             ("oracle", "default")}
    assert by_label[("static", "default")].reference and not by_label[("static", "steps=16")].reference
    front = {key for key, p in by_label.items() if p.front_tpf}
    assert front == {("static", "default"), ("threshold", "threshold=0.9"), ("threshold", "threshold=0.7"),
                     ("threshold", "threshold=0.5")}
    assert not by_label[("oracle", "default")].front_tpf and not by_label[("oracle", "default")].front_tps
    scores = {s.family: s for s in arith.scores}
    assert scores["threshold"].aup == pytest.approx(aup([(2.5, 86), (4.0, 84), (6.0, 70)], y_max=88.0))
    assert scores["threshold"].dropped == 1  # 70 % is more than 5 points below 86 %
    assert scores["static"].aup == pytest.approx(aup([(0.8, 88), (1.6, 80)], y_max=88.0))
    assert scores["oracle"].oracle and scores["oracle"].aup == pytest.approx(7.0 * 99)
    assert [s.family for s in arith.scores][-1] == "oracle"  # the upper bound is listed last
    mc = reports["dllm_sort_mc"]
    assert all(p.tpf is None for p in mc.points) and any("no generation speed" in n for n in mc.notes)


def test_families_split_on_non_numeric_options_and_on_the_cache(tmp_path):
    for strict in (True, False):
        for t in (0.5, 0.9):
            result_file(tmp_path, f"t{t}{strict}", {"dllm_arith": (0.8, 2 / t, 100.0)},
                        options={"threshold": t, "strict": strict})
    result_file(tmp_path, "dual", {"dllm_arith": (0.8, 3.0, 300.0)}, options={"threshold": 0.9, "strict": True},
                cache="dual")
    (report,) = build(load_points(tmp_path))
    assert sorted(s.family for s in report.scores) == [
        "threshold [cache=dual, strict=true]", "threshold [cache=none, strict=false]",
        "threshold [cache=none, strict=true]"]
    assert sorted(s.points for s in report.scores) == [1, 2, 2]


def test_figures_are_images_of_the_expected_size_with_labelled_axes(run_dir, tmp_path):
    import matplotlib.image

    (arith, *_) = build(load_points(run_dir))
    fig = task_figure(arith)
    left, right = fig.axes
    assert left.get_xlabel() == "tokens per forward (TPF)" and right.get_xlabel() == "tokens / second"
    assert left.get_ylabel() == right.get_ylabel() == "accuracy (%, exact_match)"
    assert "dllm_arith" in left.get_title() and "dllm_arith" in right.get_title()
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert {"threshold", "static", REFERENCE_LABEL, "EGP oracle (upper bound)", "Pareto front"} <= set(legend)
    assert "oracle" not in legend  # the oracle is a point, not a line

    written = write_report(run_dir, tmp_path / "out")
    pngs = [p for p in written if p.suffix == ".png"]
    assert [p.name for p in pngs] == ["dllm_arith.png", "dllm_sort.png"]  # the loglikelihood task has no figure
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.shape[:2] == (HEIGHT, WIDTH)
        assert image[..., :3].std() > 0.05  # not a blank canvas
        dark = (image[..., :3].mean(-1) < 0.5).mean()
        assert 0.002 < dark < 0.3  # text, axes and lines drawn


def test_report_md_and_html(run_dir, tmp_path):
    out = tmp_path / "out"
    written = write_report(run_dir, out)
    assert [p.name for p in written] == ["dllm_arith.png", "dllm_sort.png", "report.md", "report.html"]
    md = (out / "report.md").read_text()
    assert md.startswith("# dllm report: accuracy under parallelism")
    for task in ("dllm_arith", "dllm_sort", "dllm_sort_mc"):
        assert f"\n## {task}\n" in md
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / image).is_file()
    assert "![dllm_arith: accuracy vs TPF and tokens/s](dllm_arith.png)" in md
    expected = aup([(2.5, 86), (4.0, 84), (6.0, 70)], y_max=88.0)
    assert f"| threshold | 3 | 86.0 | 2.50–6.00 | {expected:.2f} | 1 |" in md
    assert "| oracle (upper bound) |" in md
    assert "| static | default (reference) | 88.0 | 0.80 | 150.0 |" in md
    row = next(line for line in md.splitlines() if "| threshold | threshold=0.9 | 86.0 |" in line)
    assert row.split("|")[8].strip() == "★"  # on the TPF Pareto front
    assert "| oracle | default (upper bound) |" in md and "y_max = 88.0 %" in md

    page = (out / "report.html").read_text()
    checker = _Html()
    checker.feed(page)
    checker.close()
    assert checker.unclosed == [] and checker.errors == []
    assert checker.sources and all(src.startswith("data:image/png;base64,") for src in checker.sources)
    assert base64.b64decode(checker.sources[0].split(",", 1)[1]) == (out / "dllm_arith.png").read_bytes()
    assert "http://" not in page and "https://" not in page and "<link" not in page  # nothing to fetch
    assert f"<td>threshold</td><td class=\"num\">3</td>" in page and f"{expected:.2f}" in page
    assert "★" in page and "dllm_sort_mc" in page


def test_dllm_report_command(run_dir, capsys):
    assert main([str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-2:] == [str(run_dir / "report" / "report.md"), str(run_dir / "report" / "report.html")]
    assert main([str(run_dir)]) == 0  # the report folder inside the run is not read as results
    assert (run_dir / "report" / "dllm_sort.png").is_file()


def _one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dllm report: error: ") and err.count("\n") == 1 and fragment in err, err


def test_bad_input_is_a_one_line_error(run_dir, tmp_path, capsys):
    result_file(run_dir, "other", {"dllm_arith": (0.5, 2.0, 100.0)}, model="/models/other")
    _one_line_error(capsys, [str(run_dir)], "mixes models: /models/tiny")
    (run_dir / "other.json").unlink()

    a_file = tmp_path / "report.txt"
    a_file.write_text("x")
    _one_line_error(capsys, [str(run_dir), "--out", str(a_file)], "is an existing file")
    _one_line_error(capsys, [str(run_dir), "--out", str(a_file / "sub")], "lies under the file")
    with pytest.raises(ValueError, match="is an existing file"):
        check_output_dir(a_file)

    _one_line_error(capsys, [str(tmp_path / "missing")], "does not exist")
    _one_line_error(capsys, [str(a_file)], "is a file, not a run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, [str(empty)], "no lm-eval results JSONs")
    (run_dir / "cut.json").write_text('{"results": {')
    _one_line_error(capsys, [str(run_dir)], "cut.json' is not valid JSON")
    (run_dir / "cut.json").write_text(json.dumps({"results": {"x": {"acc,none": 1.0}}, "config": {"model": "hf"}}))
    _one_line_error(capsys, [str(run_dir)], "without dllm's block")


def test_a_real_dllm_eval_run(tmp_path):
    """The files ``dllm eval`` really writes (tiny model, a few documents) make a report."""
    from dllm.cli import main as dllm_main

    run = tmp_path / "run"
    assert dllm_main(["eval", "--model", "tiny", "--tasks", "dllm_arith", "--samplers",
                      "static,threshold:threshold=0.5", "--caches", "none", "--limit", "4", "--output", str(run),
                      "--no-progress"]) == 0
    written = write_report(run, tmp_path / "out")
    assert [p.name for p in written] == ["dllm_arith.png", "report.md", "report.html"]
    (report,) = build(load_points(run))
    assert {p.sampler for p in report.points} == {"static", "threshold"}
    assert all(p.tpf and p.tokens_per_second and p.docs == 4 for p in report.points)
    assert next(p for p in report.points if p.sampler == "static").reference
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| threshold | threshold=0.5 |" in md and "| static | default (reference) |" in md
    for point in report.points:  # the file column names the results JSON of each point
        assert (run / point.file.name).is_file() and f"| {point.file.name} |" in md


class _Html(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.unclosed, self.errors, self.sources = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def close(self):
        super().close()
        self.unclosed = list(self.stack)
