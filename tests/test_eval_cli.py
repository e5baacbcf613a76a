"""``dllm eval`` (sweep table, files, resume after a kill, one-line errors) and ``dllm lm-eval``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dllm.cli import main
from dllm.eval.sweep import parse_samplers

from conftest import DECODES

PEAKY = str(DECODES / "llada_peaky")
SMALL = ["--gen-length", "16", "--block-length", "8", "-o", "mc_num=8", "--no-progress"]
RUN_MAIN = "import sys, torch; torch.set_num_threads(1); from dllm.cli import main; sys.exit(main(sys.argv[1:]))"


def dllm_eval(tmp_path, *extra, tasks="dllm_sort,dllm_json,dllm_sort_mc", samplers="static,threshold:threshold=0.7",
              caches="none,dual", limit="3"):
    return main(["eval", "--model", PEAKY, "--tasks", tasks, "--samplers", samplers, "--caches", caches,
                 "--limit", limit, "--output", str(tmp_path), *SMALL, *extra])


def test_eval_prints_one_table_and_writes_one_json_per_combination(tmp_path, capsys):
    assert dllm_eval(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "| task | sampler | cache | metric | score | NFE/sample | TPF | tokens/s | seconds |" in printed
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["static__dual.json", "static__none.json", "threshold_threshold-0.7__dual.json",
                     "threshold_threshold-0.7__none.json"]
    rows = [line for line in printed.splitlines() if line.startswith("| dllm_")]
    assert len(rows) == 3 * 4
    assert any("| dllm_json | threshold:threshold=0.7 | dual | exact_match |" in row for row in rows)
    assert (tmp_path / "table.md").read_text().strip() == printed.split("\nresults:")[0].strip()
    saved = json.loads((tmp_path / "threshold_threshold-0.7__dual.json").read_text())
    assert saved["config"]["dllm"]["decoding"]["sampler"]["threshold"] == 0.7
    assert saved["config"]["dllm"]["decoding"]["cache"]["cache"] == "dual"
    assert saved["config"]["dllm"]["speed"]["dllm_sort"]["samples"] == 3

    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert dllm_eval(tmp_path) == 0  # same settings: everything is loaded, nothing recomputed
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == stamps
    assert capsys.readouterr().out.count("| dllm_") == 12
    assert dllm_eval(tmp_path, limit="2", samplers="static", caches="none") == 0  # other settings: recomputed
    assert (tmp_path / "static__none.json").stat().st_mtime_ns != stamps["static__none.json"]


def test_a_killed_eval_resumes_without_recomputing_finished_combinations(tmp_path):
    args = [sys.executable, "-c", RUN_MAIN, "eval", "--model", PEAKY, "--tasks", "dllm_sort,dllm_sort_mc",
            "--samplers", "static,threshold", "--caches", "none,dual", "--limit", "6", "--output", str(tmp_path), *SMALL]
    first = tmp_path / "static__none.json"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists()
    finished = sorted(tmp_path.glob("*.json"))
    assert len(finished) < 4, "the run finished before it could be interrupted"
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content
    assert len(list(tmp_path.glob("*.json"))) == 4
    assert rerun.stdout.count("| dllm_sort") == 8


@pytest.mark.parametrize("change, message", [
    ({"tasks": "dllm_sortt"}, "unknown task 'dllm_sortt' (did you mean 'dllm_sort'?)"),
    ({"samplers": "thresh"}, "unknown sampler 'thresh' (did you mean 'threshold'?)"),
    ({"samplers": "threshold:treshold=0.5"}, "unknown option 'treshold' for sampler 'threshold'"),
    ({"samplers": "threshold:threshold"}, "malformed --samplers entry 'threshold:threshold'"),
    ({"samplers": "static,,threshold"}, "--samplers 'static,,threshold' has an empty entry"),
    ({"samplers": ":threshold=0.5"}, "malformed --samplers entry ':threshold=0.5'"),
    ({"caches": "none,duall"}, "unknown cache 'duall' in --caches (did you mean 'dual'?)"),
    ({"caches": "block"}, "cache 'block' does not fit"),
    ({"samplers": "static,static:steps=3"}, "steps=3 is not a multiple of the number of blocks (2)"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, change, message):
    assert dllm_eval(tmp_path, **change) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dllm eval: error: ") and message in err and "\n" not in err
    assert not list(tmp_path.glob("*.json"))


def test_a_model_that_cannot_be_loaded_is_a_one_line_error(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("dllm eval: error: ") and "does not exist" in err and "\n" not in err


def test_sampler_specs_parse_values_as_numbers():
    specs = parse_samplers("static,threshold:threshold=0.9:strict=True,static:steps=8")
    assert [(s.name, s.options) for s in specs] == [("static", ()), ("threshold", (("threshold", 0.9), ("strict", True))),
                                                     ("static", (("steps", 8),))]
    assert specs[1].slug == "threshold_threshold-0.9_strict-True"


def test_a_spec_can_set_the_static_step_budget(tmp_path, capsys):
    assert dllm_eval(tmp_path, tasks="dllm_sort", samplers="static,static:steps=8", caches="none", limit="2") == 0
    saved = json.loads((tmp_path / "static_steps-8__none.json").read_text())
    full = json.loads((tmp_path / "static__none.json").read_text())
    assert saved["config"]["dllm"]["settings"]["steps"] == 8 and full["config"]["dllm"]["settings"]["steps"] is None
    # 2 tokens per step on a 16-token canvas: at most 8 forwards (fewer when a stop string retires the row early)
    halved, single = (r["config"]["dllm"]["speed"]["dllm_sort"]["nfe_per_sample"] for r in (saved, full))
    assert halved <= 8 and single <= 16 and halved < single


def test_lm_eval_command_runs_lm_eval_with_the_dllm_model(tmp_path, capsys):
    code = main(["lm-eval", "--model", "dllm", "--model_args",
                 f"pretrained={PEAKY},sampler=threshold,gen_length=16,block_length=8",
                 "--tasks", "dllm_sort", "--limit", "4", "--batch_size", "4", "--device", "cpu",
                 "--output_path", str(tmp_path), "--log_samples"])
    assert code == 0
    [path] = tmp_path.glob("**/results_*.json")
    results = json.loads(path.read_text())
    speed = results["config"]["dllm"]["speed"]["dllm_sort"]
    assert speed["samples"] == 4 and speed["nfe_per_sample"] > 0 and "tokens_per_second" in speed
    assert results["config"]["dllm"]["settings"]["sampler"] == "threshold"
    assert list(tmp_path.glob("**/samples_dllm_sort_*.jsonl"))
    assert "dllm_sort" in capsys.readouterr().out


def test_lm_eval_command_errors_are_one_line(capsys):
    code = main(["lm-eval", "--model", "dllm", "--model_args", f"pretrained={PEAKY}", "--tasks", "dllm_nope",
                 "--limit", "1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == "dllm lm-eval: error: Tasks not found: dllm_nope"
