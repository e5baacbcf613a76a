"""A second, independent oracle: stock transformers decoders (no remote code) on random tiny configs.

Each test draws a random tiny config, builds the stock transformers model (Qwen2 / Qwen3 / Llama), randomises
every tensor (norm weights 1 + noise, biases, embeddings), writes the same weights as a checkpoint directory in
the dLLM family's own on-disk format (config.json keys and tensor names), loads that directory with
``dllm.load`` and compares fp32 logits within 1e-5. Stock transformers is made bidirectional with
``config.is_causal = False`` or given the attention pattern as an explicit 4D bool mask (True = attend),
see specs/models.md §8(a).
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

import dllm

from conftest import GOLDENS

ATOL = 1e-5
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_VOCAB = 128  # the goldens tokenizers (copied next to each random checkpoint) have 128 entries
SEEDS = [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# random configs and weights
# --------------------------------------------------------------------------------------------------
def random_dims(seed: int, *, gqa: bool | None = None) -> dict:
    """Tiny but irregular dimensions; ``gqa`` forces (True) or forbids (False) n_kv_heads < n_heads."""
    rng = random.Random(seed)
    heads = rng.choice([2, 4, 6])
    kv_choices = [k for k in range(1, heads + 1) if heads % k == 0]
    if gqa is True:
        kv_choices = [k for k in kv_choices if k < heads]
    elif gqa is False:
        kv_choices = [heads]
    head_dim = rng.choice([8, 12, 16])
    return {
        "layers": rng.choice([1, 2, 3]),
        "heads": heads,
        "kv_heads": rng.choice(kv_choices),
        "head_dim": head_dim,
        "hidden": heads * head_dim,
        "inter": rng.choice([40, 64, 88]),
        "vocab": rng.choice([TOKENIZER_VOCAB, TOKENIZER_VOCAB + 32]),
        "theta": rng.choice([10000.0, 500000.0, 1000000.0]),
        "eps": rng.choice([1e-6, 1e-5]),
        "block": rng.choice([2, 3, 4, 8]),
        "length": rng.choice([13, 16, 21]),
    }


def randomise_(model: torch.nn.Module, seed: int, embed_std: float = 0.5) -> dict[str, torch.Tensor]:
    """Overwrite every tensor of ``model`` with random values; returns its (randomised) state dict."""
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    new = {}
    for name, tensor in state.items():
        noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            value = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.1 * noise
        elif "embed_tokens" in name:
            value = embed_std * noise
        else:
            scale = 1.5 if any(p in name for p in ("q_proj", "k_proj")) else 1.0
            value = scale * noise / tensor.shape[-1] ** 0.5
        new[name] = value
    model.load_state_dict(new, strict=True)
    if getattr(model.config, "tie_word_embeddings", False):
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def stock(cls, config, attn: str):
    model = cls._from_config(config, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


def write_checkpoint(directory, config: dict, tensors: dict[str, torch.Tensor], tokenizer_from: str):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy(GOLDENS / tokenizer_from / name, directory / name)
    return directory


def random_ids(seed: int, batch: int, length: int, vocab: int = TOKENIZER_VOCAB) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


def block_causal(length: int, block: int, batch: int = 1) -> torch.Tensor:
    """[B, 1, L, L] bool: key j visible to query i iff floor(i/block) >= floor(j/block)."""
    idx = torch.arange(length) // block
    return (idx[:, None] >= idx[None, :]).expand(batch, 1, length, length)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rows: torch.Tensor | None = None):
    assert actual.dtype == torch.float32 and actual.shape == expected.shape, (actual.shape, expected.shape)
    if rows is not None:
        actual, expected = actual[rows], expected[rows]
    diff = (actual - expected.float()).abs().max().item()
    assert diff <= ATOL, f"max |native - stock| = {diff:.3g} > {ATOL}"


def load(directory, **kw):
    model = dllm.load(directory, dtype=torch.float32, device="cpu", **kw)
    assert model.dtype == torch.float32
    return model


# --------------------------------------------------------------------------------------------------
# family configs in their released on-disk format
# --------------------------------------------------------------------------------------------------
def qwen2_stock_config(d: dict, tie: bool = False) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=d["vocab"], hidden_size=d["hidden"], intermediate_size=d["inter"],
        num_hidden_layers=d["layers"], num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"],
        rms_norm_eps=d["eps"], rope_theta=d["theta"], max_position_embeddings=128, tie_word_embeddings=tie,
    )


def qwen_shape_keys(d: dict, hidden: int | None = None) -> dict:
    """The Qwen2-style keys Dream, Fast-dLLM v2 and SDAR all keep in config.json (sizes of ``d``)."""
    return {
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": d["hidden"] if hidden is None else hidden,
        "intermediate_size": d["inter"],
        "max_position_embeddings": 128,
        "max_window_layers": d["layers"],
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "num_key_value_heads": d["kv_heads"],
        "rms_norm_eps": d["eps"],
        "rope_scaling": None,
        "rope_theta": d["theta"],
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": d["vocab"],
    }


def dream_config(d: dict) -> dict:
    return {
        **qwen_shape_keys(d),
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream",
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "mask_token_id": 3,
        "dtype": "float32",
        "initializer_range": 0.02,
    }


def fast_dllm_v2_config(d: dict, tie: bool) -> dict:
    """Fast-dLLM v2 keeps Qwen2 keys plus bd_size; the mask id is *not* in config.json (tokenizer only)."""
    return {
        **qwen_shape_keys(d),
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig", "AutoModel": "modeling.Fast_dLLM_QwenModel",
                     "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
        "model_type": "Fast_dLLM_Qwen",
        "bd_size": d["block"],
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 2,
        "conplemenrary_mask": True,
        "dtype": "float32",
        "layer_types": ["full_attention"] * d["layers"],
        "tie_word_embeddings": tie,
        "use_cache": True,
    }


def sdar_config(d: dict, hidden: int) -> dict:
    return {
        **qwen_shape_keys(d, hidden),
        "architectures": ["SDARForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                     "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
        "model_type": "sdar",
        "attention_bias": False,
        "attn_implementation": "flex_attention",
        "block_size": d["block"],
        "bos_token_id": 0, "eos_token_id": 0, "mask_token_id": 5,
        "debug": False, "ep_size": 1, "fuse_cross_entropy": True, "micro_forward": False,
        "skip_checkpoint": False, "use_deepep": False,
        "head_dim": d["head_dim"],
        "torch_dtype": "float32",
    }


def llada_config(d: dict, embedding_size: int) -> dict:
    """OLMo-style keys as in LLaDA-8B's config.json."""
    return {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False, "alibi_bias_max": 8.0,
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": d["hidden"],
        "dtype": "float32",
        "embedding_dropout": 0.0,
        "embedding_size": embedding_size,
        "eos_token_id": 1, "pad_token_id": 1, "mask_token_id": 2,
        "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "max_sequence_length": 128,
        "mlp_hidden_size": d["inter"], "mlp_ratio": 4,
        "multi_query_attention": None,
        "n_heads": d["heads"], "n_kv_heads": d["kv_heads"], "n_layers": d["layers"],
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": d["eps"],
        "rope": True, "rope_full_precision": True, "rope_theta": d["theta"],
        "scale_logits": False,
        "use_cache": False,
        "vocab_size": d["vocab"],
        "weight_tying": False,
    }


LLAMA_TO_LLADA = (
    ("model.embed_tokens.weight", "model.transformer.wte.weight"),
    ("model.norm.weight", "model.transformer.ln_f.weight"),
    ("lm_head.weight", "model.transformer.ff_out.weight"),
    (".input_layernorm.weight", ".attn_norm.weight"),
    (".post_attention_layernorm.weight", ".ff_norm.weight"),
    (".self_attn.q_proj.weight", ".q_proj.weight"),
    (".self_attn.k_proj.weight", ".k_proj.weight"),
    (".self_attn.v_proj.weight", ".v_proj.weight"),
    (".self_attn.o_proj.weight", ".attn_out.weight"),
    (".mlp.gate_proj.weight", ".ff_proj.weight"),
    (".mlp.up_proj.weight", ".up_proj.weight"),
    (".mlp.down_proj.weight", ".ff_out.weight"),
)


def llama_name_to_llada(name: str) -> str:
    for old, new in LLAMA_TO_LLADA[:3]:
        if name == old:
            return new
    assert name.startswith("model.layers."), name
    rest = "model.transformer.blocks." + name[len("model.layers."):]
    for old, new in LLAMA_TO_LLADA[3:]:
        if rest.endswith(old):
            return rest[: -len(old)] + new
    raise AssertionError(f"no LLaDA name for {name}")


# --------------------------------------------------------------------------------------------------
# Dream: Qwen2ForCausalLM with is_causal=False
# --------------------------------------------------------------------------------------------------
def build_dream(tmp_path, seed: int, attn: str = "sdpa"):
    d = random_dims(seed)
    cfg = qwen2_stock_config(d)
    cfg.is_causal = False
    ref = stock(Qwen2ForCausalLM, cfg, attn)
    tensors = randomise_(ref, seed)
    assert any(k.endswith("q_proj.bias") for k in tensors)  # Dream: q/k/v biases on, names == Qwen2 names
    directory = write_checkpoint(tmp_path / f"dream_{seed}", dream_config(d), tensors, "dream")
    return d, ref, load(directory)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("seed", SEEDS)
def test_dream_equals_bidirectional_qwen2(tmp_path, seed, attn):
    d, ref, model = build_dream(tmp_path, seed, attn)
    assert model.family == "dream" and model.attention == "full" and model.logit_shift
    ids = random_ids(seed, 2, d["length"])
    with torch.inference_mode():
        expected = ref(ids).logits
    assert_close(model.logits(ids), expected)


def test_stock_qwen2_with_is_causal_false_is_bidirectional(tmp_path):
    """Guards the oracle itself: changing the last token must change the output at position 0."""
    d, ref, _ = build_dream(tmp_path, 0)
    ids = random_ids(0, 1, d["length"])
    other = ids.clone()
    other[0, -1] = (other[0, -1] + 1) % TOKENIZER_VOCAB
    with torch.inference_mode():
        assert (ref(ids).logits[0, 0] - ref(other).logits[0, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("seed", SEEDS)
def test_dream_left_padding_matches_qwen2_with_4d_mask(tmp_path, seed):
    """Dream's sampler convention: 2D keep mask, positions cumsum(keep)-1 (pads -> 1), 4D keep[i] & keep[j]."""
    d, ref, model = build_dream(tmp_path, seed)
    length = d["length"]
    ids = random_ids(seed, 3, length)
    keep = torch.ones(3, length, dtype=torch.bool)
    keep[0, :5] = False
    keep[1, :1] = False  # row 2 unpadded
    ids = ids.masked_fill(~keep, 0)
    positions = (keep.long().cumsum(-1) - 1).masked_fill(~keep, 1)
    mask4d = (keep[:, :, None] & keep[:, None, :])[:, None]
    with torch.inference_mode():
        expected = ref(ids, attention_mask=mask4d, position_ids=positions).logits
    assert_close(model.logits(ids, keep.long(), positions), expected, rows=keep)
    assert_close(model.logits(ids, mask4d, positions), expected, rows=keep)


# --------------------------------------------------------------------------------------------------
# Fast-dLLM v2: Qwen2ForCausalLM with a 4D block-causal mask
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_fast_dllm_v2_equals_qwen2_with_block_mask(tmp_path, seed, tie):
    d = random_dims(seed + 100)
    ref = stock(Qwen2ForCausalLM, qwen2_stock_config(d, tie=tie), "sdpa")
    tensors = randomise_(ref, seed, embed_std=0.15 if tie else 0.5)
    if tie:
        tensors.pop("lm_head.weight")  # tied releases (1.5B) do not store the head
    directory = write_checkpoint(tmp_path / "fast_dllm_v2", fast_dllm_v2_config(d, tie), tensors, "fast_dllm_v2")
    model = load(directory)
    assert model.family == "fast_dllm_v2" and model.attention == "block_causal"
    assert model.block_size == d["block"] and model.mask_id == 3  # mask id from the tokenizer
    if tie:
        assert model.network.lm_head.weight.data_ptr() == model.network.embed.weight.data_ptr()
    length = d["length"]
    ids = random_ids(seed, 2, length)
    mask = block_causal(length, d["block"], 2)
    with torch.inference_mode():
        expected = ref(ids, attention_mask=mask).logits
    assert_close(model.logits(ids), expected)  # the model's own block pattern from bd_size
    assert_close(model.logits(ids, mask), expected)  # the same mask passed explicitly


# --------------------------------------------------------------------------------------------------
# SDAR: Qwen3ForCausalLM (explicit head_dim, per-head q/k norm) with a 4D block-causal mask
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_sdar_equals_qwen3_with_block_mask(tmp_path, seed):
    d = random_dims(seed + 200)
    hidden = d["hidden"] + random.Random(seed).choice([8, 16, -8])  # q width heads*head_dim != hidden
    assert hidden != d["heads"] * d["head_dim"]
    cfg = Qwen3Config(
        vocab_size=d["vocab"], hidden_size=hidden, intermediate_size=d["inter"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"], head_dim=d["head_dim"],
        rms_norm_eps=d["eps"], rope_theta=d["theta"], max_position_embeddings=128, attention_bias=False,
        tie_word_embeddings=False,
    )
    ref = stock(Qwen3ForCausalLM, cfg, "sdpa")
    tensors = randomise_(ref, seed)
    assert any(k.endswith("q_norm.weight") for k in tensors)
    directory = write_checkpoint(tmp_path / "sdar", sdar_config(d, hidden), tensors, "sdar")
    model = load(directory)
    assert model.family == "sdar" and model.block_size == d["block"] and not model.logit_shift
    assert model.network.cfg.head_dim == d["head_dim"] and model.network.cfg.qk_norm
    length = d["length"]
    ids = random_ids(seed, 2, length)
    mask = block_causal(length, d["block"], 2)
    positions = torch.arange(length).expand(2, length)
    with torch.inference_mode():
        expected = ref(ids, attention_mask=mask, position_ids=positions).logits
    assert_close(model.logits(ids), expected)
    assert_close(model.logits(ids, mask, positions), expected)


# --------------------------------------------------------------------------------------------------
# LLaDA: LlamaForCausalLM with is_causal=False under Llama names, checkpoint under LLaDA names
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("seed", SEEDS)
def test_llada_equals_bidirectional_llama(tmp_path, seed, gqa):
    d = random_dims(seed + 300, gqa=gqa)
    assert (d["kv_heads"] < d["heads"]) == gqa
    embedding_size = d["vocab"] + (16 if seed == 1 else 0)  # LLaDA: embedding rows = embedding_size or vocab
    cfg = LlamaConfig(
        vocab_size=embedding_size, hidden_size=d["hidden"], intermediate_size=d["inter"],
        num_hidden_layers=d["layers"], num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"],
        head_dim=d["head_dim"], rms_norm_eps=d["eps"], rope_theta=d["theta"], max_position_embeddings=128,
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
    )
    cfg.is_causal = False
    ref = stock(LlamaForCausalLM, cfg, "sdpa")
    tensors = {llama_name_to_llada(k): v for k, v in randomise_(ref, seed).items()}
    assert "model.transformer.blocks.0.ff_proj.weight" in tensors and "model.transformer.ff_out.weight" in tensors
    directory = write_checkpoint(tmp_path / "llada", llada_config(d, embedding_size), tensors, "llada")
    model = load(directory)
    assert model.family == "llada" and model.attention == "full" and not model.logit_shift
    assert model.network.cfg.num_kv_heads == d["kv_heads"] and model.vocab_size == embedding_size
    ids = random_ids(seed, 2, d["length"])
    with torch.inference_mode():
        expected = ref(ids).logits
    assert_close(model.logits(ids), expected)
    # LLaDA's padding convention (hub file): padded keys hidden from every query, positions unchanged
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[0, :4] = False
    key_mask = keep[:, None, None, :].expand(2, 1, d["length"], d["length"])
    with torch.inference_mode():
        expected = ref(ids, attention_mask=key_mask).logits
    assert_close(model.logits(ids, keep.long()), expected)
