"""The family table: how each dLLM checkpoint format maps onto the native network.

For every family: how to recognise it from config.json (keys, not code), how to read its config into a
:class:`NetworkConfig`, how its tensor names map onto the network's parameter names, and the decoding facts
the engine needs (logit shift, attention pattern, block size, where its special tokens live).

Unsupported switches fail loudly with the config key named: a checkpoint we cannot reproduce exactly must
not load quietly and decode garbage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .network import MoEConfig, NetworkConfig


class UnsupportedConfigError(ValueError):
    """A config.json value the native network does not implement (the message names the key)."""


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[dict], bool]
    network_config: Callable[[dict], NetworkConfig]
    weight_rules: tuple[tuple[str, str], ...]  # (checkpoint regex, native name template)
    logit_shift: bool = False
    attention: str = "full"  # "full" or "block_causal"
    block_size_key: str | None = None  # config key holding the attention block size
    default_block_size: int | None = None  # used when the config does not store it (LLaDA2)
    # Token *strings* to look up in the tokenizer when neither config nor tokenizer roles give the id.
    mask_tokens: tuple[str, ...] = ()
    end_of_turn_tokens: tuple[str, ...] = ()


def _require(cfg: dict, key: str, allowed, default=None):
    value = cfg.get(key, default)
    if value not in allowed:
        raise UnsupportedConfigError(
            f"config.json key '{key}' = {value!r} is not supported (supported: {', '.join(map(repr, allowed))})"
        )
    return value


def _reject_true(cfg: dict, *keys: str) -> None:
    for key in keys:
        if cfg.get(key):
            raise UnsupportedConfigError(f"config.json key '{key}' = {cfg[key]!r} is not supported (must be false/null)")


def _common_checks(cfg: dict) -> None:
    """Switches no released dLLM uses and the network does not implement (every family's config reader calls
    this; keys a format does not have, e.g. ``hidden_act`` in LLaDA's OLMo-style config, are skipped)."""
    if cfg.get("rope_scaling") is not None:
        raise UnsupportedConfigError(f"config.json key 'rope_scaling' = {cfg['rope_scaling']!r} is not supported (must be null)")
    if cfg.get("use_sliding_window"):
        raise UnsupportedConfigError("config.json key 'use_sliding_window' = true is not supported (sliding-window attention)")
    layer_types = cfg.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise UnsupportedConfigError(f"config.json key 'layer_types' contains {sorted(set(layer_types))}: only 'full_attention' is supported")
    if "hidden_act" in cfg:
        _require(cfg, "hidden_act", ("silu",))


def _head_dim(cfg: dict, hidden: int, heads: int) -> int:
    return int(cfg.get("head_dim") or hidden // heads)


def _rotary_dim(cfg: dict, head_dim: int) -> int:
    factor = cfg.get("partial_rotary_factor", 1.0)
    if factor is None or factor <= 0:
        factor = 1.0
    rot = int(head_dim * factor)
    if rot % 2:
        raise UnsupportedConfigError(f"config.json key 'partial_rotary_factor' = {factor} gives an odd rotary dim {rot}")
    return rot


# --------------------------------------------------------------------------------------------------
# LLaDA (OLMo-style keys)
# --------------------------------------------------------------------------------------------------
def _llada_config(cfg: dict) -> NetworkConfig:
    _require(cfg, "block_type", ("llama",), "llama")
    _require(cfg, "activation_type", ("silu",), "silu")
    _require(cfg, "layer_norm_type", ("rms",), "rms")
    _require(cfg, "block_group_size", (1, None), 1)
    _require(cfg, "rope", (True,), True)
    _reject_true(cfg, "alibi", "attention_layer_norm", "include_bias", "input_emb_norm", "scale_logits",
                 "bias_for_layer_norm")
    _common_checks(cfg)
    hidden, heads = cfg["d_model"], cfg["n_heads"]
    kv = cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else heads)
    head_dim = hidden // heads
    inner = cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * hidden
    return NetworkConfig(
        vocab_size=cfg.get("embedding_size") or cfg["vocab_size"],
        hidden_size=hidden,
        num_layers=cfg["n_layers"],
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=inner,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rotary_dim=head_dim,
        rope_fp32=bool(cfg.get("rope_full_precision", True)),
        qkv_bias=bool(cfg.get("include_qkv_bias", False)),
        tie_embeddings=bool(cfg.get("weight_tying", False)),
    )


LLADA_RULES = (
    (r"model\.transformer\.wte\.weight", "embed.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_norm\.weight", "layers.{0}.attn_norm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_norm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.(q|k|v)_proj\.(weight|bias)", "layers.{0}.attn.{1}.{2}"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_out\.weight", "layers.{0}.attn.o.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_proj\.weight", "layers.{0}.mlp.gate.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.up_proj\.weight", "layers.{0}.mlp.up.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_out\.weight", "layers.{0}.mlp.down.weight"),
    (r"model\.transformer\.ln_f\.weight", "final_norm.weight"),
    (r"model\.transformer\.ff_out\.weight", "lm_head.weight"),
)


# --------------------------------------------------------------------------------------------------
# Qwen-style dense families: Dream / DiffuCoder, Fast-dLLM v2, SDAR
# --------------------------------------------------------------------------------------------------
def _qwen_config(cfg: dict, *, qkv_bias: bool, qk_norm: bool, norm_weight_fp32: bool = False,
                 default_eps: float = 1e-6) -> NetworkConfig:
    _common_checks(cfg)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = _head_dim(cfg, hidden, heads)
    return NetworkConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=cfg["intermediate_size"],
        norm_eps=cfg.get("rms_norm_eps", default_eps),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rotary_dim=_rotary_dim(cfg, head_dim),
        norm_weight_fp32=norm_weight_fp32,
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


QWEN_RULES = (
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "layers.{0}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", "layers.{0}.attn.{1}.{2}"),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", "layers.{0}.attn.{1}_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{1}.weight"),
    (r"model\.norm\.weight", "final_norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
)


# --------------------------------------------------------------------------------------------------
# LLaDA-MoE (model_type "llada" with HF-style MoE keys)
# --------------------------------------------------------------------------------------------------
def _llada_moe_config(cfg: dict) -> NetworkConfig:
    _require(cfg, "moe_router_score_function", ("softmax", None))
    if cfg.get("router_num_group") not in (None, 1):
        raise UnsupportedConfigError(f"config.json key 'router_num_group' = {cfg['router_num_group']!r} is not supported (must be null)")
    _reject_true(cfg, "attention_bias")
    base = _qwen_config({**cfg, "intermediate_size": cfg["dense_intermediate_size"]}, qkv_bias=False,
                        qk_norm=bool(cfg.get("qk_layernorm", True)), default_eps=1e-5)
    n = base.num_layers
    freq = cfg.get("moe_layer_freq", 1)
    moe_layers = tuple(bool(f) for f in freq) if isinstance(freq, list) else tuple(bool(freq) for _ in range(n))
    if len(moe_layers) != n:
        raise UnsupportedConfigError(f"config.json key 'moe_layer_freq' has {len(moe_layers)} entries for {n} layers")
    moe = MoEConfig(
        num_experts=cfg["num_experts"],
        top_k=cfg["num_experts_per_tok"],
        expert_size=cfg["expert_intermediate_size"],
        router="softmax",
        shared_size=cfg.get("shared_expert_intermediate_size") or 0,
        routed_scale=float(cfg.get("routed_scaling_factor") or 1.0),
        renormalize=False,  # the reference hard-codes norm_topk_prob = False whatever the config says
        expert_bias=bool(cfg.get("moe_router_enable_expert_bias")),
    )
    return _replace(base, moe=moe, moe_layers=moe_layers, clip_qkv=cfg.get("clip_qkv"))


LLADA_MOE_RULES = QWEN_RULES + (
    (r"model\.layers\.(\d+)\.mlp\.gate\.weight", "layers.{0}.mlp.router.weight"),
    (r"model\.layers\.(\d+)\.mlp\.expert_bias", "layers.{0}.mlp.router_bias"),
    (r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{2}[{1}]"),
    (r"model\.layers\.(\d+)\.mlp\.shared_experts?\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.shared.{1}.weight"),
)


# --------------------------------------------------------------------------------------------------
# LLaDA2 / BailingMoeV2
# --------------------------------------------------------------------------------------------------
def _llada2_config(cfg: dict) -> NetworkConfig:
    _reject_true(cfg, "norm_head")
    _require(cfg, "score_function", ("sigmoid", None))
    base = _qwen_config(cfg, qkv_bias=bool(cfg.get("use_qkv_bias", False)), qk_norm=bool(cfg.get("use_qk_norm", False)))
    first_dense = cfg.get("first_k_dense_replace", 0)
    moe = MoEConfig(
        num_experts=cfg["num_experts"],
        top_k=cfg["num_experts_per_tok"],
        expert_size=cfg["moe_intermediate_size"],
        router="sigmoid_grouped",
        shared_size=(cfg.get("num_shared_experts") or 0) * cfg["moe_intermediate_size"],
        num_groups=cfg.get("n_group") or 1,
        topk_groups=cfg.get("topk_group") or 1,
        routed_scale=float(cfg.get("routed_scaling_factor") or 1.0),
        renormalize=True,
        expert_bias=bool(cfg.get("moe_router_enable_expert_bias", True)),
    )
    return _replace(
        base,
        o_bias=bool(cfg.get("use_bias", True)),  # class default is True: honour the key
        fused_qkv=True,
        moe=moe,
        moe_layers=tuple(i >= first_dense for i in range(base.num_layers)),
    )


LLADA2_RULES = (
    (r"model\.word_embeddings\.weight", "embed.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "layers.{0}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"model\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)", "layers.{0}.attn.qkv.{1}"),
    (r"model\.layers\.(\d+)\.attention\.query_layernorm\.weight", "layers.{0}.attn.q_norm.weight"),
    (r"model\.layers\.(\d+)\.attention\.key_layernorm\.weight", "layers.{0}.attn.k_norm.weight"),
    (r"model\.layers\.(\d+)\.attention\.dense\.(weight|bias)", "layers.{0}.attn.o.{1}"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{1}.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate\.weight", "layers.{0}.mlp.router.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate\.expert_bias", "layers.{0}.mlp.router_bias"),
    (r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{2}[{1}]"),
    (r"model\.layers\.(\d+)\.mlp\.shared_experts\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.shared.{1}.weight"),
    (r"model\.norm\.weight", "final_norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
)


def _replace(cfg: NetworkConfig, **changes) -> NetworkConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def _model_type(cfg: dict) -> str:
    return str(cfg.get("model_type", ""))


FAMILIES: tuple[Family, ...] = (
    Family(
        name="llada_moe",
        detect=lambda c: _model_type(c).lower() in ("llada", "lladamoe", "llada_moe")
        and "d_model" not in c and ("num_experts" in c or "expert_intermediate_size" in c),
        network_config=_llada_moe_config,
        weight_rules=LLADA_MOE_RULES,
        mask_tokens=("<|mask|>",),
        end_of_turn_tokens=("<|role_end|>",),
    ),
    Family(
        name="llada",
        detect=lambda c: _model_type(c).lower() == "llada" and "d_model" in c,
        network_config=_llada_config,
        weight_rules=LLADA_RULES,
        mask_tokens=("<|mdm_mask|>",),
        end_of_turn_tokens=("<|eot_id|>",),
    ),
    Family(
        name="dream",
        detect=lambda c: _model_type(c).lower() == "dream",
        network_config=lambda c: _qwen_config(c, qkv_bias=True, qk_norm=False),
        weight_rules=QWEN_RULES,
        logit_shift=True,
        mask_tokens=("<|mask|>",),
        end_of_turn_tokens=("<|im_end|>",),
    ),
    Family(
        name="fast_dllm_v2",
        detect=lambda c: _model_type(c) == "Fast_dLLM_Qwen" or "bd_size" in c,
        network_config=lambda c: _qwen_config(c, qkv_bias=True, qk_norm=False),
        weight_rules=QWEN_RULES,
        logit_shift=True,
        attention="block_causal",
        block_size_key="bd_size",
        mask_tokens=("|<MASK>|",),
        end_of_turn_tokens=("<|im_end|>",),
    ),
    Family(
        name="sdar",
        detect=lambda c: _model_type(c).lower() == "sdar",
        network_config=lambda c: _qwen_config(c, qkv_bias=bool(c.get("attention_bias")), qk_norm=True,
                                              norm_weight_fp32=True),
        weight_rules=QWEN_RULES,
        attention="block_causal",
        block_size_key="block_size",
        mask_tokens=("<|MASK|>", "<MASK>"),
        end_of_turn_tokens=("<|im_end|>",),
    ),
    Family(
        name="llada2",
        detect=lambda c: _model_type(c).lower() in ("llada2_moe", "bailing_moe_v2"),
        network_config=_llada2_config,
        weight_rules=LLADA2_RULES,
        attention="block_causal",
        default_block_size=32,  # the reference sampler's block_length; not stored in config.json
        mask_tokens=("<|mask|>",),
        end_of_turn_tokens=("<|role_end|>",),
    ),
)


def detect_family(cfg: dict) -> Family:
    for family in FAMILIES:
        if family.detect(cfg):
            return family
    known = ", ".join(f.name for f in FAMILIES)
    if _model_type(cfg).lower() == "llada":  # shared by dense LLaDA and LLaDA-MoE: told apart by keys
        raise UnsupportedConfigError(
            "config.json has model_type 'llada' but neither the key 'd_model' (LLaDA) nor 'num_experts' (LLaDA-MoE): "
            "fix or re-download config.json"
        )
    raise UnsupportedConfigError(
        f"config.json key 'model_type' = {cfg.get('model_type')!r} is not a supported dLLM family ({known})"
    )


def family_by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)


def map_weight_name(family: Family, name: str) -> tuple[str, int | None] | None:
    """Native parameter name (and expert index for stacked experts) of a checkpoint tensor, or None."""
    for pattern, template in _compiled(family):
        match = pattern.fullmatch(name)
        if match:
            native = template.format(*match.groups())
            if native.endswith("]"):
                base, expert = native[:-1].split("[")
                return base, int(expert)
            return native, None
    return None


def checkpoint_name(family: Family, native: str, expert: int | None = None) -> str | None:
    """The checkpoint tensor name that maps onto ``native`` (inverse of :func:`map_weight_name`), or None.

    Used for error messages, so that a missing tensor is reported under the name the file should hold.
    """
    target = native if expert is None else f"{native}[{expert}]"
    for pattern, template in family.weight_rules:
        template_re = re.escape(template)
        template_re = re.sub(r"\\\{(\d+)\\\}", lambda m: f"(?P<g{m.group(1)}>[^.\\[\\]]+)", template_re)
        match = re.fullmatch(template_re, target)
        if not match:
            continue
        values = iter(match.group(f"g{i}") for i in range(len(match.groupdict())))
        try:
            candidate = re.sub(r"\([^()]*\)", lambda _: next(values), pattern).replace("\\.", ".")
        except StopIteration:
            continue
        if re.fullmatch(pattern, candidate) and map_weight_name(family, candidate) == (native, expert):
            return candidate
    return None


_COMPILED: dict[str, list] = {}


def _compiled(family: Family):
    if family.name not in _COMPILED:
        _COMPILED[family.name] = [(re.compile(p), t) for p, t in family.weight_rules]
    return _COMPILED[family.name]
