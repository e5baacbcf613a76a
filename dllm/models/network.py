"""The one native transformer behind every supported dLLM family.

A pre-norm decoder stack (RMSNorm, RoPE, grouped-query attention, SwiGLU or mixture-of-experts MLP) whose
behaviour is fixed entirely by a :class:`NetworkConfig`. Family quirks (partial rotary, fp32 RoPE, q/k
norms, fused QKV, routers) are config switches, never subclasses, so six checkpoint formats share one
forward. Attention is never causal by itself: the caller passes the mask (padding, full, block-causal).

The forward works with or without a :class:`~dllm.models.kv_cache.KVCache`; the cache's write modes
(append, read-only, write-at-slots) are how the block caches of :mod:`dllm.caches` reuse K/V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache, KVWrite


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts layer settings (LLaDA-MoE softmax router, LLaDA2 grouped sigmoid router)."""

    num_experts: int
    top_k: int
    expert_size: int
    router: str  # "softmax" (LLaDA-MoE) or "sigmoid_grouped" (LLaDA2 / BailingMoeV2)
    shared_size: int = 0  # inner size of the shared expert(s); 0 = none
    num_groups: int = 1
    topk_groups: int = 1
    routed_scale: float = 1.0
    renormalize: bool = False
    expert_bias: bool = False


@dataclass(frozen=True)
class NetworkConfig:
    """Everything the forward needs, normalised from a checkpoint's config.json by ``families.py``."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    rotary_dim: int
    rope_fp32: bool = False  # LLaDA rotates q/k in fp32; Qwen-style families rotate in activation dtype
    norm_weight_fp32: bool = False  # SDAR multiplies the RMSNorm weight before the cast back
    qkv_bias: bool = False
    o_bias: bool = False
    fused_qkv: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE
    clip_qkv: float | None = None
    tie_embeddings: bool = False
    moe: MoEConfig | None = None
    moe_layers: tuple[bool, ...] = ()  # per layer: True = MoE MLP, False = dense MLP

    def is_moe_layer(self, index: int) -> bool:
        return bool(self.moe_layers) and self.moe_layers[index]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back (all families); SDAR scales by the weight before the cast."""

    def __init__(self, dim: int, eps: float, weight_fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.weight_fp32 = weight_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight_fp32:
            return (h * self.weight.float()).to(x.dtype)
        return h.to(x.dtype) * self.weight


def rope_tables(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [B, q, rotary_dim] in fp32 for absolute ``positions`` [B, q] (rotate-half layout)."""
    exponent = torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (theta**exponent)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_fp32: bool) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of x [B, H, q, d]; the rest pass through (partial rotary)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    cos, sin = cos[:, None], sin[:, None]
    if in_fp32:
        xf = x_rot.float()
        half = xf.shape[-1] // 2
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
        x_rot = (xf * cos + rotated * sin).to(x.dtype)
    else:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        half = rot // 2
        rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        x_rot = x_rot * cos + rotated * sin
    return torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot


class Attention(nn.Module):
    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.cfg = cfg
        q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        if cfg.fused_qkv:
            self.qkv = nn.Linear(cfg.hidden_size, q_out + 2 * kv_out, bias=cfg.qkv_bias)
        else:
            self.q = nn.Linear(cfg.hidden_size, q_out, bias=cfg.qkv_bias)
            self.k = nn.Linear(cfg.hidden_size, kv_out, bias=cfg.qkv_bias)
            self.v = nn.Linear(cfg.hidden_size, kv_out, bias=cfg.qkv_bias)
        self.o = nn.Linear(q_out, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_weight_fp32)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_weight_fp32)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, write: KVWrite | None, layer: int):
        cfg = self.cfg
        b, q_len, _ = x.shape
        if cfg.fused_qkv:
            q, k, v = self.qkv(x).split(
                [cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim], -1
            )
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        if cfg.clip_qkv is not None:
            q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        q = q.view(b, q_len, cfg.num_heads, cfg.head_dim)
        k = k.view(b, q_len, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(b, q_len, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = apply_rope(q, cos, sin, cfg.rope_fp32)
        k = apply_rope(k, cos, sin, cfg.rope_fp32)
        if cache is not None:
            k, v = cache.store(layer, k, v, write)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=cfg.num_kv_heads != cfg.num_heads
        )
        return self.o(out.transpose(1, 2).reshape(b, q_len, cfg.num_heads * cfg.head_dim))


class DenseMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate = nn.Linear(hidden, inner, bias=False)
        self.up = nn.Linear(hidden, inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoEMLP(nn.Module):
    """Routed SwiGLU experts (stacked weights [E, ...]) plus an optional always-on shared expert."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.moe = moe
        h, e, i = cfg.hidden_size, moe.num_experts, moe.expert_size
        self.router = nn.Linear(h, e, bias=False)
        self.router_bias = nn.Parameter(torch.zeros(e), requires_grad=False) if moe.expert_bias else None
        self.gate = nn.Parameter(torch.empty(e, i, h))
        self.up = nn.Parameter(torch.empty(e, i, h))
        self.down = nn.Parameter(torch.empty(e, h, i))
        self.shared = DenseMLP(h, moe.shared_size) if moe.shared_size else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (router logits fp32 [N, E], expert indices [N, k], expert weights fp32 [N, k])."""
        moe = self.moe
        if moe.router == "softmax":
            # LLaDA-MoE: logits in model dtype, softmax in fp32, top-k of raw probabilities (no renormalising).
            logits = self.router(x).float()
            scores = logits.softmax(-1)
            if self.router_bias is not None:
                scores = scores + self.router_bias.float()
            weights, idx = scores.topk(moe.top_k, dim=-1)
            if moe.renormalize:
                weights = weights / weights.sum(-1, keepdim=True)
            return logits, idx, weights * moe.routed_scale
        # LLaDA2: fp32 sigmoid scores; selection on biased scores by groups, weights from unbiased scores.
        logits = x.float() @ self.router.weight.float().t()
        scores = logits.sigmoid()
        biased = scores + self.router_bias.float() if self.router_bias is not None else scores
        n, e = biased.shape
        if moe.num_groups > 1:
            grouped = biased.view(n, moe.num_groups, e // moe.num_groups)
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
            keep_groups = group_score.topk(moe.topk_groups, dim=-1).indices
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
            expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(n, e)
            biased = biased.masked_fill(~expert_mask, 0.0)  # as the reference: dropped groups score 0
        idx = biased.topk(moe.top_k, dim=-1).indices
        weights = scores.gather(1, idx)
        if moe.top_k > 1 and moe.renormalize:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return logits, idx, weights * moe.routed_scale

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        _, idx, weights = self.route(flat)
        out = routed_experts(flat, idx, weights, self.gate, self.up, self.down).to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)


_GROUPED_MM = getattr(torch, "_grouped_mm", None)  # torch >= 2.8 (CPU support later); transformers uses it too
_GROUPED_MM_WORKS: dict[tuple[str, torch.dtype], bool] = {}


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch build runs ``torch._grouped_mm`` for (device type, dtype); probed once, then cached."""
    key = (device.type, dtype)
    if key not in _GROUPED_MM_WORKS:
        works = False
        if _GROUPED_MM is not None:
            try:
                a = torch.zeros(16, 16, device=device, dtype=dtype)
                b = torch.zeros(2, 16, 16, device=device, dtype=dtype)
                _GROUPED_MM(a, b.transpose(1, 2), offs=torch.tensor([8, 16], device=device, dtype=torch.int32))
                works = True
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                works = False
        _GROUPED_MM_WORKS[key] = works
    return _GROUPED_MM_WORKS[key]


def routed_experts(x, idx, weights, gate, up, down, grouped: bool | None = None) -> torch.Tensor:
    """Weighted sum of each token's routed SwiGLU experts, fp32 [N, H], without host reads.

    x [N, H]; idx [N, k] expert ids (distinct per token); weights fp32 [N, k]; gate/up [E, I, H], down [E, H, I].
    Grouped dispatch (default wherever ``torch._grouped_mm`` runs): the N*k token-slot pairs are sorted by expert,
    each expert multiplies its contiguous group (group ends found by a search on the sorted ids, not read back),
    and the outputs return to slot order by the inverse permutation. Exactly the FLOPs of the routed tokens; the
    kernels are native on CPU and on CUDA for bf16 on sm90/sm100 (elsewhere torch's own fallback reads the group
    ends once per call). Without ``_grouped_mm`` every expert runs on every token (batched matmul, E/k times the
    FLOPs) and the routed slots are gathered: still exact and free of host reads. ``grouped`` forces a path.
    The k slots are summed in fp32 by one batched matmul: deterministic, no atomics, same order for every row.
    """
    n, k = idx.shape
    experts = gate.shape[0]
    if grouped is None:
        grouped = grouped_mm_available(x.device, x.dtype)
    if grouped:
        sorted_experts, order = idx.reshape(-1).sort(stable=True)
        ends = torch.searchsorted(sorted_experts, torch.arange(experts, device=x.device), right=True)
        ends = ends.to(torch.int32)

        def mm(a, w):
            return _GROUPED_MM(a, w.transpose(1, 2), offs=ends)

        h = x.index_select(0, order // k)
        y_sorted = mm(F.silu(mm(h, gate)) * mm(h, up), down)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
        y = y_sorted.index_select(0, inverse).view(n, k, x.shape[-1])
    else:
        every = x.expand(experts, n, x.shape[-1])
        inner = F.silu(torch.bmm(every, gate.transpose(1, 2))) * torch.bmm(every, up.transpose(1, 2))
        y = torch.bmm(inner, down.transpose(1, 2))[idx, torch.arange(n, device=x.device)[:, None]]
    return torch.bmm(weights[:, None, :].float(), y.float())[:, 0]


class Layer(nn.Module):
    def __init__(self, cfg: NetworkConfig, index: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, cfg.norm_weight_fp32)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, cfg.norm_weight_fp32)
        self.mlp = MoEMLP(cfg) if cfg.is_moe_layer(index) else DenseMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h, cos, sin, mask, cache, write, layer):
        h = h + self.attn(self.attn_norm(h), cos, sin, mask, cache, write, layer)
        return h + self.mlp(self.mlp_norm(h))


class Network(nn.Module):
    """Embedding, layers, final norm, LM head. ``forward`` returns fp32 logits for the fed tokens."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, cfg.norm_weight_fp32)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        write: KVWrite | None = None,
        logits_columns: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Logits [B, q, V] (fp32) for ``input_ids`` [B, q] at absolute ``positions`` [B, q].

        ``mask``: None (every query sees every key) or bool [B|1, 1, q, keys] with True = attend, where
        ``keys`` is q without a cache and ``write.key_len`` with one. Query rows that see nothing (padding)
        are opened to all keys so that no NaN can leak into other rows; their outputs are meaningless.
        ``cache``/``write``: where this forward's K/V go and which cached keys it reads (see KVWrite).
        ``logits_columns``: compute the LM head only for the fed columns [lo, hi) of ``input_ids`` (decoding
        needs one block); every batch row keeps its logits.
        """
        if mask is not None:
            if mask.dtype != torch.bool:
                raise TypeError("attention mask must be boolean (True = attend)")
            mask = mask | ~mask.any(-1, keepdim=True)
        if cache is not None and write is None:
            raise ValueError("a KV cache needs a KVWrite that says where the new K/V go")
        cos, sin = rope_tables(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        h = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, cache, write, i)
        if cache is not None:
            cache.commit(write)
        if logits_columns is not None:
            h = h[:, logits_columns[0]:logits_columns[1]]
        return self.lm_head(self.final_norm(h)).float()

    def route(self, input_ids, positions, mask, layer: int):
        """Router (logits, indices, weights) of MoE ``layer`` for every fed token (for parity tests)."""
        if mask is not None:
            mask = mask | ~mask.any(-1, keepdim=True)
        cos, sin = rope_tables(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        h = self.embed(input_ids)
        for i, block in enumerate(self.layers):
            if i == layer:
                h = h + block.attn(block.attn_norm(h), cos, sin, mask, None, None, i)
                if not isinstance(block.mlp, MoEMLP):
                    raise ValueError(f"layer {layer} is a dense layer, it has no router")
                return block.mlp.route(block.mlp_norm(h).reshape(-1, h.shape[-1]))
            h = block(h, cos, sin, mask, None, None, i)
        raise ValueError(f"layer {layer} does not exist")
