"""``dllm.load``: sharded / tied / bf16 checkpoints, clear one-line errors, no checkpoint code, special ids."""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dllm
from dllm import CheckpointError, UnsupportedConfigError

from conftest import GOLDENS

FAMILIES = ["llada", "dream", "fast_dllm_v2", "fast_dllm_v2_tied", "sdar", "llada_moe", "llada2"]


def load(path, **kw):
    return dllm.load(path, dtype=kw.pop("dtype", torch.float32), device="cpu", **kw)


def goldens(family):
    return load_file(str(GOLDENS / family / "goldens.safetensors"))


def full_logits(model, family):
    g = goldens("llada" if family == "llada_sharded" else family)
    mask = g.get("full_attention_mask") if family in ("sdar", "llada2") else None
    return model.logits(g["full_input_ids"], mask, g.get("full_position_ids")), g["full_logits"]


def copy_golden(tmp_path, family, name=None):
    target = tmp_path / (name or family)
    shutil.copytree(GOLDENS / family, target, ignore=shutil.ignore_patterns("goldens.safetensors"))
    return target


def edit_config(directory, drop=(), **changes):
    config = json.loads((directory / "config.json").read_text())
    for key in drop:
        config.pop(key)
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def edit_weights(directory, fn, file="model.safetensors"):
    tensors = load_file(str(directory / file))
    fn(tensors)
    save_file(tensors, str(directory / file), metadata={"format": "pt"})
    return directory


def expect_error(exc_type, path, *needles, **kw):
    """dllm.load fails with ``exc_type``; the message is a single line and contains every needle."""
    with pytest.raises(exc_type) as info:
        load(path, **kw)
    message = str(info.value)
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {message}"
    assert "\n" not in message and message.strip() == message, repr(message)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------------------------------
# sharded, tied, bf16
# --------------------------------------------------------------------------------------------------
def test_sharded_llada_equals_single_file_bit_for_bit():
    single, sharded = load(GOLDENS / "llada"), load(GOLDENS / "llada_sharded")
    a, b = single.network.state_dict(), sharded.network.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ids = goldens("llada")["full_input_ids"]
    assert torch.equal(single.logits(ids), sharded.logits(ids))


def write_two_shards(directory, split_at: int = 9):
    """Re-save a single-file checkpoint as 2 shards + model.safetensors.index.json, like save_pretrained."""
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:split_at], "model-00002-of-00002.safetensors": names[split_at:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


@pytest.mark.parametrize("family", ["dream", "sdar"])
def test_own_two_shard_index_for_a_qwen_style_family(tmp_path, family):
    sharded = load(write_two_shards(copy_golden(tmp_path, family)))
    single = load(GOLDENS / family)
    for key, value in single.network.state_dict().items():
        assert torch.equal(sharded.network.state_dict()[key], value), key
    out, expected = full_logits(sharded, family)
    assert torch.equal(out, full_logits(single, family)[0])
    assert (out - expected).abs().max().item() <= 1e-5


def test_shard_listed_in_index_but_missing(tmp_path):
    directory = write_two_shards(copy_golden(tmp_path, "dream"))
    (directory / "model-00002-of-00002.safetensors").unlink()
    expect_error(CheckpointError, directory, "model-00002-of-00002.safetensors", "missing")


def test_shards_without_index_load_by_their_names(tmp_path):
    directory = write_two_shards(copy_golden(tmp_path, "dream"))
    (directory / "model.safetensors.index.json").unlink()
    out, expected = full_logits(load(directory), "dream")
    assert (out - expected).abs().max().item() <= 1e-5


def test_incomplete_shards_without_index(tmp_path):
    directory = write_two_shards(copy_golden(tmp_path, "dream"))
    (directory / "model.safetensors.index.json").unlink()
    (directory / "model-00001-of-00002.safetensors").unlink()
    expect_error(CheckpointError, directory, "incomplete", "model-00002-of-00002.safetensors")


def test_other_safetensors_files_are_not_weights(tmp_path):
    """Only files named as checkpoint weights are read: a goldens/adapter file beside them is left alone, and a
    directory holding nothing else says why it has no weights."""
    directory = copy_golden(tmp_path, "dream")
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(directory / "adapter.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, expected = full_logits(load(directory), "dream")
    assert (out - expected).abs().max().item() <= 1e-5
    (directory / "model.safetensors").unlink()
    expect_error(CheckpointError, directory, "model.safetensors", "adapter.safetensors", "not named")


def test_tied_embeddings_share_storage():
    directory = GOLDENS / "fast_dllm_v2_tied"
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        assert "lm_head.weight" not in handle.keys()
    for dtype in (torch.float32, torch.bfloat16):
        model = load(directory, dtype=dtype)
        net = model.network
        assert net.cfg.tie_embeddings
        assert net.lm_head.weight is net.embed.weight
        assert net.lm_head.weight.data_ptr() == net.embed.weight.data_ptr()
        assert sum(p.numel() for p in net.parameters()) == sum(
            t.numel() for t in load_file(str(directory / "model.safetensors")).values())
    out, expected = full_logits(load(directory), "fast_dllm_v2_tied")
    assert (out - expected).abs().max().item() <= 1e-5


def test_untied_checkpoint_keeps_a_separate_head():
    net = load(GOLDENS / "fast_dllm_v2").network
    assert net.lm_head.weight.data_ptr() != net.embed.weight.data_ptr()


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_loading(family):
    """bf16 weights, fp32 logits, close to the fp32 reference goldens.

    bf16 keeps ~3 significant digits, so with |logits| <= 5 a max error of ~0.1 is expected (stock transformers
    in bf16 shows the same, e.g. 0.11 on fast_dllm_v2); argmax must agree wherever the fp32 top-2 gap is clear.
    """
    model = load(GOLDENS / family, dtype=torch.bfloat16, block_size=8 if family == "llada2" else None)
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.network.parameters()} == {torch.bfloat16}
    out, expected = full_logits(model, family)
    assert out.dtype == torch.float32
    diff = (out - expected).abs()
    assert diff.max().item() <= 0.15 and diff.mean().item() <= 0.03, (diff.max().item(), diff.mean().item())
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.1
    assert torch.equal(out.argmax(-1)[clear], expected.argmax(-1)[clear])
    assert (out.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.9


def test_dtype_by_name():
    assert dllm.load(GOLDENS / "dream", dtype="bfloat16", device="cpu").dtype == torch.bfloat16
    assert dllm.load(GOLDENS / "dream", device="cpu").dtype == torch.float32  # CPU default


# --------------------------------------------------------------------------------------------------
# bad input: one clear line each
# --------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    expect_error(CheckpointError, tmp_path / "no_such_checkpoint", "no_such_checkpoint", "does not exist")


def test_path_is_a_file():
    expect_error(CheckpointError, GOLDENS / "dream" / "config.json", "is a file")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    expect_error(CheckpointError, tmp_path, "config.json")


def test_config_that_is_not_json(tmp_path):
    directory = copy_golden(tmp_path, "dream")
    (directory / "config.json").write_text("{not json")
    expect_error(CheckpointError, directory, "config.json", "not valid JSON")


@pytest.mark.parametrize(
    "family, changes, key",
    [
        ("dream", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ("sdar", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ("llada", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
        ("llada", {"alibi": True}, "alibi"),
        ("dream", {"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
        ("fast_dllm_v2", {"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window"),
        ("dream", {"hidden_act": "gelu"}, "hidden_act"),
        ("llada2", {"hidden_act": "relu"}, "hidden_act"),
        ("llada", {"activation_type": "gelu"}, "activation_type"),
        ("llada", {"activation_type": "swiglu"}, "activation_type"),
        ("llada", {"block_type": "sequential"}, "block_type"),
        ("dream", {"model_type": "gpt2"}, "model_type"),
    ],
)
def test_unsupported_config_values_name_the_key(tmp_path, family, changes, key):
    directory = edit_config(copy_golden(tmp_path, family), **changes)
    expect_error(UnsupportedConfigError, directory, f"'{key}'", "supported")


@pytest.mark.parametrize("family, key", [("dream", "hidden_size"), ("llada", "n_layers"), ("sdar", "vocab_size")])
def test_missing_config_key_is_named(tmp_path, family, key):
    directory = edit_config(copy_golden(tmp_path, family), drop=[key])
    expect_error(CheckpointError, directory, f"'{key}'", "config.json")


def test_llada_model_type_without_identifying_keys(tmp_path):
    directory = edit_config(copy_golden(tmp_path, "llada"), drop=["d_model"])
    expect_error(UnsupportedConfigError, directory, "'d_model'", "'llada'")


@pytest.mark.parametrize(
    "family, tensor",
    [
        ("dream", "model.layers.1.mlp.up_proj.weight"),
        ("dream", "model.layers.0.self_attn.k_proj.bias"),
        ("llada", "model.transformer.blocks.0.q_proj.weight"),
        ("llada", "model.transformer.ff_out.weight"),
        ("sdar", "model.layers.1.self_attn.q_norm.weight"),
        ("llada2", "model.layers.1.mlp.experts.3.down_proj.weight"),
        ("llada2", "model.layers.1.mlp.gate.expert_bias"),
    ],
)
def test_missing_tensor_is_named(tmp_path, family, tensor):
    directory = edit_weights(copy_golden(tmp_path, family), lambda t: t.pop(tensor))
    expect_error(CheckpointError, directory, f"'{tensor}'", "missing")


def test_wrong_tensor_shape_is_named(tmp_path):
    directory = edit_weights(copy_golden(tmp_path, "dream"), lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    expect_error(CheckpointError, directory, "'model.norm.weight'", "(65,)", "(64,)")


def test_unknown_extra_tensors_warn_and_load(tmp_path):
    extra = {"model.layers.2.eh_proj.weight": torch.zeros(4, 4), "model.mtp.enorm.weight": torch.ones(4)}
    directory = edit_weights(copy_golden(tmp_path, "dream"), lambda t: t.update(extra))
    with pytest.warns(UserWarning, match="model.layers.2.eh_proj.weight") as record:
        model = load(directory)
    assert any("model.mtp.enorm.weight" in str(w.message) and "\n" not in str(w.message) for w in record)
    out, expected = full_logits(model, "dream")
    assert (out - expected).abs().max().item() <= 1e-5


def test_clean_checkpoint_loads_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(GOLDENS / "dream")


@pytest.mark.parametrize("keep", [0.5, 0.999, 40 / 100_000])
def test_truncated_safetensors(tmp_path, keep):
    directory = copy_golden(tmp_path, "dream")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(8, int(len(data) * keep))])
    expect_error(CheckpointError, directory, "model.safetensors", "truncated")


def test_truncated_shard(tmp_path):
    directory = copy_golden(tmp_path, "llada_sharded")
    shard = directory / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    expect_error(CheckpointError, directory, "model-00002-of-00002.safetensors", "truncated")


def test_only_pickle_weights(tmp_path):
    directory = copy_golden(tmp_path, "dream")
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    expect_error(CheckpointError, directory, "safetensors")


def test_corrupt_tokenizer_json(tmp_path):
    directory = copy_golden(tmp_path, "llada")
    (directory / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    expect_error(CheckpointError, directory, "cannot read the tokenizer (tokenizer.json)", "re-download")


def test_hub_id_not_in_local_cache_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = expect_error(CheckpointError, "dllm-test-nobody/not-a-cached-checkpoint",
                           "'dllm-test-nobody/not-a-cached-checkpoint'", "neither a local directory nor in the local Hugging Face cache",
                           "local checkpoint directory")
    assert "HF_HUB_OFFLINE" in message


# --------------------------------------------------------------------------------------------------
# security: code shipped with a checkpoint is never imported
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, stems", [
    ("llada", ("modeling_llada", "configuration_llada", "tokenization_llada")),
    ("dream", ("modeling_dream", "configuration_dream", "tokenization_dream")),
])
def test_checkpoint_code_is_never_imported(tmp_path, family, stems):
    directory = copy_golden(tmp_path, family)
    marker = tmp_path / "MARKER"
    for stem in stems:
        (directory / f"{stem}.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported {stem}')\n"
            f"raise SystemExit('checkpoint code {stem} was executed')\n"
        )
    (directory / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('package imported')\n")
    config = json.loads((directory / "config.json").read_text())
    assert "auto_map" in config  # as in the releases
    edit_config(directory, auto_map={**config["auto_map"], "AutoModelForMaskedLM": f"{stems[0]}.Model"},
                trust_remote_code=True)
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": [f"{stems[2]}.Tokenizer", None]}
    tok_config["tokenizer_class"] = "Tokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config))
    path_before = list(sys.path)

    model = load(directory)

    assert model.family == family
    assert not marker.exists(), marker.read_text()
    leaked = [name for name in sys.modules if any(stem in name for stem in stems)]
    assert not leaked, leaked
    assert sys.path == path_before
    out, expected = full_logits(model, family)
    assert (out - expected).abs().max().item() <= 1e-5
    assert model.encode("Hi", chat=True)


# --------------------------------------------------------------------------------------------------
# special ids and chat templates (goldens/README.md §2)
# --------------------------------------------------------------------------------------------------
SPECIAL = {
    # family: (mask, eos first, end-of-turn, pad candidates, bos)
    "llada": (2, 1, 7, {1}, 0),
    "llada_sharded": (2, 1, 7, {1}, 0),
    "dream": (3, 0, 2, {0}, 0),
    "fast_dllm_v2": (3, 2, 2, {2, 0}, 0),  # config pad = <|im_end|> 2, tokenizer pad = <|endoftext|> 0
    "fast_dllm_v2_tied": (3, 2, 2, {2, 0}, 0),
    "sdar": (5, 0, 2, {0}, 0),
    "llada_moe": (4, 1, 5, {1}, 0),
    "llada2": (4, 1, 5, {1}, 0),
}


@pytest.mark.parametrize("family", list(SPECIAL))
def test_special_ids(family):
    model = load(GOLDENS / family)
    mask, eos, eot, pads, bos = SPECIAL[family]
    assert model.mask_id == mask
    assert model.eos_ids[0] == eos
    assert eot in model.eos_ids  # end of turn stops generation too
    assert model.mask_id not in model.eos_ids
    assert model.pad_id in pads and model.pad_id != model.mask_id
    assert model.bos_id == bos
    assert model.tokenizer.convert_ids_to_tokens(model.mask_id) == model.tokenizer.mask_token


def test_fast_dllm_v2_mask_id_comes_from_the_tokenizer():
    config = json.loads((GOLDENS / "fast_dllm_v2" / "config.json").read_text())
    assert "mask_token_id" not in config
    model = load(GOLDENS / "fast_dllm_v2")
    assert model.mask_id == model.tokenizer.convert_tokens_to_ids("|<MASK>|") == 3
    assert set(model.eos_ids) == {2, 0}  # config eos <|im_end|> + generation_config [2, 0]


def test_mask_token_string_when_the_tokenizer_declares_no_mask_role(tmp_path):
    """Like the real releases (LLaDA, Fast-dLLM v2): the mask is only an added token, not a tokenizer role."""
    directory = copy_golden(tmp_path, "fast_dllm_v2")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((directory / name).read_text())
        data.pop("mask_token")
        (directory / name).write_text(json.dumps(data))
    model = load(directory)
    assert model.tokenizer.mask_token is None
    assert model.mask_id == 3


def test_llada2_has_no_eos_in_config():
    config = json.loads((GOLDENS / "llada2" / "config.json").read_text())
    assert "eos_token_id" not in config and "mask_token_id" not in config
    model = load(GOLDENS / "llada2")
    assert model.eos_ids == (1, 5) and model.mask_id == 4
    assert model.block_size == 32  # the reference sampler's block length; not in config.json
    assert load(GOLDENS / "llada2", block_size=8).block_size == 8


def test_sdar_eos_from_generation_config():
    model = load(GOLDENS / "sdar")
    assert "pad_token_id" not in model.config
    assert set(model.eos_ids) == {0, 2} and model.block_size == 4


TEMPLATES = {
    "llada": "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "dream": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
             "<|im_start|>assistant\n",
    "fast_dllm_v2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n",
    "sdar": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "llada_moe": "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>",
    "llada2": "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>",
}


@pytest.mark.parametrize("family", list(TEMPLATES))
def test_chat_template_renders(family):
    model = load(GOLDENS / family)
    ids = model.encode("Hi", chat=True)
    assert model.decode(ids, skip_special_tokens=False) == TEMPLATES[family]
    assert model.encode("Hi") == [ord("H") - 15, ord("i") - 15]  # character-level tiny tokenizer
    assert "Hi" in model.decode(ids)


def test_chat_template_from_jinja_file(tmp_path):
    directory = copy_golden(tmp_path, "dream")
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "chat_template.jinja").write_text(tok_config.pop("chat_template"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert load(directory).decode(load(directory).encode("Hi", chat=True), skip_special_tokens=False) == TEMPLATES["dream"]


def test_no_chat_template_is_a_clear_error(tmp_path):
    directory = copy_golden(tmp_path, "dream")
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template")
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config))
    model = load(directory)
    with pytest.raises(ValueError, match="no chat template"):
        model.encode("Hi", chat=True)
