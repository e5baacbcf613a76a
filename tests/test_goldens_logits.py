"""Native network vs the reference implementations' fp32 logits (tests/data/goldens, atol 1e-5)."""

import pytest
import torch
from safetensors.torch import load_file

import dllm
from dllm.models import KVCache
from dllm.models.masks import attention_mask

from conftest import FAMILY_DIRS, GOLDENS

ATOL = 1e-5


def goldens(family):
    return load_file(str(GOLDENS / ("llada" if family == "llada_sharded" else family) / "goldens.safetensors"))


def load(family, **kw):
    return dllm.load(GOLDENS / family, **kw)


def close(actual, expected, rows=None):
    if rows is not None:
        actual, expected = actual[rows], expected[rows]
    diff = (actual - expected).abs().max().item()
    assert diff <= ATOL, f"max |diff| {diff:.3g} > {ATOL}"


def positions(start, length, batch=2):
    return torch.arange(start, start + length).expand(batch, length)


@pytest.mark.parametrize("family", FAMILY_DIRS)
def test_full_forward(family):
    block = 8 if family == "llada2" else None
    model, g = load(family, block_size=block), goldens(family)
    mask = g.get("full_attention_mask") if family in ("sdar", "llada2") else None
    close(model.logits(g["full_input_ids"], mask, g.get("full_position_ids")), g["full_logits"])


@pytest.mark.parametrize("family", ["fast_dllm_v2", "fast_dllm_v2_tied", "sdar", "llada2"])
def test_block_causal_mask_is_built_from_the_checkpoint_block_size(family):
    """Without an explicit mask the model applies its own block-causal pattern (LLaDA2: block 8 passed)."""
    model, g = load(family, block_size=8 if family == "llada2" else None), goldens(family)
    close(model.logits(g["full_input_ids"]), g["full_logits"])


@pytest.mark.parametrize("family", ["llada", "llada_sharded", "dream", "llada_moe"])
def test_left_padded_batch(family):
    model, g = load(family), goldens(family)
    mask = g.get("pad_attention_mask_4d", g["pad_attention_mask"])
    out = model.logits(g["pad_input_ids"], mask, g["pad_position_ids"])
    close(out, g["pad_logits"], rows=g["pad_attention_mask"].bool())


@pytest.mark.parametrize("family", ["sdar", "llada2"])
@pytest.mark.parametrize("mask_kind", ["2d", "4d"])
def test_explicit_padding_with_block_causal_mask(family, mask_kind):
    model, g = load(family, block_size=8 if family == "llada2" else None), goldens(family)
    mask = g["xpad_attention_mask"] if mask_kind == "2d" else g["xpad_attention_mask_4d"]
    out = model.logits(g["xpad_input_ids"], mask, g["xpad_position_ids"])
    close(out, g["xpad_logits"], rows=g["xpad_attention_mask"].bool())


@pytest.mark.parametrize("family", ["llada_moe", "llada2"])
def test_router_choices(family):
    model, g = load(family, block_size=8 if family == "llada2" else None), goldens(family)
    mask = g.get("full_attention_mask")
    logits, idx, weights = model.router(g["full_input_ids"], int(g["router_layer"]), mask, g.get("full_position_ids"))
    close(logits, g["router_logits"])
    assert torch.equal(idx, g["router_topk_idx"])
    assert (weights - g["router_topk_weight"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_fast_dllm_v1_prefix_cache_path(family):
    """Prefill the full canvas, keep only the prefix (stale), then feed the suffix in read-only mode."""
    model, g = load(family), goldens(family)
    net, start = model.network, int(g["cache_block_start"])
    x0, x1, x2 = g["cache_x0"], g["cache_x1"], g["cache_x2"]
    length = x0.shape[1]
    cache = KVCache.for_network(net, 2, length)
    close(net(x0, positions(0, length), None, cache, cache.append(length)), g["cache_prefill_logits"])
    cache.crop(start)
    for step, x in ((1, x1), (2, x2)):
        assert torch.equal(x[:, start:], g[f"prefix_step{step}_input_ids"])
        out = net(x[:, start:], positions(start, length - start), None, cache, cache.read(length - start))
        close(out, g[f"prefix_step{step}_logits"])
        assert cache.length == start


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_fast_dllm_v1_dual_cache_path(family):
    """Full-length cache; each step writes the block's K/V at its slots and attends over everything."""
    model, g = load(family), goldens(family)
    net = model.network
    start, end = int(g["cache_block_start"]), int(g["cache_block_end"])
    x0 = g["cache_x0"]
    length = x0.shape[1]
    cache = KVCache.for_network(net, 2, length)
    net(x0, positions(0, length), None, cache, cache.append(length))
    for step, x in ((1, g["cache_x1"]), (2, g["cache_x2"])):
        assert torch.equal(x[:, start:end], g[f"dual_step{step}_input_ids"])
        write = cache.at_slots(start, end - start, key_len=length)
        close(net(x[:, start:end], positions(start, end - start), None, cache, write), g[f"dual_step{step}_logits"])


def block_mask(model, q_start, q_len, k_len):
    return attention_mask(positions(q_start, q_len), positions(0, k_len), None, model.block_size)


@pytest.mark.parametrize("family", ["fast_dllm_v2", "fast_dllm_v2_tied"])
def test_fast_dllm_v2_cache_paths(family):
    """Prefill (append), read-only block step, sub-block steps (write at slots), commit (append), next block."""
    model, g = load(family), goldens(family)
    net, bs = model.network, model.block_size
    cache = KVCache.for_network(net, 2, 24)
    ids = g["v2_prefill_input_ids"]
    close(net(ids, positions(0, bs), block_mask(model, 0, bs, bs), cache, cache.append(bs)), g["v2_prefill_logits"])
    ids = g["v2_block_step_input_ids"]
    close(net(ids, positions(bs, bs), block_mask(model, bs, bs, 2 * bs), cache, cache.read(bs)), g["v2_block_step_logits"])
    assert cache.length == bs
    r = int(g["v2_subblock_replace_position"])
    sub = g["v2_subblock_step1_input_ids"].shape[1]
    for step in (1, 2):
        ids = g[f"v2_subblock_step{step}_input_ids"]
        write = cache.at_slots(bs + r, sub, key_len=2 * bs)
        close(net(ids, positions(bs + r, sub), None, cache, write), g[f"v2_subblock_step{step}_logits"])
    ids = g["v2_commit_input_ids"]
    out = net(ids, positions(bs, bs), block_mask(model, bs, bs, 2 * bs), cache, cache.append(bs))
    close(out, g["v2_commit_logits"])
    assert torch.equal(out[:, -1].argmax(-1, keepdim=True), g["v2_commit_next_token"])
    assert cache.length == 2 * bs
    ids = g["v2_next_block_input_ids"]
    out = net(ids, positions(2 * bs, bs), block_mask(model, 2 * bs, bs, 3 * bs), cache, cache.read(bs))
    close(out, g["v2_next_block_logits"])


def test_sdar_cache_paths():
    model, g = load("sdar"), goldens("sdar")
    net, bs = model.network, model.block_size
    cache = KVCache.for_network(net, 2, 24)
    close(net(g["sdar_prefill_input_ids"], positions(0, 8), block_mask(model, 0, 8, 8), cache, cache.append(8)),
          g["sdar_prefill_logits"])
    for step in (1, 2):
        out = net(g[f"sdar_step{step}_input_ids"], positions(8, bs), block_mask(model, 8, bs, 8 + bs), cache, cache.read(bs))
        close(out, g[f"sdar_step{step}_logits"])
        assert cache.length == 8
    out = net(g["sdar_commit_input_ids"], positions(8, bs), block_mask(model, 8, bs, 12), cache, cache.append(bs))
    close(out, g["sdar_commit_logits"])
    out = net(g["sdar_next_block_input_ids"], positions(12, bs), block_mask(model, 12, bs, 16), cache, cache.read(bs))
    close(out, g["sdar_next_block_logits"])


def test_block_causal_cache_equals_uncached_forward():
    """Invariant: prefix blocks in the cache + a read-only block step == the full block-causal forward."""
    model, g = load("sdar"), goldens("sdar")
    net, bs = model.network, model.block_size
    x = g["full_input_ids"]
    full = model.logits(x)
    cache = KVCache.for_network(net, 2, 24)
    net(x[:, :12], positions(0, 12), block_mask(model, 0, 12, 12), cache, cache.append(12))
    out = net(x[:, 12:16], positions(12, bs), block_mask(model, 12, bs, 16), cache, cache.read(bs))
    close(out, full[:, 12:16])


def test_at_slots_then_full_attention_equals_recompute():
    """Writing fresh K/V for every slot reproduces an uncached forward of the same tokens."""
    model, g = load("llada"), goldens("llada")
    net, x = model.network, g["full_input_ids"]
    cache = KVCache.for_network(net, 2, 24)
    net(g["cache_x0"], positions(0, 24), None, cache, cache.append(24))
    out = net(x, positions(0, 24), None, cache, cache.at_slots(0, 24, key_len=24))
    close(out, g["full_logits"])
