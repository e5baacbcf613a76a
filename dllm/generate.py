"""``dllm.generate``: validate the request, lay out the canvas, plug sampler and cache into the engine."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import caches, samplers
from .engine.canvas import build_canvas
from .engine.loop import DecodeSettings, Engine, LogitProcessor
from .engine.proposals import CONFIDENCES
from .engine.result import Generation
from .models.model import Model

Prompt = str | Sequence[int]


def generate(
    model: Model,
    prompts: Prompt | Sequence[Prompt],
    *,
    sampler: str | samplers.Sampler = "static",
    cache: str | None = None,
    gen_length: int = 128,
    block_length: int | None = None,
    steps: int | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    chat: bool = False,
    return_trajectory: bool = False,
    confidence: str = "prob",
    ar_first: bool | None = None,
    eos_ids: Sequence[int] | None = None,
    processors: Sequence[LogitProcessor] = (),
    **options,
) -> Generation:
    """Decode ``prompts`` (strings, or token-id lists) with a sampler over a cache; see README for examples.

    * ``gen_length`` tokens per prompt, decoded in blocks of ``block_length`` (default: 32 when it divides
      ``gen_length``, else ``gen_length``; block-causal families: the model's block size). Full-attention
      families align blocks to the prompt end; block-causal ones to absolute multiples of the block size.
    * ``steps``: the step budget for step-scheduled samplers (``static``; default ``gen_length``, i.e. one
      token per step); it must be a multiple of the number of blocks.
    * ``cache``: ``"none"``, ``"prefix"``, ``"dual"`` (full attention) or ``"block"`` (block-causal; default
      there). Cache options (``refresh_every``, ``sub_block``) and sampler options (e.g. ``threshold``) are
      passed as keywords.
    * ``temperature`` > 0 samples proposals (reproducible with ``seed``); ``cfg_scale`` > 0 applies
      unsupervised classifier-free guidance (prompt replaced by MASK in the unconditional copy).
    * ``stop``: strings that end a row's output (checked inside the loop, so finished rows stop early);
      ``eos_ids`` overrides the checkpoint's stop token ids.
    * ``ar_first``: commit each block's opening position first, greedily, from the preceding token's output
      (default: on for logit-shift block-causal families, whose blocks open with an AR token).
    * ``confidence``: ``"prob"`` (default), ``"margin"`` or ``"entropy"`` — what samplers rank by.
    """
    prompt_ids = _encode_prompts(model, prompts, chat)
    if not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length must be a positive integer (got {gen_length!r})")
    block_causal = model.attention == "block_causal"
    cache_name = cache or ("block" if block_causal else "none")
    cache_options = {k: options.pop(k) for k in list(options) if k in caches.base.all_option_names()}
    cache_obj = caches.build(cache_name, model.attention, model.family, cache_options)
    sampler_obj = samplers.build(sampler, options)

    block_length = _block_length(model, gen_length, block_length, cache_options.get("sub_block"))
    num_blocks = math.ceil(gen_length / block_length)
    steps_per_block = None
    if steps is not None or sampler_obj.uses_steps:
        steps = gen_length if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer (got {steps!r})")
        if steps % num_blocks:
            raise ValueError(f"steps={steps} is not a multiple of the number of blocks ({num_blocks} = "
                             f"gen_length {gen_length} / block_length {block_length}): use e.g. steps={num_blocks * max(1, steps // num_blocks)}")
        steps_per_block = steps // num_blocks
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0 (got {cfg_scale})")
    if confidence not in CONFIDENCES:
        raise ValueError(f"unknown confidence '{confidence}': use one of {', '.join(CONFIDENCES)}")
    _check_context(model, prompt_ids, gen_length)

    stop_strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    eos = tuple(int(i) for i in (eos_ids if eos_ids is not None else model.eos_ids))
    if ar_first is None:
        ar_first = model.logit_shift and block_causal
    generator = None
    if temperature > 0 or getattr(sampler_obj, "remasking", None) == "random":
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))

    canvas = build_canvas(prompt_ids, gen_length, block_length, mask_id=model.mask_id, pad_id=model.pad_id,
                          block_size=model.block_size if block_causal else None, device=model.device)
    pads, gen_starts = canvas.pad.tolist(), canvas.gen_start.tolist()
    settings = DecodeSettings(steps_per_block=steps_per_block, temperature=float(temperature),
                              cfg_scale=float(cfg_scale), confidence=confidence, ar_first=bool(ar_first),
                              eos_ids=eos, stop_strings=stop_strings, record=return_trajectory,
                              generator=generator, processors=list(processors))
    final, stats, trajectory = Engine(model, sampler_obj, cache_obj, settings).run(canvas)
    return _collect(model, final.cpu(), prompt_ids, pads, gen_starts, gen_length, eos,
                    stop_strings, stats, trajectory)


# ----------------------------------------------------------------------------------------------------
def _encode_prompts(model: Model, prompts, chat: bool) -> list[list[int]]:
    if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt (a string or a list of token ids)")
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = model.encode(prompt, chat=chat)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise TypeError(f"prompt {i} is a {type(prompt).__name__}: pass a string or a list of token ids")
        if not ids:
            raise ValueError(f"prompt {i} is empty (no tokens): pass at least one token")
        bad = [t for t in ids if not 0 <= t < model.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {model.vocab_size})")
        if model.mask_id in ids:
            raise ValueError(f"prompt {i} contains the mask token id {model.mask_id}: remove it from the prompt")
        encoded.append(ids)
    return encoded


def _block_length(model: Model, gen_length: int, block_length: int | None, sub_block: int | None) -> int:
    if model.attention == "block_causal":
        block = model.block_size
        block_length = block_length or sub_block or block
        if sub_block is not None and block_length != sub_block:
            raise ValueError(f"block_length={block_length} conflicts with sub_block={sub_block}: give only sub_block")
        if block % block_length:
            raise ValueError(f"block_length={block_length} must divide the model's block size {block} "
                             f"(block-causal family {model.family}): use a divisor of {block}")
        return block_length
    if block_length is None:
        return 32 if gen_length % 32 == 0 else gen_length
    if not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length must be a positive integer (got {block_length!r})")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not a multiple of block_length={block_length}: "
                         f"use a block_length that divides gen_length")
    return block_length


def _check_context(model: Model, prompt_ids: list[list[int]], gen_length: int) -> None:
    limit = model.max_length
    if limit is None:
        return
    longest = max(len(p) for p in prompt_ids)
    if longest + gen_length > limit:
        raise ValueError(f"prompt of {longest} tokens + gen_length {gen_length} exceeds the model's context of "
                         f"{limit} tokens: shorten the prompt or lower gen_length")


def _collect(model, final, prompt_ids, pads, gen_starts, gen_length, eos, stop_strings, stats, trajectory) -> Generation:
    texts, sequences, canvases = [], [], []
    eos_set = set(eos)
    for row, prompt in enumerate(prompt_ids):
        start = gen_starts[row]
        generated = final[row, start:start + gen_length].tolist()
        cut = next((i for i, t in enumerate(generated) if t in eos_set), len(generated))
        answer = [t for t in generated[:cut] if t != model.mask_id]
        text = model.decode(answer)
        for stop in stop_strings:
            index = text.find(stop)
            if index >= 0:
                text = text[:index]
        if stop_strings and len(text) < len(model.decode(answer)):
            answer = _tokens_within(model, answer, text)
        texts.append(text)
        sequences.append(answer)
        canvases.append(final[row, pads[row]:start + gen_length].tolist())
    stats.row_tokens = [len(s) for s in sequences]
    stats.tokens = sum(stats.row_tokens)
    return Generation(texts=texts, sequences=sequences, canvases=canvases,
                      prompt_lengths=[len(p) for p in prompt_ids], stats=stats, trajectory=trajectory)


def _tokens_within(model, ids: list[int], text: str) -> list[int]:
    """The longest prefix of ``ids`` whose decoded text fits inside ``text`` (tokens before a stop string)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(model.decode(ids[:mid])) <= len(text):
            lo = mid
        else:
            hi = mid - 1
    return ids[:lo]
