"""MoE expert dispatch: the grouped (sort-by-expert) path and the dense fallback equal a per-expert reference."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import dllm
from dllm.models import network
from dllm.models.network import routed_experts

from conftest import GOLDENS


def reference(x, idx, weights, gate, up, down):
    """Token by token, slot by slot: sum_j w[n, j] * expert_{idx[n, j]}(x[n]) in fp32."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for n in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[n, j])
            y = F.linear(F.silu(F.linear(x[n], gate[e])) * F.linear(x[n], up[e]), down[e])
            out[n] += weights[n, j] * y.float()
    return out


def case(n, experts, k, hidden=16, inner=8, dtype=torch.float32, only=None, seed=0):
    """Random inputs; ``only`` restricts routing to a subset of experts (the others get no token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, hidden, generator=g).to(dtype)
    gate = (torch.randn(experts, inner, hidden, generator=g) / hidden**0.5).to(dtype)
    up = (torch.randn(experts, inner, hidden, generator=g) / hidden**0.5).to(dtype)
    down = (torch.randn(experts, hidden, inner, generator=g) / inner**0.5).to(dtype)
    pool = torch.tensor(only if only is not None else range(experts))
    scores = torch.rand(n, len(pool), generator=g)
    idx = pool[scores.topk(k, dim=-1).indices]
    weights = torch.rand(n, k, generator=g)
    return x, idx, weights, gate, up, down


def paths():
    available = network.grouped_mm_available(torch.device("cpu"), torch.float32)
    return [False, True] if available else [False]


@pytest.mark.parametrize("grouped", paths())
@pytest.mark.parametrize("n, experts, k, only", [(1, 4, 1, None), (7, 8, 2, None), (33, 16, 4, None),
                                                  (12, 8, 2, [2, 5, 6]), (5, 8, 3, [7, 0, 3])])
def test_dispatch_equals_the_per_token_reference(grouped, n, experts, k, only):
    args = case(n, experts, k, only=only)
    out = routed_experts(*args, grouped=grouped)
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    assert (out - reference(*args)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("grouped", paths())
def test_no_tokens(grouped):
    x, idx, weights, gate, up, down = case(0, 8, 2)
    assert routed_experts(x, idx, weights, gate, up, down, grouped=grouped).shape == (0, 16)


@pytest.mark.parametrize("grouped", paths())
def test_bf16_close_to_fp32(grouped):
    args32 = case(24, 8, 2, hidden=32, inner=16)
    args16 = tuple(a.bfloat16() if a.is_floating_point() and i != 2 else a for i, a in enumerate(args32))
    out = routed_experts(*args16, grouped=grouped)
    assert (out - reference(*args32)).abs().max().item() <= 5e-2


def test_both_paths_agree_and_are_batch_invariant():
    """A token's output does not depend on which other tokens share the forward (no atomics, fixed order)."""
    x, idx, weights, gate, up, down = case(40, 8, 2)
    for grouped in paths():
        full = routed_experts(x, idx, weights, gate, up, down, grouped=grouped)
        part = routed_experts(x[5:9], idx[5:9], weights[5:9], gate, up, down, grouped=grouped)
        assert (full[5:9] - part).abs().max().item() <= 1e-6
    if len(paths()) == 2:
        a = routed_experts(x, idx, weights, gate, up, down, grouped=True)
        b = routed_experts(x, idx, weights, gate, up, down, grouped=False)
        assert (a - b).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_goldens_logits_through_the_dense_fallback(family, monkeypatch):
    """The fallback (torch builds without ``_grouped_mm``) reproduces the reference logits too."""
    monkeypatch.setattr(network, "grouped_mm_available", lambda device, dtype: False)
    g = load_file(str(GOLDENS / family / "goldens.safetensors"))
    model = dllm.load(GOLDENS / family, block_size=8 if family == "llada2" else None)
    mask = g.get("full_attention_mask") if family == "llada2" else None
    out = model.logits(g["full_input_ids"], mask, g.get("full_position_ids"))
    assert (out - g["full_logits"]).abs().max().item() <= 1e-5


def test_grouped_mm_probe_is_cached():
    first = network.grouped_mm_available(torch.device("cpu"), torch.float32)
    assert network._GROUPED_MM_WORKS[("cpu", torch.float32)] is first
    assert network.grouped_mm_available(torch.device("cpu"), torch.float32) is first
