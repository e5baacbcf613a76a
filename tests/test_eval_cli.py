"""``dllm eval`` (sweep table, files, resume after a kill, one-line errors) and ``dllm lm-eval``."""

import json
import os
import re
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


def results(folder, pattern="*"):
    """Finished combination files (not samples, not temp files) by name."""
    return sorted(p.name for p in folder.glob(f"{pattern}.json") if not p.name.endswith(".samples.json"))


def combination(name: str) -> str:
    """``threshold_threshold-0.7__dual__<digest>.json`` -> ``threshold_threshold-0.7__dual``."""
    assert re.fullmatch(r".+__.+__[0-9a-f]{10}\.json", name), name
    return name.rsplit("__", 1)[0]


def test_eval_prints_one_table_and_writes_one_json_per_combination(tmp_path, capsys):
    assert dllm_eval(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "| task | sampler | cache | metric | score | NFE/sample | TPF | tokens/s | seconds |" in printed
    files = results(tmp_path)
    assert [combination(f) for f in files] == ["static__dual", "static__none", "threshold_threshold-0.7__dual",
                                               "threshold_threshold-0.7__none"]
    rows = [line for line in printed.splitlines() if line.startswith("| dllm_")]
    assert len(rows) == 3 * 4
    assert any("| dllm_json | threshold:threshold=0.7 | dual | exact_match |" in row for row in rows)
    assert printed.startswith("plan: 4 combination(s)")  # the run plan comes before anything runs
    table = (tmp_path / "table.md").read_text().strip()
    assert table.startswith("| task |") and printed.split("\nresults:")[0].strip().endswith(table)
    [path] = tmp_path.glob("threshold_threshold-0.7__dual__*.json")
    saved = json.loads(path.read_text())
    assert saved["config"]["dllm"]["decoding"]["sampler"]["threshold"] == 0.7
    assert saved["config"]["dllm"]["decoding"]["cache"]["cache"] == "dual"
    assert saved["config"]["dllm"]["speed"]["dllm_sort"]["samples"] == 3

    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert dllm_eval(tmp_path) == 0  # same settings: everything is loaded, nothing recomputed
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == stamps
    assert capsys.readouterr().out.count("| dllm_") == 12


def test_runs_with_other_settings_write_beside_earlier_results_never_over_them(tmp_path, capsys):
    assert dllm_eval(tmp_path, tasks="dllm_sort,dllm_json", samplers="static", caches="none,dual", limit="3") == 0
    first = {name: (tmp_path / name).read_bytes() for name in results(tmp_path)}
    assert len(first) == 2
    # fewer tasks, a smaller limit, a cache option: three more settings, none of them may replace the run above
    assert dllm_eval(tmp_path, "-o", "refresh_every=2", tasks="dllm_sort", samplers="static", caches="dual",
                     limit="2") == 0
    printed = capsys.readouterr().out
    assert "| dllm_sort | static | dual:refresh_every=2 |" in printed
    assert all((tmp_path / name).read_bytes() == content for name, content in first.items())
    [new] = [name for name in results(tmp_path) if name not in first]
    assert combination(new) == "static__dual_refresh_every-2"
    again = json.loads((tmp_path / new).read_text())["dllm_eval"]["run"]
    assert again["limit"] == 2 and again["tasks"] == ["dllm_sort"] and again["cache_options"] == {"refresh_every": 2}
    # the per-cache syntax names the same combination: loaded, not recomputed
    stamp = (tmp_path / new).stat().st_mtime_ns
    assert dllm_eval(tmp_path, tasks="dllm_sort", samplers="static", caches="dual:refresh_every=2", limit="2") == 0
    assert (tmp_path / new).stat().st_mtime_ns == stamp and len(results(tmp_path)) == 3


def test_a_killed_eval_resumes_without_recomputing_finished_combinations(tmp_path):
    args = [sys.executable, "-c", RUN_MAIN, "eval", "--model", PEAKY, "--tasks", "dllm_sort,dllm_sort_mc",
            "--samplers", "static,threshold", "--caches", "none,dual", "--limit", "6", "--output", str(tmp_path), *SMALL]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not results(tmp_path, "static__none__*") and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [first] = [tmp_path / name for name in results(tmp_path, "static__none__*")]
    finished = results(tmp_path)
    assert len(finished) < 4, "the run finished before it could be interrupted"
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content
    assert len(results(tmp_path)) == 4
    assert rerun.stdout.count("| dllm_sort") == 8


@pytest.mark.parametrize("change, message", [
    ({"tasks": "dllm_sortt"}, "unknown task 'dllm_sortt' (did you mean 'dllm_sort'?)"),
    ({"samplers": "thresh"}, "unknown sampler 'thresh' (did you mean 'threshold'?)"),
    ({"samplers": "threshold:treshold=0.5"}, "unknown option 'treshold' for sampler 'threshold'"),
    ({"samplers": "threshold:threshold"}, "malformed option 'threshold' for sampler 'threshold'"),
    ({"samplers": "static,,threshold"}, "--samplers 'static,,threshold' has an empty entry"),
    ({"samplers": ":threshold=0.5"}, "malformed --samplers entry ':threshold=0.5'"),
    ({"caches": "none,duall"}, "unknown cache 'duall' in --caches (did you mean 'dual'?)"),
    ({"caches": "block"}, "cache 'block' does not fit"),
    ({"samplers": "static,static:steps=3"}, "steps=3 is not a multiple of the number of blocks (2)"),
    ({"samplers": "threshold:threshold=abc"}, "sampler 'threshold': option threshold must be a number (got 'abc')"),
    ({"samplers": "threshold:strict=maybe"}, "sampler 'threshold': option strict must be true or false"),
    ({"caches": "dual:refresh_every=x"}, "cache 'dual': option refresh_every must be an integer or None (got 'x')"),
    ({"caches": "dual:refresh_every"}, "malformed --caches entry 'dual:refresh_every'"),
    ({"extra": ["-o", "treshold=0.5"]}, "unknown option 'treshold' in -o (did you mean 'threshold'?)"),
    ({"extra": ["-o", "threshold=abc"]}, "sampler 'threshold': option threshold must be a number (got 'abc')"),
    ({"extra": ["-o", "temperature=hot"]}, "option temperature must be a number (got 'hot')"),
    ({"extra": ["-o", "seed=x"]}, "option seed must be an integer or None (got 'x')"),
    ({"extra": ["-o", "steps=True"]}, "option steps must be an integer or None (got True)"),
    ({"extra": ["--num-fewshot", "8"]}, "--num-fewshot 8: dllm_sort, dllm_json, dllm_sort_mc are zero-shot by design"),
    ({"extra": ["--device", "banana"]}, "unknown device 'banana'"),
])
def test_bad_input_is_a_one_line_error_and_leaves_no_folder(tmp_path, capsys, change, message):
    output = tmp_path / "new" / "results"
    change = dict(change)
    assert dllm_eval(output, *change.pop("extra", []), **change) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dllm eval: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "new").exists()


def test_an_output_that_is_a_file_fails_before_anything_runs(tmp_path, capsys, monkeypatch):
    import dllm

    monkeypatch.setattr(dllm, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    taken = tmp_path / "results.json"
    taken.write_text("{}")
    assert dllm_eval(taken) == 2
    assert capsys.readouterr().err.strip() == f"dllm eval: error: --output {taken} is a file: give a folder for the results"
    assert dllm_eval(taken / "sub") == 2
    assert "cannot be created: " in capsys.readouterr().err and taken.read_text() == "{}"


def test_no_progress_means_no_bars_and_no_git_noise(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git checkout: lm-eval's git lookup must stay quiet
    assert dllm_eval(tmp_path / "out", tasks="dllm_sort,dllm_sort_mc", samplers="static", caches="none", limit="2") == 0
    err = capfd.readouterr().err
    assert "%|" not in err and "it/s" not in err and "fatal" not in err, err


def test_ctrl_c_keeps_finished_combinations_and_says_so(tmp_path, capsys, monkeypatch):
    from helpers import interrupt_on_call

    from dllm.eval import sweep

    monkeypatch.setattr(sweep, "_run_one", interrupt_on_call(sweep._run_one, 2))
    assert dllm_eval(tmp_path, tasks="dllm_sort", samplers="static", caches="none,dual", limit="2") == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"dllm eval: interrupted: 1 of 2 combination(s) finished and kept in {tmp_path} (rerun the same "
                   f"command to resume; the one in flight is lost)")
    assert [combination(name) for name in results(tmp_path)] == ["static__none"]
    assert not list(tmp_path.glob(".*.tmp"))


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
    [saved, full] = [json.loads(next(tmp_path.glob(f"{name}__*.json")).read_text())
                     for name in ("static_steps-8__none", "static__none")]
    assert saved["config"]["dllm"]["settings"]["steps"] == 8 and full["config"]["dllm"]["settings"]["steps"] is None
    # 2 tokens per step on a 16-token canvas: at most 8 forwards (fewer when a stop string retires the row early)
    halved, single = (r["config"]["dllm"]["speed"]["dllm_sort"]["nfe_per_sample"] for r in (saved, full))
    assert halved <= 8 and single <= 16 and halved < single


def test_lm_eval_command_runs_lm_eval_with_the_dllm_model(tmp_path, capsys):
    code = main(["lm-eval", "--model", "dllm", "--model_args",
                 f"pretrained={PEAKY},sampler=threshold,gen_length=16,block_length=8",
                 "--tasks", "dllm_sort", "--limit", "4", "--device", "cpu",
                 "--output_path", str(tmp_path), "--log_samples"])
    assert code == 0
    [path] = tmp_path.glob("**/results_*.json")
    results = json.loads(path.read_text())
    speed = results["config"]["dllm"]["speed"]["dllm_sort"]
    assert speed["samples"] == 4 and speed["nfe_per_sample"] > 0 and "tokens_per_second" in speed
    assert results["config"]["dllm"]["settings"]["sampler"] == "threshold"
    assert results["config"]["dllm"]["batch_size"] == 32  # the same default as dllm eval, not lm-eval's 1
    assert list(tmp_path.glob("**/samples_dllm_sort_*.jsonl"))
    assert "dllm_sort" in capsys.readouterr().out


def test_lm_eval_command_errors_are_one_line(capsys):
    code = main(["lm-eval", "--model", "dllm", "--model_args", f"pretrained={PEAKY}", "--tasks", "dllm_nope",
                 "--limit", "1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == "dllm lm-eval: error: Tasks not found: dllm_nope"


def test_lm_eval_refuses_few_shot_on_the_zero_shot_embedded_tasks(capsys):
    code = main(["lm-eval", "--model", "dllm", "--model_args", f"pretrained={PEAKY}", "--tasks", "dllm_sort",
                 "--num_fewshot", "8", "--limit", "1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("dllm lm-eval: error: --num_fewshot 8: dllm_sort is zero-shot by design")


def test_modifiers_grammar_and_method_columns_in_a_sweep(tmp_path, capsys):
    # modifiers (joined by "+") and their options inside a --samplers entry, grammar / EoTP for every combination
    code = main(["eval", "--model", "tiny", "--tasks", "dllm_json", "--samplers",
                 "static:modifiers=eoser+:gamma_min=0.01,freedave", "-o", "grammar=json", "-o", "eotp=committed",
                 "--limit", "2", "--output", str(tmp_path), "--no-progress", "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| seconds | valid JSON | accepted | rejections/sample | stuck |" in printed
    rows = {line.split(" | ")[1]: line for line in printed.splitlines() if line.startswith("| dllm_json")}
    assert set(rows) == {"static:modifiers=eoser+:gamma_min=0.01", "freedave"}
    assert rows["static:modifiers=eoser+:gamma_min=0.01"].endswith("| 1.000 | - | 0.00 | 0 |")  # no FreeDave drafts
    [path] = tmp_path.glob("freedave__*.json")
    saved = json.loads(path.read_text())
    speed = saved["config"]["dllm"]["speed"]["dllm_json"]
    assert speed["accepted_mean"] > 1 and speed["json_valid_rate"] == 1.0 and speed["stuck"] == 0
    assert saved["config"]["dllm"]["settings"]["grammar"] == "json" and saved["config"]["dllm"]["settings"]["eotp"] == "committed"
    [path] = tmp_path.glob("static_modifiers-eoser__gamma_min-0.01__*.json")
    settings = json.loads(path.read_text())["config"]["dllm"]["settings"]
    assert settings["modifiers"] == ["eoser"] and settings["modifier_options"] == {"gamma_min": 0.01}


def test_modifier_options_route_by_name_in_specs_and_shared_options(tmp_path, capsys):
    from dllm.eval.sweep import Sweep, parse_caches

    [spec] = parse_samplers("static:modifiers=eoser:gamma_min=0.01..0.02/0.01")[:1]
    assert dict(spec.options) == {"modifiers": "eoser", "gamma_min": 0.01}
    with pytest.raises(ValueError, match="unknown option 'gamma_min' for sampler 'static'"):
        parse_samplers("static:gamma_min=0.01")  # not an option of static, and no modifier named takes it
    [cache] = parse_caches("none")
    sweep = Sweep(model="tiny", tasks=["dllm_json"], samplers=[spec], caches=[cache], output=tmp_path,
                  model_args={"modifiers": "eoser", "gamma_max": 0.9, "eotp": "predicted"})
    [plain] = parse_samplers("static")
    args = sweep.combination_args(plain, cache)
    assert (args["modifiers"], args["gamma_max"], args["eotp"]) == ("eoser", 0.9, "predicted")
    # a modifier option without a modifier that takes it is a typo: one line, before anything runs
    assert main(["eval", "--model", "tiny", "--tasks", "dllm_json", "--samplers", "static", "-o", "gamma_min=0.1",
                 "--limit", "1", "--output", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "option 'gamma_min' in -o belongs to modifier 'eoser'" in err and not (tmp_path / "x").exists()
