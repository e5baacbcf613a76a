"""FreeDave: lossless draft-and-verify (tokens equal static one-token-per-step decoding with the same cache),
batched and ragged, every family and cache; the reference decodes; FreeDave++; statistics; bad input."""

import json
import random
from dataclasses import dataclass

import pytest
import torch

import dllm
from dllm.samplers.freedave import acceptance

from conftest import DECODES
from helpers import FAMILY_SOURCES, one_line_error, random_model, random_prompts

FULL_CACHES = [("none", {}), ("prefix", {}), ("dual", {})]
BLOCK_CACHES = [("none", {}), ("block", {}), ("block", {"sub_block": 4})]
CASES = [(family, cache, options) for family in FAMILY_SOURCES for cache, options in
         (BLOCK_CACHES if family in ("fast_dllm_v2", "sdar", "llada2") else FULL_CACHES)]


def eos_bias(model, amount):
    """A logit processor that makes the model's EOS frequent (exercises rows retiring mid-chain)."""
    eos = torch.tensor(model.eos_ids[:1])
    return lambda logits, ctx: logits.index_add(-1, eos, torch.full(logits.shape[:-1] + (1,), amount))


# --------------------------------------------------------------------------------------------------
# losslessness, as a property over random models, prompts, batch sizes and draft lengths
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trial", [0, 1])
@pytest.mark.parametrize("family,cache,options", CASES, ids=[f"{f}-{c}{'-sub' if o else ''}" for f, c, o in CASES])
def test_freedave_equals_static_token_for_token(family, cache, options, trial):
    seed = sum(map(ord, family + cache + str(options))) + 1000 * trial
    rng = random.Random(seed)
    model = random_model(family, seed, sharpness=rng.choice([4.0, 8.0, 16.0]))
    prompts = random_prompts(model, rng.randint(1, 8), seed + 1)
    kw = dict(cache=cache, gen_length=16, **options)
    if model.attention == "full":
        kw["block_length"] = 8
    if rng.random() < 0.5:
        kw["processors"] = [eos_bias(model, rng.choice([2.0, 4.0]))]
    static = dllm.generate(model, prompts, sampler="static", **kw)
    for d in (1, 2, 4, 8):
        out = dllm.generate(model, prompts, sampler="freedave", draft_steps=d, **kw)
        assert out.canvases == static.canvases, (d, kw)
        assert out.status == static.status
        lengths = out.stats.counters.get("accepted", [])
        assert all(1 <= n <= d for n in lengths)
        assert out.stats.nfe <= static.stats.nfe
        if d == 1:
            assert out.stats.nfe == static.stats.nfe and out.stats.row_nfe == static.stats.row_nfe


def test_a_chain_stops_where_static_decoding_retires_the_row():
    """A row whose EOS lands with nothing masked before it retires at once (MASK left after it); the accepted
    chain must not run past that state, or the canvas would hold tokens static decoding never decoded."""
    model = random_model("dream", 0, sharpness=8.0)
    prompts = random_prompts(model, 6, 0)
    kw = dict(cache="none", gen_length=16, block_length=8, processors=[eos_bias(model, 2.0)])
    static = dllm.generate(model, prompts, sampler="static", **kw)
    out = dllm.generate(model, prompts, sampler="freedave", draft_steps=4, **kw)
    assert any(model.mask_id in c for c in static.canvases)  # some row retired before its canvas was full
    assert out.canvases == static.canvases and out.status == static.status


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_freedave_on_the_embedded_model(cache):
    model = dllm.load("tiny")
    prompts = ["Sort: 3 1 2\n", "Sort: 9 4 7 1\n", "Reverse: abc\n", "Sort: 5 2\n", "Copy: hello\n"]
    static = dllm.generate(model, prompts, sampler="static", cache=cache)
    for d in (1, 2, 4, 8):
        out = dllm.generate(model, prompts, sampler="freedave", draft_steps=d, cache=cache)
        assert out.texts == static.texts and out.canvases == static.canvases
        assert (out.stats.nfe == static.stats.nfe) if d == 1 else (out.stats.nfe < static.stats.nfe)
    assert out.stats.nfe <= 0.6 * static.stats.nfe  # near-saturated confidences: long chains are accepted
    assert acceptance(out.stats)["mean"] > 2


@pytest.mark.parametrize("family,cache", [("llada", "dual"), ("llada", "none"), ("dream", "prefix"),
                                          ("fast_dllm_v2", "block"), ("sdar", "none")])
def test_per_row_nfe_is_what_the_row_costs_alone(family, cache):
    model = random_model(family, 41)
    prompts = random_prompts(model, 5, 42)
    kw = dict(sampler="freedave", draft_steps=4, cache=cache, gen_length=16, processors=[eos_bias(model, 3.0)])
    if model.attention == "full":
        kw["block_length"] = 8
    batch = dllm.generate(model, prompts, **kw)
    alone = [dllm.generate(model, [p], **kw) for p in prompts]
    assert batch.canvases == [a.canvases[0] for a in alone]
    assert batch.stats.row_nfe == [a.stats.row_nfe[0] for a in alone]
    assert sorted(batch.stats.counters["accepted"]) == sorted(n for a in alone for n in a.stats.counters["accepted"])


def test_handed_over_steps_cost_no_forward():
    model = random_model("llada", 43, sharpness=16.0)
    prompts = random_prompts(model, 3, 44)
    stream = dllm.stream(model, prompts, sampler="freedave", cache="dual", gen_length=16, block_length=8)
    events = list(stream)
    assert any(not e.forward for e in events)
    assert stream.result.stats.nfe == events[-1].nfe
    # every engine step costs its real forward (if any) plus at most one verification
    previous = 0
    for event in events:
        assert event.nfe - previous <= 1 + event.forward
        previous = event.nfe


# --------------------------------------------------------------------------------------------------
# the reference decodes (cychomatica/FreeDave, batch 1, tree attention, D = 4)
# --------------------------------------------------------------------------------------------------
def reference_style(events, steps):
    """Our steps regrouped as the reference records them: one entry per forward (refresh forwards with no
    commits, each verification with the chain it accepted and a block's free last token)."""
    entries, kinds, previous = [], [], 0
    for event, step in zip(events, steps):
        fresh = event.nfe - previous
        previous = event.nfe
        for k in range(fresh):
            entries.append([])
            kinds.append("refresh" if event.forward and k == 0 else "verify")
        entries[-1].extend([p, t] for p, t in step.commits[0])
    return [sorted(e) for e in entries], kinds


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_reference_decodes(cache):
    ref = json.loads((DECODES / "llada_peaky" / f"freedave_llada_{cache}cache_d4.json").read_text())
    model = dllm.load(DECODES / "llada_peaky")
    kw = dict(cache=cache, gen_length=ref["gen_length"], block_length=ref["block_length"])
    for case in ref["per_prompt_calls"]:
        static = dllm.generate(model, [case["prompt_ids"]], sampler="static", **kw)
        assert static.canvases[0] == case["static"]["sequence"] and static.stats.nfe == case["static"]["nfe"]
        stream = dllm.stream(model, [case["prompt_ids"]], sampler="freedave",
                             draft_steps=ref["call"]["freedave_only"]["draft_steps"], return_trajectory=True, **kw)
        events = list(stream)
        out, mine = stream.result, case["freedave"]
        assert out.canvases[0] == mine["sequence"]
        assert out.stats.nfe == mine["nfe"]
        entries, kinds = reference_style(events, out.trajectory.steps)
        assert entries == [sorted(e) for e in mine["trajectory"]]
        assert [len(e) for e in entries] == mine["tokens_per_step"]
        assert kinds == ["refresh" if start is not None else "verify" for start, _ in mine["forwards"]]
        # accepted lengths: the reference counts a block's free last token with the verification before it
        verified = [n for n, (start, _) in zip(mine["tokens_per_step"], mine["forwards"]) if start is None]
        free = [len(entries[i]) - n for i, n in zip((i for i, k in enumerate(kinds) if k == "verify"),
                                                   out.stats.counters["accepted"])]
        assert [n + f for n, f in zip(out.stats.counters["accepted"], free)] == verified
        assert set(free) <= {0, 1}


# --------------------------------------------------------------------------------------------------
# FreeDave++ (threshold base step, subset verification; not lossless)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,cache", [("llada", "dual"), ("dream", "none"), ("fast_dllm_v2", "block")])
def test_freedave_plus_with_one_draft_is_threshold_decoding(family, cache):
    model = random_model(family, 45)
    prompts = random_prompts(model, 4, 46)
    kw = dict(cache=cache, gen_length=16)
    if model.attention == "full":
        kw["block_length"] = 8
    for threshold in (0.5, 0.8):
        plain = dllm.generate(model, prompts, sampler="threshold", threshold=threshold, **kw)
        one = dllm.generate(model, prompts, sampler="freedave_plus", threshold=threshold, draft_steps=1, **kw)
        assert one.canvases == plain.canvases and one.stats.nfe == plain.stats.nfe
        more = dllm.generate(model, prompts, sampler="freedave_plus", threshold=threshold, draft_steps=4, **kw)
        assert all(model.mask_id not in c[-16:] or s != "length" for c, s in zip(more.canvases, more.status))
        assert more.stats.sampler == {"sampler": "freedave_plus", "draft_steps": 4, "draft_mode": "batch_expanding",
                                      "threshold": threshold}


def test_freedave_plus_above_one_is_freedave():
    model = random_model("llada", 47)
    prompts = random_prompts(model, 3, 48)
    kw = dict(cache="dual", gen_length=16, block_length=8, draft_steps=4)
    assert (dllm.generate(model, prompts, sampler="freedave_plus", threshold=1.01, **kw).canvases
            == dllm.generate(model, prompts, sampler="freedave", **kw).canvases)


# --------------------------------------------------------------------------------------------------
# statistics and bad input
# --------------------------------------------------------------------------------------------------
def test_accepted_lengths_reach_the_statistics():
    model = dllm.load("tiny")
    out = dllm.generate(model, ["Sort: 3 1 2\n", "Sort: 5 2\n"], sampler="freedave", draft_steps=4)
    summary = acceptance(out.stats)
    lengths = out.stats.counters["accepted"]
    assert summary["verifications"] == len(lengths) and sum(summary["histogram"].values()) == len(lengths)
    assert summary["mean"] == pytest.approx(sum(lengths) / len(lengths))
    assert out.stats.as_dict()["counter_summaries"]["accepted"]["histogram"] == summary["histogram"]
    assert set(summary["histogram"]) <= {1, 2, 3, 4}


@dllm.caches.register("no_hypotheses_test", fits=("full",), exact=True)
@dataclass
class NoHypotheses(dllm.caches.Cache):
    serves_hypotheses = False

    def plan(self, ctx):
        return dllm.caches.Feed(0, ctx.width, ephemeral=True)


def test_bad_input_errors():
    model = random_model("llada", 49)
    prompts = random_prompts(model, 2, 50)
    kw = dict(sampler="freedave", gen_length=16, block_length=8)
    for bad in (0, -1, 2.5, "x", True):
        one_line_error(ValueError, lambda: dllm.generate(model, prompts, **kw, draft_steps=bad), "draft_steps")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, **kw, draft_mode="tree_attention"),
                   "tree_attention", "batch_expanding")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, **kw, temperature=0.7, seed=1),
                   "greedy", "temperature=0")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, **kw, cfg_scale=1.0), "guidance")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, **kw, modifiers=["eoser"]), "eoser")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, **kw, cache="no_hypotheses_test"),
                   "no_hypotheses_test", "hypothesis")
    one_line_error(ValueError, lambda: dllm.generate(model, prompts, sampler="freedave_plus", threshold=-0.5,
                                                     gen_length=16, block_length=8), "threshold")
