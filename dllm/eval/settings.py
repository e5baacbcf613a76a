"""``--model_args`` for the ``dllm`` lm-eval model: parse, split, validate early, plan each request's canvas.

lm-eval hands model arguments over as strings (or values it guessed types for); the decoder needs them split
into ``dllm.generate`` keywords, sampler options and cache options. Doing that here, once, at construction
means a typo fails in one line before any data is loaded, not an hour into a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import registry
from ..canvas_defaults import default_block_length, default_gen_length

LOAD_KEYS = ("pretrained", "dtype", "device", "threads")
DECODE_KEYS = ("sampler", "cache", "gen_length", "block_length", "steps", "temperature", "cfg_scale", "seed",
               "confidence", "ar_first")
LIKELIHOOD_KEYS = ("mc_num", "mc_batch_size", "greedy_check", "max_length")
IGNORED_KEYS = ("trust_remote_code",)  # lm-eval adds it for HF models; dllm never runs checkpoint code

coerce = registry.parse_literal  # the one text-to-value parser (kept under this name for dllm.eval.ranges)


@dataclass
class EvalSettings:
    """Everything the ``dllm`` LM was configured with (after parsing, before the model is known)."""

    pretrained: object = "tiny"
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    sampler: str = "static"
    cache: str | None = None
    gen_length: int | None = None
    block_length: int | None = None
    steps: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    seed: int | None = None
    confidence: str = "prob"
    ar_first: bool | None = None
    mc_num: int = 128
    mc_batch_size: int | None = None
    greedy_check: bool = False
    max_length: int | None = None
    sampler_options: dict = field(default_factory=dict)
    cache_options: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The settings as they go into the results JSON (the checkpoint path, not the object)."""
        out = {k: getattr(self, k) for k in DECODE_KEYS + LIKELIHOOD_KEYS}
        out.update(sampler_options=dict(self.sampler_options), cache_options=dict(self.cache_options))
        return out


def parse_model_args(args: dict) -> EvalSettings:
    """Split lm-eval model args into an :class:`EvalSettings`: values converted to the types of its fields
    (and of the sampler's / cache's option fields); unknown keys and wrong types get a one-line error."""
    from dllm import caches, samplers

    values = {k: v for k, v in args.items() if k not in IGNORED_KEYS}
    cache = values.pop("cache", None)
    if isinstance(cache, str) and cache.strip().lower() == "none" or ("cache" in args and cache is None):
        cache = "none"  # lm-eval reads "cache=none" as None: the cache named none
    own = {k: values.pop(k) for k in LOAD_KEYS + DECODE_KEYS + LIKELIHOOD_KEYS if k in values}
    settings = EvalSettings(**registry.coerce_options(EvalSettings, own, "dllm model args"))
    if cache is not None:
        if not isinstance(cache, str):
            raise ValueError(f"model arg cache={cache!r} is not a cache name; available: {', '.join(caches.available())}")
        registry.lookup({n: n for n in caches.available()}, "cache", cache)
        settings.cache = cache
    if not isinstance(settings.sampler, str) or not settings.sampler:
        raise ValueError(f"model arg sampler={settings.sampler!r} is not a sampler name; available: "
                         f"{', '.join(samplers.available())}")
    sampler_names = samplers.option_names(settings.sampler)  # unknown sampler -> one-line ValueError
    cache_names = caches.option_names(settings.cache) if settings.cache else sorted(caches.base.all_option_names())
    for key, value in values.items():
        if key in sampler_names:
            settings.sampler_options[key] = value
        elif key in cache_names:
            settings.cache_options[key] = value
        else:
            raise ValueError(_unknown_key(key, settings.sampler, sampler_names, settings.cache, cache_names))
    built = samplers.build(settings.sampler, settings.sampler_options)  # option values: one-line errors now
    for key, value in settings.cache_options.items():  # typed now; resolve_defaults checks them against the cache
        name = settings.cache or next(n for n in caches.available() if key in caches.option_names(n))
        settings.cache_options[key] = registry.check_options("cache", name, {key: value})[key]
    settings.sampler_options = {k: getattr(built, k) for k in settings.sampler_options}  # as typed values
    _check_numbers(settings)
    return settings


def _unknown_key(key, sampler, sampler_names, cache, cache_names) -> str:
    known = list(LOAD_KEYS + DECODE_KEYS + LIKELIHOOD_KEYS) + sampler_names + cache_names
    return (f"unknown model arg '{key}'{registry.did_you_mean(key, known)}; dllm takes "
            f"{', '.join(LOAD_KEYS + DECODE_KEYS + LIKELIHOOD_KEYS)}, "
            f"sampler '{sampler}' options: {', '.join(sampler_names) or 'none'}, "
            f"cache{' ' + repr(cache) if cache else ''} options: {', '.join(cache_names) or 'none'}")


def _check_numbers(s: EvalSettings) -> None:
    """Ranges (the types were checked against the fields already)."""
    for key in ("gen_length", "block_length", "steps", "mc_num", "mc_batch_size", "max_length", "threads"):
        value = getattr(s, key)
        if value is not None and value < 1:
            raise ValueError(f"model arg {key}={value!r} must be a positive integer")
    for key in ("temperature", "cfg_scale"):
        value = getattr(s, key)
        if value < 0:
            raise ValueError(f"model arg {key}={value!r} must be a number >= 0")
    if s.mc_num < 1:
        raise ValueError(f"model arg mc_num={s.mc_num!r} must be a positive integer")
    if s.mc_batch_size is not None and s.mc_num % s.mc_batch_size:
        raise ValueError(f"mc_num={s.mc_num} is not a multiple of mc_batch_size={s.mc_batch_size}: "
                         f"use e.g. mc_batch_size={math.gcd(s.mc_num, s.mc_batch_size)}")


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestCanvas:
    """How one request decodes: canvas size, block length and step budget handed to ``dllm.generate``."""

    gen_length: int
    block_length: int | None
    steps: int | None
    max_tokens: int  # the request's own cap (max_gen_toks), <= gen_length


def resolve_defaults(settings: EvalSettings, model) -> None:
    """Fill gen_length / block_length by :mod:`dllm.canvas_defaults` (the checkpoint's, else 128 / its block rule) and validate them
    against the model's attention pattern and the cache, so errors show before any request runs."""
    from dllm import caches

    if settings.gen_length is None:
        settings.gen_length = default_gen_length(model)
    full = model.attention != "block_causal"
    if settings.block_length is None and full:
        settings.block_length = default_block_length(model, settings.gen_length)
    if full and settings.gen_length % settings.block_length:
        raise ValueError(f"gen_length={settings.gen_length} is not a multiple of block_length={settings.block_length}: "
                         f"use a block_length that divides gen_length")
    cache = settings.cache or ("block" if not full else "none")
    built = caches.build(cache, model.attention, model.family, dict(settings.cache_options))
    settings.cache_options = {k: getattr(built, k) for k in settings.cache_options}  # as typed values
    if settings.steps is not None:
        blocks = _num_blocks(settings, model, settings.gen_length)
        if settings.steps % blocks:
            raise ValueError(f"steps={settings.steps} is not a multiple of the number of blocks ({blocks}): "
                             f"use e.g. steps={blocks * max(1, settings.steps // blocks)}")


def plan_canvas(settings: EvalSettings, model, max_gen_toks: int | None) -> RequestCanvas:
    """The canvas for a request capped at ``max_gen_toks``: the smallest whole number of blocks covering
    min(gen_length, max_gen_toks) (full attention; block-causal models take it as is), with ``steps``
    scaled in proportion so a static sampler keeps its tokens-per-step."""
    want = settings.gen_length if not max_gen_toks else min(settings.gen_length, int(max_gen_toks))
    full = model.attention != "block_causal"
    length = math.ceil(want / settings.block_length) * settings.block_length if full else want
    steps = None
    if settings.steps is not None:
        blocks = _num_blocks(settings, model, length)
        per_block = max(1, round(settings.steps * length / settings.gen_length / blocks))
        steps = per_block * blocks
    return RequestCanvas(gen_length=length, block_length=settings.block_length, steps=steps, max_tokens=want)


def _num_blocks(settings: EvalSettings, model, length: int) -> int:
    if model.attention != "block_causal":
        return length // settings.block_length
    block = settings.block_length or settings.cache_options.get("sub_block") or model.block_size
    return math.ceil(length / block)
