"""Caches: exactness, the goldens' cached-path logits through the cache plug-ins, batch invariance, stats."""

import pytest
import torch
from safetensors.torch import load_file

import dllm

from conftest import GOLDENS
from helpers import random_model, random_prompts

FULL = ["llada", "dream", "llada_moe"]
BLOCK_CAUSAL = ["fast_dllm_v2", "sdar", "llada2"]
SAMPLERS = [dict(sampler="static", steps=16), dict(sampler="threshold", threshold=0.6),
            dict(sampler="threshold", factor=1.0), dict(sampler="static", steps=16, remasking="random", seed=3)]


class LogitRecorder:
    """A logit processor that keeps a copy of every step's span logits (and changes nothing); ``candidates``
    holds the masked columns of each step (the positions whose logits matter)."""

    def __init__(self):
        self.steps, self.candidates = [], []

    def __call__(self, logits, context):
        self.steps.append((context.span, context.rows.clone(), logits.clone()))
        self.candidates.append(context.canvas[:, context.span[0]:context.span[1]] == context.mask_id)
        return logits


@pytest.mark.parametrize("family", FULL)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("ar_first", [False, True])
def test_refresh_every_step_equals_no_cache(family, cache, sampler, ar_first):
    model = random_model(family, 21)
    prompts = random_prompts(model, 5, 2)
    kw = dict(gen_length=16, block_length=8, ar_first=ar_first, return_trajectory=True, **sampler)
    reference = dllm.generate(model, prompts, cache="none", **kw)
    cached = dllm.generate(model, prompts, cache=cache, refresh_every=1, **kw)
    assert cached.canvases == reference.canvases
    assert [s.commits for s in cached.trajectory.steps] == [s.commits for s in reference.trajectory.steps]
    assert cached.stats.nfe == reference.stats.nfe


@pytest.mark.parametrize("family", BLOCK_CAUSAL)
@pytest.mark.parametrize("sampler", SAMPLERS[:3], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_block_cache_equals_uncached_block_causal_forward(family, sampler):
    """Same tokens and the same logits (atol 1e-5, rtol 1e-5 as the goldens) at every step, with or without
    the block cache."""
    model = random_model(family, 22, sharpness=3.0)
    prompts = random_prompts(model, 5, 3, low=2, high=19)
    results = {}
    for cache in ("none", "block"):
        recorder = LogitRecorder()
        out = dllm.generate(model, prompts, cache=cache, gen_length=16, block_length=4, processors=[recorder], **sampler)
        results[cache] = (out, recorder)
    (plain, plain_logits), (cached, cached_logits) = results["none"], results["block"]
    assert cached.canvases == plain.canvases
    assert cached.stats.nfe == plain.stats.nfe
    assert len(plain_logits.steps) == len(cached_logits.steps)
    for (span_a, rows_a, a), (span_b, rows_b, b), candidates in zip(plain_logits.steps, cached_logits.steps,
                                                                   plain_logits.candidates):
        assert span_a == span_b and torch.equal(rows_a, rows_b)
        a, b = a[candidates], b[candidates]
        assert ((a - b).abs() <= 1e-5 + 1e-5 * b.abs()).all()


@pytest.mark.parametrize("family", FULL + BLOCK_CAUSAL)
def test_batch_invariance_with_every_cache(family):
    model = random_model(family, 23)
    prompts = random_prompts(model, 8, 17, low=2, high=21)
    block_causal = model.attention == "block_causal"
    configs = [dict(cache=c) for c in dllm.caches.available(model.attention)]
    if block_causal:
        configs.append(dict(cache="block", sub_block=4))
    for config in configs:
        kw = dict(gen_length=16, block_length=None if "sub_block" in config else (4 if block_causal else 8),
                  sampler="threshold", threshold=0.5, **config)
        batch = dllm.generate(model, prompts, **kw)
        for row, prompt in enumerate(prompts):
            assert dllm.generate(model, [prompt], **kw).canvases[0] == batch.canvases[row], f"{config} row {row}"


def test_nfe_counts_refresh_forwards_and_stats_name_the_cache():
    model = random_model("llada", 24)
    prompts = random_prompts(model, 2, 5)
    for cache, refresh in (("none", None), ("prefix", None), ("dual", None), ("dual", 2)):
        options = {} if refresh is None else {"refresh_every": refresh}
        out = dllm.generate(model, prompts, sampler="threshold", threshold=0.8, cache=cache, gen_length=32, block_length=8,
                            return_trajectory=True, eos_ids=(), **options)
        assert out.stats.cache["cache"] == cache
        assert out.stats.cache.get("refresh_every") == refresh
        feeds = [step.feed for step in out.trajectory.steps]
        assert out.stats.nfe == len(feeds)
        full = sum(1 for start, length in feeds if start == 0)
        if cache == "none":
            assert full == len(feeds)
        elif refresh is None:
            assert full == 4  # one refresh per block
        else:
            per_block = {}
            for step in out.trajectory.steps:
                per_block.setdefault(step.span, []).append(step.feed[0] == 0)
            # refreshed exactly at the block start and every `refresh` forwards after it, never in between
            assert all(flags == [i % refresh == 0 for i in range(len(flags))] for flags in per_block.values())


def test_wrong_cache_for_the_family_names_the_caches_that_fit():
    with pytest.raises(ValueError, match="caches that fit: none, block"):
        dllm.generate(random_model("sdar", 1), [[20, 21]], cache="dual")
    with pytest.raises(ValueError, match="unknown option 'sub_blok'"):
        dllm.generate(random_model("sdar", 1), [[20, 21]], cache="block", sub_blok=2)


def test_default_cache_is_block_for_block_causal_families():
    out = dllm.generate(random_model("sdar", 1), [[20, 21]], gen_length=8)
    assert out.stats.cache["cache"] == "block"
    out = dllm.generate(random_model("llada", 1), [[20, 21]], gen_length=8)
    assert out.stats.cache["cache"] == "none"


# --------------------------------------------------------------------------------------------------
# the goldens' cached-path logits, reproduced through the cache plug-ins by the engine
# --------------------------------------------------------------------------------------------------
class Scripted(dllm.samplers.Sampler):
    """Commits the tokens of a scripted sequence of canvases (goldens x1, x2, ...), then everything."""

    name = "scripted"

    def __init__(self, targets, offset):
        self.targets, self.offset, self.calls = targets, offset, 0

    def select(self, view):
        start, end = view.span
        if self.calls < len(self.targets):
            target = self.targets[self.calls][:, start - self.offset:end - self.offset]
            commit = view.masked & (target != view.mask_id)
            tokens = torch.where(commit, target, view.x0)
        else:
            commit, tokens = view.masked, view.x0
        self.calls += 1
        return commit, tokens


def shifted(raw, previous):
    """Engine logits for a span from raw outputs: column i reads the output at i-1."""
    return torch.cat([previous[:, None], raw[:, :-1]], dim=1)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_fast_dllm_v1_cached_logits_through_the_cache(family, cache):
    g = load_file(str(GOLDENS / family / "goldens.safetensors"))
    model = dllm.load(GOLDENS / family)
    start, end = int(g["cache_block_start"]), int(g["cache_block_end"])
    x0 = g["cache_x0"]
    recorder = LogitRecorder()
    prompts = x0[:, :start].tolist()
    dllm.generate(model, prompts, sampler=Scripted([g["cache_x1"], g["cache_x2"]], 0), cache=cache,
                  gen_length=x0.shape[1] - start, block_length=end - start, processors=[recorder], eos_ids=())
    (_, _, step0), (_, _, step1), (_, _, step2) = recorder.steps[:3]
    step_logits = {1: g[f"{cache}_step1_logits"][:, : end - start], 2: g[f"{cache}_step2_logits"][:, : end - start]}
    prefill = g["cache_prefill_logits"]
    if model.logit_shift:
        opening = prefill[:, start - 1]
        expected = [prefill[:, start - 1:end - 1], shifted(step_logits[1], opening), shifted(step_logits[2], opening)]
    else:
        expected = [prefill[:, start:end], step_logits[1], step_logits[2]]
    for actual, wanted in zip((step0, step1, step2), expected):
        assert (actual - wanted).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["fast_dllm_v2", "fast_dllm_v2_tied"])
def test_fast_dllm_v2_cached_logits_through_the_block_cache(family):
    """Fused prefill + window, sub-block steps (write at slots), the block commit's AR token, next block."""
    g = load_file(str(GOLDENS / family / "goldens.safetensors"))
    model = dllm.load(GOLDENS / family)
    prompt = g["v2_prompt_ids"]
    masks = torch.full((2, 8), model.mask_id)
    head = prompt[:, :8]
    window = lambda block: torch.cat([head, block, masks], 1)
    targets = [window(torch.cat([prompt[:, 8:12], g["v2_subblock_step1_input_ids"]], 1)),
               window(torch.cat([prompt[:, 8:12], g["v2_subblock_step2_input_ids"]], 1)),
               window(g["v2_commit_input_ids"]),
               window(g["v2_commit_input_ids"])]  # the AR step: the engine commits only the opening token
    recorder = LogitRecorder()
    out = dllm.generate(model, prompt.tolist(), sampler=Scripted(targets, 0), cache="block", sub_block=4,
                        gen_length=24 - prompt.shape[1], processors=[recorder], eos_ids=(), return_trajectory=True)
    assert [s.feed for s in out.trajectory.steps][:5] == [(0, 16), (12, 4), (12, 4), (8, 16), (16, 8)]
    logits = [step for _, _, step in recorder.steps]
    block = g["v2_block_step_logits"]
    close = lambda a, b: (a - b).abs().max().item() <= 1e-5
    assert close(logits[0], block[:, 3:7])  # window forward (fused with the prefill), columns 12..15
    assert close(logits[1], shifted(g["v2_subblock_step1_logits"], block[:, 3]))
    assert close(logits[2], shifted(g["v2_subblock_step2_logits"], block[:, 3]))
    # the commit of block 8..15 is fused with the next window: column 16 reads the commit's last output,
    # and its greedy token (the AR token) opens block 16..23
    assert close(logits[3][:, 0], g["v2_commit_logits"][:, -1])
    assert [c[0] for c in out.trajectory.steps[3].commits] == [(16, int(t)) for t in g["v2_commit_next_token"][:, 0]]
    assert close(logits[4], shifted(g["v2_next_block_logits"], g["v2_commit_logits"][:, -1])[:, :4])


def test_sdar_cached_logits_through_the_block_cache():
    g = load_file(str(GOLDENS / "sdar" / "goldens.safetensors"))
    model = dllm.load(GOLDENS / "sdar")
    prompt = g["sdar_x0"][:, :10]
    head, masks = g["sdar_prefill_input_ids"], torch.full((2, 4), model.mask_id)
    targets = [torch.cat([head, g["sdar_step2_input_ids"], masks], 1),
               torch.cat([head, g["sdar_commit_input_ids"], masks], 1)]
    recorder = LogitRecorder()
    out = dllm.generate(model, prompt.tolist(), sampler=Scripted(targets, 0), cache="block", gen_length=6,
                        processors=[recorder], eos_ids=(), return_trajectory=True)
    logits = [step for _, _, step in recorder.steps]
    assert [s.feed for s in out.trajectory.steps][:3] == [(0, 12), (8, 4), (8, 8)]
    close = lambda a, b: (a - b).abs().max().item() <= 1e-5
    assert close(logits[0], g["sdar_step1_logits"])  # prefill (append) fused with the read-only block step
    assert close(logits[1], g["sdar_step2_logits"])  # read-only step: the cache was not extended
    assert close(logits[2], g["sdar_next_block_logits"])  # block 8..11 appended in the same forward
