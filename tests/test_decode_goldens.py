"""Conformance: dllm reproduces the reference decoders token for token (tests/data/goldens/decodes).

Each case runs the toolkit sampler with the reference's parameters on the reference checkpoint and prompt
ids and compares the returned sequence, the per-forward commits (trajectory), the fed columns and NFE.
Documented differences (see tests/data/goldens/decodes/README.md §7):
* Fast-dLLM v2: dllm fuses the prompt prefill into the first block forward, so a reference prefill that
  commits nothing (prompt length not a multiple of the block size) is one forward dllm does not spend.
* Reference quirks not reproduced: batch_sample's stop handling and generate()'s sub-block cache that is
  never reset at a block start (the batch_sample sub-block file is the reference for a per-block reset).
"""

import json
from functools import lru_cache

import pytest

import dllm

from conftest import DECODES


@lru_cache(maxsize=None)
def model(name):
    return dllm.load(DECODES / name)


def reference(name, file):
    return json.loads((DECODES / name / f"{file}.json").read_text())


def commits(out, row=0, offset=0):
    return [[[p + offset, t] for p, t in step.commits[row]] for step in out.trajectory.steps]


def feeds(out):
    return [list(step.feed) for step in out.trajectory.steps]


LLADA_CASES = {
    "llada_generate_steps32": dict(sampler="static", steps=32),
    "llada_generate_steps16": dict(sampler="static", steps=16),
    "fastdllm_v1_threshold0.9_nocache": dict(sampler="threshold", threshold=0.9, cache="none"),
    "fastdllm_v1_threshold0.9_prefixcache": dict(sampler="threshold", threshold=0.9, cache="prefix"),
    "fastdllm_v1_threshold0.9_dualcache": dict(sampler="threshold", threshold=0.9, cache="dual"),
    "fastdllm_v1_threshold0.7_nocache": dict(sampler="threshold", threshold=0.7, cache="none"),
    "fastdllm_v1_threshold0.7_prefixcache": dict(sampler="threshold", threshold=0.7, cache="prefix"),
    "fastdllm_v1_threshold0.7_dualcache": dict(sampler="threshold", threshold=0.7, cache="dual"),
    "fastdllm_v1_factor1.0_nocache": dict(sampler="threshold", factor=1.0, factor_rule="reference"),
}


@pytest.mark.parametrize("file", sorted(LLADA_CASES))
def test_llada_per_prompt(file):
    ref, m = reference("llada_peaky", file), model("llada_peaky")
    for call in ref["per_prompt_calls"]:
        out = dllm.generate(m, [call["prompt_ids"]], gen_length=32, block_length=8, return_trajectory=True,
                            **LLADA_CASES[file])
        assert out.canvases[0] == call["sequence"]
        assert commits(out) == call["trajectory"]
        assert feeds(out) == call["forwards"]
        assert out.stats.nfe == call["nfe"]


@pytest.mark.parametrize("file", sorted(f for f in LLADA_CASES if "factor" not in f) + ["llada_generate_steps32_leftpad"])
def test_llada_batch_call(file):
    """Batched (lockstep) calls, including the left-padded ragged batch: same tokens, commits, feeds, NFE."""
    ref, m = reference("llada_peaky", file), model("llada_peaky")
    options = LLADA_CASES.get(file, dict(sampler="static", steps=32))
    prompts = [c["prompt_ids"] for c in ref["per_prompt_calls"]] if "leftpad" in file else ref["prompt_ids"]
    out = dllm.generate(m, prompts, gen_length=32, block_length=8, return_trajectory=True, **options)
    batch = ref["batch_call"]
    for row, sequence in enumerate(batch["sequences"]):
        pad = len(sequence) - len(out.canvases[row])
        assert out.canvases[row] == sequence[pad:]
        assert [row_steps[row] for row_steps in batch["trajectory"]] == commits(out, row, pad)
    assert feeds(out) == batch["forwards"]
    assert out.stats.nfe == batch["nfe"]


def test_factor_rule_clean_mode_differs_where_the_reference_quirk_fires():
    """Our default factor rule does not accept a failing last candidate; the reference file needs the quirk."""
    ref, m = reference("llada_peaky", "fastdllm_v1_factor1.0_nocache"), model("llada_peaky")
    clean = [dllm.generate(m, [c["prompt_ids"]], sampler="threshold", factor=1.0, gen_length=32, block_length=8)
             for c in ref["per_prompt_calls"]]
    assert any(o.stats.nfe != c["nfe"] for o, c in zip(clean, ref["per_prompt_calls"]))


DREAM_CASES = {
    "dream_fastdllm_threshold0.9_prefixcache": dict(cache="prefix", block_length=8, ar_first=True),
    "dream_fastdllm_threshold0.9_dualcache": dict(cache="dual", block_length=8, ar_first=True),
    "dream_fastdllm_threshold0.9_nocache": dict(cache="none", block_length=32, cap="schedule", steps=4),
}


@pytest.mark.parametrize("file", sorted(DREAM_CASES))
def test_dream(file):
    ref, m = reference("dream_peaky", file), model("dream_peaky")
    for call in ref["per_prompt_calls"]:
        out = dllm.generate(m, [call["prompt_ids"]], sampler="threshold", threshold=0.9, gen_length=32,
                            return_trajectory=True, **DREAM_CASES[file])
        assert out.canvases[0] == call["sequence"]
        assert commits(out) == call["trajectory"]
        assert feeds(out) == call["forwards"]
        assert out.stats.nfe == call["nfe"]


V2_CASES = {
    "fastdllm_v2_generate_threshold0.9": dict(block_length=4),
    "fastdllm_v2_batch_sample_threshold0.9": dict(block_length=4),
    "fastdllm_v2_batch_sample_threshold0.9_ragged": dict(block_length=4),
    "fastdllm_v2_batch_sample_threshold0.9_subblockcache": dict(sub_block=4),
    "fastdllm_v2_generate_threshold0.9_stopid65": dict(block_length=4, eos_ids=[65]),
}


def without_empty_prefill(call):
    """Drop the reference's prefill forward when it committed nothing (dllm fuses it into the first block)."""
    trajectory, forwards, nfe = call["trajectory"], call["forwards"], call["nfe"]
    if trajectory and trajectory[0] == []:
        return trajectory[1:], forwards[1:], nfe - 1
    return trajectory, forwards, nfe


@pytest.mark.parametrize("file", sorted(V2_CASES))
def test_fast_dllm_v2(file):
    ref, m = reference("fast_dllm_v2_peaky", file), model("fast_dllm_v2_peaky")
    block = ref["call"]["block_size"]
    for call in ref["per_prompt_calls"]:
        prompt = call["prompt_ids"]
        # the reference decodes max_new_tokens // block windows starting with the block holding the
        # prompt end, plus the AR token of the last block commit
        last_block = (len(prompt) // block + ref["call"]["max_new_tokens"] // block) * block
        gen_length = last_block + 1 - len(prompt)
        out = dllm.generate(m, [prompt], sampler="threshold", threshold=0.9, strict=True, cache="block",
                            gen_length=gen_length, return_trajectory=True, **V2_CASES[file])
        trajectory, _, nfe = without_empty_prefill(call)
        assert out.canvases[0][: len(call["sequence"])] == call["sequence"]
        assert commits(out) == trajectory
        assert out.stats.nfe == nfe
        if "stopid" in file:
            generated = call["sequence"][len(prompt):]
            expected = generated[: generated.index(65)] if 65 in generated else generated
            assert out.sequences[0] == expected  # the output ends before the stop id


def test_fast_dllm_v2_feeds_are_the_reference_slices():
    """Block cache: the fused prefill feeds [0, block end); later feeds equal the reference's (sub-)windows,
    except that a block commit is fused with the next window ([start, 2 blocks])."""
    ref, m = reference("fast_dllm_v2_peaky", "fastdllm_v2_batch_sample_threshold0.9_subblockcache"), model("fast_dllm_v2_peaky")
    call = ref["per_prompt_calls"][0]
    out = dllm.generate(m, [call["prompt_ids"]], sampler="threshold", threshold=0.9, strict=True, cache="block",
                        sub_block=4, gen_length=27, return_trajectory=True)
    mine = feeds(out)
    assert mine[0] == [0, 64]
    fused = {(56, 16), (64, 16), (72, 16), (80, 9)}
    expected = [[s, 8] if (s, n) in fused else [s, n] for s, n in map(tuple, mine[1:])]
    assert call["forwards"][:2] == [[0, 56], [56, 8]]  # reference: prefill, then the first window
    assert expected == call["forwards"][2:]


def test_v2_batch_sample_ragged_batch_equals_single_calls():
    ref, m = reference("fast_dllm_v2_peaky", "fastdllm_v2_batch_sample_threshold0.9_ragged"), model("fast_dllm_v2_peaky")
    prompts = [c["prompt_ids"] for c in ref["per_prompt_calls"]]
    out = dllm.generate(m, prompts, sampler="threshold", threshold=0.9, strict=True, block_length=4, gen_length=27)
    for row, call in enumerate(ref["per_prompt_calls"]):
        n = len(out.canvases[row])
        assert out.canvases[row] == call["sequence"][:n]
