"""Attention-mask helpers shared by ``Model.logits`` and the decoding engine (bool, True = attend)."""

from __future__ import annotations

import torch


def attention_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_keep: torch.Tensor | None,
    block_size: int | None,
) -> torch.Tensor | None:
    """Mask [B, 1, q, k] from logical positions: key padding and, if ``block_size``, block-causality.

    Block-causal means key j is visible to query i iff block(pos_i) >= block(pos_j), with blocks taken on
    logical positions (absolute multiples of ``block_size``), as Fast-dLLM v2, SDAR and LLaDA2 define it.
    Returns None when every query may see every key (lets SDPA take its fastest path).
    """
    mask = None
    if block_size is not None:
        q_block = torch.div(query_positions, block_size, rounding_mode="floor")
        k_block = torch.div(key_positions, block_size, rounding_mode="floor")
        mask = q_block[:, :, None] >= k_block[:, None, :]
    if key_keep is not None and not bool(key_keep.all()):
        keep = key_keep[:, None, :].bool()
        mask = keep.expand(key_keep.shape[0], query_positions.shape[1], -1) if mask is None else mask & keep
    return None if mask is None else mask[:, None]


def normalise_user_mask(mask: torch.Tensor) -> torch.Tensor:
    """Accept a 3D/4D boolean mask (True = attend) or an additive float mask (0 = attend, -inf = blocked)."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4:
        raise ValueError(f"attention mask must be 2D [B, L] (padding) or 3D/4D [B, 1, q, k]; got shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        values = mask.unique()
        if values.numel() <= 2 and bool(((values == 0) | (values == 1)).all()) and bool((values == 1).any()):
            raise ValueError("a 0/1 float attention mask is ambiguous: pass it as torch.bool (True = attend)")
        return mask > -1e4
    return mask != 0
