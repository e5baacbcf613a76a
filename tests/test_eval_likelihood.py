"""The Monte-Carlo ELBO log-likelihood (spec §1.9), the greedy check and the rolling windows."""

import itertools
import math

import pytest
import torch

import dllm
from dllm.eval.likelihood import aligned_logits, greedy_matches, mask_counts, mc_loglikelihood, rolling_windows

from helpers import random_model

FAMILIES = ["llada", "dream", "fast_dllm_v2"]  # no shift / logit shift / shift + block-causal attention


def direct_logprob(model, prefix, target_token, cfg_scale=0.0):
    """log p(token | prefix) read straight from the network: the masked position's own logits (or, for
    shifted families, the previous position's), with CFG done by hand."""
    ids = torch.tensor([prefix + [model.mask_id]])
    cond = model.logits(ids)[0]
    position = len(prefix) - 1 if model.logit_shift else len(prefix)
    z = cond[position]
    if cfg_scale:
        free_ids = ids.clone()
        free_ids[0, : len(prefix)] = model.mask_id
        free = model.logits(free_ids)[0][position]
        z = free + (cfg_scale + 1) * (z - free)
    return float(torch.log_softmax(z.float(), -1)[target_token])


@pytest.mark.parametrize("family", FAMILIES)
def test_single_token_estimate_is_the_exact_logprob(family):
    model = random_model(family, 1)
    prefix, token = [20, 31, 42, 53, 64], 75
    for mc_num, batch in ((1, 1), (8, 4)):
        ll, forwards = mc_loglikelihood(model, prefix, [token], mc_num=mc_num, batch_size=batch)
        assert ll == pytest.approx(direct_logprob(model, prefix, token), abs=1e-5)
        assert forwards == mc_num // batch


def test_cfg_follows_the_unsupervised_guidance_formula():
    model = random_model("llada", 2)
    prefix, token = [20, 31, 42], 60
    ll, _ = mc_loglikelihood(model, prefix, [token], mc_num=2, batch_size=2, cfg_scale=1.5)
    assert ll == pytest.approx(direct_logprob(model, prefix, token, cfg_scale=1.5), abs=1e-5)


def exact_elbo(model, prefix, target):
    """The estimator's expectation by enumeration: mask count m uniform in 1..L, then a uniform subset."""
    p, length = len(prefix), len(target)
    total = 0.0
    for m in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), m))
        for subset in subsets:
            ids = torch.tensor([prefix + target])
            for j in subset:
                ids[0, p + j] = model.mask_id
            logp = torch.log_softmax(aligned_logits(model, ids)[0, p:], -1)
            loss = -sum(float(logp[j, target[j]]) for j in subset) * length / m
            total += loss / len(subsets) / length
    return -total


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_estimate_converges_to_the_elbo(family):
    model = random_model(family, 3, sharpness=2.0)
    prefix, target = [21, 33, 45, 57], [70, 81, 92]
    expected = exact_elbo(model, prefix, target)
    estimate, _ = mc_loglikelihood(model, prefix, target, mc_num=3072, batch_size=96, seed=0)
    assert estimate == pytest.approx(expected, rel=0.02)


def test_mask_counts_are_stratified_and_cover_every_row():
    gen = torch.Generator().manual_seed(0)
    for length, rows in ((5, 5), (10, 4), (3, 8), (1, 4)):
        for _ in range(20):
            counts = mask_counts(length, rows, gen)
            assert counts.min() >= 1 and counts.max() <= length
            if rows == length:  # evenly spaced with step 1: a permutation of 1..L
                assert sorted(counts.tolist()) == list(range(1, length + 1))


def test_estimates_are_deterministic_per_request_and_seed():
    model = random_model("llada", 4)
    prefix, target = [20, 30, 40], [50, 60, 70, 80]
    first = mc_loglikelihood(model, prefix, target, mc_num=16, batch_size=4, seed=7)
    assert mc_loglikelihood(model, prefix, target, mc_num=16, batch_size=4, seed=7) == first
    assert mc_loglikelihood(model, prefix, target, mc_num=16, batch_size=4, seed=8)[0] != first[0]


def test_bad_mc_batch_is_a_one_line_error():
    model = random_model("llada", 0)
    with pytest.raises(ValueError, match="multiple of the MC batch size"):
        mc_loglikelihood(model, [20], [30, 31], mc_num=10, batch_size=4)


def test_greedy_check_recognises_the_models_own_greedy_answer():
    model = random_model("llada", 5)
    prefix = [22, 33, 44, 55]
    out = dllm.generate(model, [prefix], gen_length=6, block_length=6, steps=6, sampler="static", eos_ids=[])
    answer = out.canvases[0][len(prefix):]
    assert model.mask_id not in answer
    assert greedy_matches(model, prefix, answer) == (True, 6)
    wrong = list(answer)
    wrong[-1] = 90 if wrong[-1] != 90 else 91
    matched, forwards = greedy_matches(model, prefix, wrong)
    assert not matched and forwards <= 6


def test_rolling_windows_cover_each_token_once_within_the_context():
    tokens = list(range(10, 47))
    windows = rolling_windows(tokens, prefix_token=0, max_length=8)
    assert [t for _, continuation in windows for t in continuation] == tokens
    assert all(len(c) + len(t) <= 9 and c for c, t in windows)
    assert math.ceil(len(tokens) / 8) <= len(windows)
