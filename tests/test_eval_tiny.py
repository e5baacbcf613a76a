"""The embedded model through lm-eval: static scores equal ``dllm.tiny.score`` (its documented numbers come
from there) and the multiple-choice tasks score above chance with the Monte-Carlo likelihood."""

import lm_eval
import pytest

import dllm
import dllm.eval
from dllm.eval.lm import DiffusionLM
from dllm.tiny import score

LIMIT = 24


@pytest.fixture(scope="module")
def tiny():
    return dllm.load("tiny", device="cpu")


def evaluate(model, tasks, **args):
    lm = DiffusionLM(pretrained=model, batch_size=LIMIT, **args)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=LIMIT,
                                   task_manager=dllm.eval.task_manager(include_defaults=False))


def test_static_scores_equal_the_tiny_scorer(tiny):
    results = evaluate(tiny, ["dllm_arith", "dllm_json", "dllm_sort"], sampler="static")
    canvas = {"gen_length": score.GEN_LENGTH, "block_length": score.BLOCK_LENGTH}
    assert results["config"]["dllm"]["settings"]["gen_length"] == canvas["gen_length"]
    assert results["config"]["dllm"]["settings"]["block_length"] == canvas["block_length"]
    for task in ("arith", "json", "sort"):
        expected = score.score_task(tiny, task, limit=LIMIT, batch_size=LIMIT, sampler="static", steps=score.GEN_LENGTH)
        got = results["results"][f"dllm_{task}"]
        assert got["exact_match,none"] == pytest.approx(expected["exact"]), task
        if task == "json":
            assert got["valid_json,none"] == pytest.approx(expected["parseable"])


@pytest.mark.parametrize("task", ["dllm_arith_mc", "dllm_sort_mc"])
def test_multiple_choice_by_likelihood_beats_chance(tiny, task):
    results = evaluate(tiny, [task], mc_num=16, seed=0)
    assert results["results"][task]["acc,none"] >= 0.75  # 4 choices: chance is 0.25
