"""``dllm.Model``: the native network plus the tokenizer and the family facts the decoder needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .masks import attention_mask, normalise_user_mask
from .network import Network


@dataclass(eq=False)
class Model:
    """A loaded dLLM. ``logits`` is the checkpoint's raw forward; decoding goes through ``dllm.generate``.

    Attributes: ``family``, ``mask_id``, ``eos_ids`` (EOS first, then end-of-turn and other stop ids),
    ``pad_id``, ``bos_id``, ``logit_shift`` (True when the output at i scores token i+1: Dream, Fast-dLLM v2),
    ``attention`` ("full" or "block_causal"), ``block_size`` (block-causal families), ``tokenizer``.
    """

    network: Network
    tokenizer: Any
    family: str
    config: dict
    path: Path
    mask_id: int
    eos_ids: tuple[int, ...]
    pad_id: int
    bos_id: int | None = None
    logit_shift: bool = False
    attention: str = "full"
    block_size: int | None = None

    @property
    def device(self) -> torch.device:
        return self.network.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.embed.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.network.cfg.vocab_size

    @property
    def max_length(self) -> int | None:
        """Longest sequence the checkpoint was built for (config), or None if it does not say."""
        for key in ("max_sequence_length", "max_position_embeddings"):
            if self.config.get(key):
                return int(self.config[key])
        return None

    @property
    def canvas_defaults(self) -> dict:
        """``gen_length`` / ``block_length`` the checkpoint recommends in its generation_config.json (the tiny
        model ships the canvas it was trained for), or {}; the CLI and the lm-eval model fall back to them."""
        try:
            data = json.loads((Path(self.path) / "generation_config.json").read_text())
        except (OSError, ValueError, TypeError):
            return {}
        return {k: data[k] for k in ("gen_length", "block_length") if isinstance(data.get(k), int) and data[k] > 0}

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.network.parameters())
        return (f"Model(family={self.family!r}, path='{self.path}', params={params:,}, dtype={self.dtype}, "
                f"attention={self.attention!r}, block_size={self.block_size}, mask_id={self.mask_id}, "
                f"eos_ids={self.eos_ids})")

    # ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Raw logits [B, L, V] in fp32 with the checkpoint's own convention (no logit shift).

        ``attention_mask``: None; a 2D [B, L] padding mask (1 keep / 0 pad: padded keys are hidden from every
        query, positions unchanged unless ``position_ids`` is given); or a 3D/4D mask (bool True = attend, or
        additive float). Block-causal families add their block mask on ``position_ids`` unless a 3D/4D mask
        is passed, which is then used as it is.
        """
        return self.network(*self._forward_inputs(input_ids, attention_mask, position_ids))

    @torch.inference_mode()
    def router(self, input_ids, layer: int, attention_mask=None, position_ids=None):
        """MoE routing (router logits, expert indices, expert weights) of ``layer`` for every token; the inputs
        are read as by :meth:`logits`."""
        return self.network.route(*self._forward_inputs(input_ids, attention_mask, position_ids), layer)

    def _forward_inputs(self, input_ids, attention_mask, position_ids):
        """(ids [B, L], positions [B, L], boolean attention mask or None) on the model's device."""
        ids = torch.as_tensor(input_ids, device=self.device)
        if ids.dim() == 1:
            ids = ids[None]
        b, length = ids.shape
        if position_ids is None:
            positions = torch.arange(length, device=self.device).expand(b, length)
        else:
            positions = torch.as_tensor(position_ids, device=self.device).expand(b, length)
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask, device=self.device)
        if attention_mask is not None and attention_mask.dim() >= 3:
            return ids, positions, normalise_user_mask(attention_mask)
        keep = None if attention_mask is None else attention_mask.expand(b, length).bool()
        return ids, positions, attention_mask_for(self, positions, positions, keep)

    # ------------------------------------------------------------------------------------------------
    def encode(self, prompt: str, chat: bool = False, system: str | None = None,
               template_kwargs: dict | None = None) -> list[int]:
        """Token ids of a prompt; with ``chat`` the checkpoint's chat template wraps it as one user turn (after a
        ``system`` turn if given); ``template_kwargs`` go to the template (e.g. SDAR's ``enable_thinking``)."""
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(f"the {self.family} checkpoint at {self.path} has no chat template: call with chat=False")
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **(template_kwargs or {}))
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; a model built without a tokenizer (benchmarks, tests) decodes to ''."""
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def attention_mask_for(model: Model, query_positions, key_positions, key_keep) -> torch.Tensor | None:
    """The model's own attention pattern (full or block-causal on logical positions) plus key padding."""
    block = model.block_size if model.attention == "block_causal" else None
    return attention_mask(query_positions, key_positions, key_keep, block)
