"""The second embedded benchmark (tiny-cot): task generators, shipped test sets, scorers and the recipe's errors."""

import json
import random
import re
import subprocess
import sys

import pytest
import torch

from dllm.tiny import cot_tasks, tasks, train


@pytest.mark.parametrize("task", cot_tasks.COT_TASKS)
def test_shipped_cot_test_files_match_the_generators(task):
    lines = (tasks.DATA_DIR / f"{task}_test.jsonl").read_text().splitlines()
    assert len(lines) == tasks.TEST_SIZE
    expected = [tasks.test_record(e, i) for i, e in enumerate(tasks.test_set(task))]
    assert [json.loads(line) for line in lines] == json.loads(json.dumps(expected))
    assert all(tasks.in_test_split(e) for e in tasks.test_set(task, 50))


def test_chain_arithmetic_lines_are_right_and_dependent():
    rng = random.Random(0)
    for _ in range(200):
        ex = tasks.sample("cot_arith", rng)
        env = {}
        for statement in ex.prompt[len("Solve: "):].split(". What")[0].split(", "):
            name, expr = statement.split("=")
            env[name] = eval(expr, {}, dict(env))  # noqa: S307 (our own generated arithmetic)
            assert 0 <= env[name] <= cot_tasks.DIFFICULTY["cot_arith"]["max_value"]
        lines = ex.target.split("\n")
        assert 3 <= len(lines) - 1 <= 6 and lines[-1] == f"#### {env[ex.prompt.split('What is ')[1][0]]}"
        for line in lines[:-1]:  # every worked line is its own correct arithmetic
            left, value = line.rsplit("=", 1)
            assert eval(left.split("=", 1)[1]) == int(value)  # noqa: S307


def test_chain_arithmetic_knobs_bound_values_and_refer_back():
    rng = random.Random(2)
    chains = [cot_tasks.cot_arith(rng, 4, 4, max_operand=9, max_value=30, back_ref=1.0) for _ in range(100)]
    results = [int(v) for ex in chains for v in re.findall(r"=(\d+)$", ex.target, re.M)]
    assert max(results) <= 30
    # with back_ref=1 an additive step after the first names an earlier variable instead of a constant
    assert any(re.search(r"[a-z]=[a-z][+-][a-z]", ex.prompt) for ex in chains)


def test_unordered_answers_accept_every_order_and_nothing_else():
    ex = tasks.sample("cot_filter", random.Random(3))
    numbers = ex.target.split()
    assert tasks.score("cot_filter", ex.target, " ".join(reversed(numbers)))["exact"] == 1.0
    assert tasks.score("cot_filter", ex.target, " ".join(numbers[:-1]))["exact"] == 0.0
    assert tasks.score("cot_filter", ex.target, " ".join(numbers + numbers[:1]))["exact"] == 0.0
    orders = {tasks.sample("cot_filter", random.Random(s)).target for s in range(5)}
    assert len(orders) == 5  # training targets come in shuffled orders
    # the prompt says how many numbers to select; stage 1 of the recipe trained on the format without the count
    assert ex.prompt.startswith(f"Filter {len(numbers)} ")
    old = tasks.sample("cot_filter", random.Random(3), options={"cot_filter": {"count_in_prompt": False}})
    assert old.prompt == ex.prompt.replace(f"Filter {len(numbers)} ", "Filter ") and old.target == ex.target


def test_copy_and_json_tasks_are_right():
    rng = random.Random(1)
    for _ in range(100):
        ex = tasks.sample("cot_copy", rng)
        op, items = ex.prompt.rstrip("\n").split(": ", 1)
        items = items.split()
        expected = {"Copy": items, "Reverse": items[::-1]}.get(op) or [str(int(x) + int(op.split()[1])) for x in items]
        assert ex.target.split() == expected
        js = tasks.sample("cot_json", rng)
        record = json.loads(js.target)
        assert 3 <= len(record) <= 7 and record == js.meta["answer"]
        assert tasks.score("cot_json", js.target, js.target) == {"parseable": 1.0, "exact": 1.0, "fields": 1.0}


def test_answer_lengths_vary_over_the_canvas():
    tok = train.train_tokenizer(task_names=cot_tasks.COT_TASKS)
    lengths = [len(tok.encode(e.target).ids) for task in cot_tasks.COT_TASKS for e in tasks.load_test_set(task)]
    assert min(lengths) <= 10 and max(lengths) >= 50 and max(lengths) < 128


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--preset", "cot", "--resume"], "--resume: no train_state.pt"),
    (["--preset", "cot", "--curriculum-tasks", "cot_sort"], "--curriculum-tasks cot_sort not in --tasks"),
    (["--preset", "cot-tune"], "pass --init DIR (that run's --out)"),
    (["--preset", "cot-tune", "--init", "/no/such/run"], "--init /no/such/run: no checkpoint there"),
    (["--preset", "tiny", "--init", "dllm/tiny/checkpoint_cot"], "has another architecture"),
    (["--preset", "cot", "--task-options", "{oops"], "--task-options is not JSON"),
    (["--preset", "cot", "--task-options", "[1]"], "--task-options must map task names to keyword objects"),
])
def test_recipe_bad_input_is_one_line(tmp_path, argv, message):
    run = subprocess.run([sys.executable, "-m", "dllm.tiny.train", "--out", str(tmp_path / "run"), *argv],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr
    assert "Traceback" not in run.stderr


def test_recipe_refuses_an_output_folder_of_another_run(tmp_path):
    (tmp_path / "train_state.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match="pass --resume"):
        train.check_output(tmp_path, resume=False)
    (tmp_path / "train_state.pt").unlink()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        train.check_output(tmp_path, resume=False)


def test_a_second_stage_starts_from_the_first_stages_checkpoint(tmp_path):
    """``--init`` takes the weights and tokenizer of a checkpoint: a zero-step stage exports them unchanged."""
    from safetensors.torch import load_file

    from dllm.models.loader import EMBEDDED_MODELS

    source = EMBEDDED_MODELS["tiny-cot"]
    recipe = train.Recipe(**{**train.PRESETS["cot-tune"], "init": str(source), "steps": 0})
    train.run(recipe, tmp_path / "stage2", progress=False)
    before = load_file(str(source / "model.safetensors"))
    after = load_file(str(tmp_path / "stage2" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "stage2" / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()


def test_length_curriculum_starts_short_and_reaches_the_full_ranges():
    recipe = train.Recipe(**train.PRESETS["cot"])
    assert recipe.curriculum > 0 and recipe.curriculum <= recipe.warm_start
    progress = [train.curriculum_progress(recipe, s) for s in range(0, recipe.steps, 50)]
    assert progress[0] == 0.0 and progress == sorted(progress) and progress[-1] == 1.0
    assert train.curriculum_progress(train.Recipe(), 0) == 1.0  # the tiny recipe has none
    for task in cot_tasks.COT_TASKS:
        low_key, high_key = cot_tasks.SIZE_RANGE[task]
        start, full = cot_tasks.curriculum_ranges(task, 0.0), cot_tasks.curriculum_ranges(task, 1.0)
        assert full == cot_tasks.DIFFICULTY[task]
        assert start[low_key] == full[low_key] <= start[high_key] < full[high_key]
    rng = random.Random(3)
    short = [tasks.sample("cot_copy", rng, "train", 0.0) for _ in range(40)]
    assert max(len(e.target.split()) for e in short) <= cot_tasks.curriculum_ranges("cot_copy", 0.0)["max_len"]
    # the test split ignores the curriculum
    assert tasks.sample("cot_copy", random.Random(0), "test", 0.0) == tasks.sample("cot_copy", random.Random(0), "test")


def test_cot_preset_is_within_the_parameter_budget():
    recipe = train.Recipe(**train.PRESETS["cot"])
    tok = train.train_tokenizer(task_names=train.tokenizer_tasks(recipe))
    net = train.build_network(train.llada_config(recipe, tok.get_vocab_size(), train.special_ids(tok)), 0)
    params = sum(p.numel() for p in net.parameters())
    assert 1.5e6 <= params <= 4e6 and params * 4 <= 16 * 2**20
    assert re.fullmatch(r"cot_\w+(,cot_\w+){3}", recipe.tasks)


@pytest.fixture(scope="module")
def tiny_cot():
    import dllm

    return dllm.load("tiny-cot", device="cpu")


def test_tiny_cot_ships_in_llada_format_within_budget(tiny_cot):
    from dllm.models.loader import EMBEDDED_MODELS

    directory = EMBEDDED_MODELS["tiny-cot"]
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "llada" and "auto_map" not in config
    generation = json.loads((directory / "generation_config.json").read_text())
    assert (generation["gen_length"], generation["block_length"]) == (128, 32)
    assert (directory / "model.safetensors").stat().st_size <= 16 * 2**20
    assert tiny_cot.family == "llada" and tiny_cot.canvas_defaults["gen_length"] == 128
    stage_one = train.Recipe(**train.PRESETS["cot"])  # the tokenizer is stage 1's; stage 2 (cot-tune) keeps it
    rebuilt = train.train_tokenizer(task_names=train.tokenizer_tasks(stage_one), task_options=stage_one.task_options)
    assert tiny_cot.tokenizer.get_vocab() == rebuilt.get_vocab()


def test_tiny_cot_decodes_the_first_problems_to_the_documented_answers(tiny_cot):
    """One token per step on each task's first test problems reproduces ``data/cot_first_decodes.jsonl`` (written
    by ``python -m dllm.tiny.score --model tiny-cot --write-first-decodes`` when the weights shipped): a changed
    model, loader or engine shows up as a changed line."""
    from dllm.tiny.score import FIRST_DECODES, first_decodes

    documented = [json.loads(line) for line in FIRST_DECODES.read_text().splitlines()]
    assert {row["task"] for row in documented} == set(cot_tasks.COT_TASKS)
    decoded = first_decodes(tiny_cot, per_task=len(documented) // len(cot_tasks.COT_TASKS))
    assert [(r["prompt"], r["decode"]) for r in decoded] == [(r["prompt"], r["decode"]) for r in documented]
    assert [r["exact"] for r in decoded] == [r["exact"] for r in documented]
