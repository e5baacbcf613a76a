"""``--model_args`` for the ``dllm`` lm-eval model: parse, split, validate early, plan each request's canvas.

lm-eval hands model arguments over as strings (or values it guessed types for); the decoder needs them split
into ``dllm.generate`` keywords, sampler options and cache options. Doing that here, once, at construction
means a typo fails in one line before any data is loaded, not an hour into a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .. import registry
from ..canvas_defaults import default_block_length, default_gen_length

LOAD_KEYS = ("pretrained", "dtype", "device", "threads")
DECODE_KEYS = ("sampler", "cache", "gen_length", "block_length", "steps", "temperature", "cfg_scale", "seed",
               "confidence", "ar_first", "modifiers", "eotp", "max_rejections", "grammar", "schema", "slot_length")
#: ``dllm.generate``'s ``template`` is not a model arg: model args apply to every request of every task, and
#: lm-eval's model_args string cannot carry the commas of a template; ``schema=`` lays the scaffold instead.
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
    modifiers: object = ()  # names; in model_args joined by "+" (modifiers=eoser+other), a comma splits model args
    eotp: object = None  # End-of-Text prediction: None, "committed", "predicted" or "fill" (true = committed)
    max_rejections: int = 100
    grammar: str | None = None  # "json", a .lark path or Lark text
    schema: str | None = None  # path of a JSON Schema file: its grammar and its scaffold
    slot_length: object = None  # "model" (default when None), "schema", or tokens per value slot
    mc_num: int = 128
    mc_batch_size: int | None = None
    greedy_check: bool = False
    max_length: int | None = None
    sampler_options: dict = field(default_factory=dict)
    cache_options: dict = field(default_factory=dict)
    modifier_options: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """The settings as they go into the results JSON (the checkpoint path, not the object)."""
        out = {k: getattr(self, k) for k in DECODE_KEYS + LIKELIHOOD_KEYS}
        out["modifiers"] = list(self.modifiers)
        out.update(sampler_options=dict(self.sampler_options), cache_options=dict(self.cache_options),
                   modifier_options=dict(self.modifier_options))
        return out


def modifier_names(value) -> list[str]:
    """The modifiers named by ``value`` (``"eoser"``, ``"eoser+other"``, a list), each checked to exist."""
    from dllm import modifiers

    names = registry.split_names(value, "modifiers")
    for name in names:
        modifiers.option_names(name)  # unknown modifier -> one-line ValueError
    return names


def modifier_option_names(value) -> set[str]:
    """Every option name of the modifiers ``value`` names (where their options like ``gamma_min`` go)."""
    from dllm import modifiers

    return {key for name in modifier_names(value) for key in modifiers.option_names(name)}


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
    settings.modifiers = tuple(modifier_names(settings.modifiers))
    modifier_keys = modifier_option_names(settings.modifiers)
    for key, value in values.items():
        if key in modifier_keys:  # as dllm.generate routes them: a modifier's options before the sampler's
            settings.modifier_options[key] = value
        elif key in sampler_names:
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
    settings.modifier_options = _typed_modifier_options(settings.modifiers, settings.modifier_options)
    _check_numbers(settings)
    _check_structure(settings)
    return settings


def _typed_modifier_options(names, options: dict) -> dict:
    """Each modifier built with the options it takes (bad values fail now), the options as typed values."""
    from dllm import modifiers

    typed = {}
    for name in names:
        mine = {k: v for k, v in options.items() if k in modifiers.option_names(name)}
        built = modifiers.build(name, mine)
        typed.update({k: getattr(built, k) for k in mine})
    return typed


def _check_structure(s: EvalSettings) -> None:
    """EoTP mode, the rejection budget, the grammar / schema (loaded now, so a bad file fails at construction)."""
    from dllm.filters.eotp import MODES

    eotp = s.eotp
    if eotp is True:
        eotp = "committed"
    elif eotp is False or eotp is None or (isinstance(eotp, str) and eotp.strip().lower() in ("", "none", "false")):
        eotp = None
    if eotp is not None and eotp not in MODES:
        raise ValueError(f"model arg eotp={s.eotp!r} must be one of {', '.join(MODES)} (or true = committed)")
    s.eotp = eotp
    if s.max_rejections < 0:
        raise ValueError(f"model arg max_rejections={s.max_rejections!r} must be an integer >= 0")
    if s.slot_length is not None:
        if isinstance(s.slot_length, str) and s.slot_length.strip().isdigit():
            s.slot_length = int(s.slot_length)
        if s.schema is None:
            raise ValueError("model arg slot_length sizes the slots of a schema scaffold: give schema=PATH too")
        if s.slot_length not in ("model", "schema") and (isinstance(s.slot_length, bool) or
                                                         not isinstance(s.slot_length, int) or s.slot_length < 1):
            raise ValueError(f"model arg slot_length={s.slot_length!r} must be model, schema or a positive integer")
    if s.grammar is not None and s.schema is not None:
        raise ValueError("give model arg grammar= or schema=, not both (schema= is the grammar of its instances)")
    from dllm.grammars import load_grammar

    spec = s.grammar if s.schema is None else load_schema(s.schema)
    if spec is not None:
        try:
            load_grammar(spec)
        except (OSError, ValueError) as exc:
            raise ValueError(f"model arg {'grammar' if s.schema is None else 'schema'}: "
                             f"{' '.join(str(exc).split())}") from None
        except Exception as exc:  # a Lark syntax error in grammar text
            raise ValueError(f"model arg grammar={s.grammar!r} is not 'json', a .lark file or a Lark grammar "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def load_schema(path) -> dict:
    """The JSON Schema in the file ``path`` (one-line errors)."""
    try:
        with open(path, encoding="utf-8") as handle:
            schema = json.load(handle)
    except OSError as exc:
        raise ValueError(f"model arg schema={path!r}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"model arg schema={path!r} is not a JSON file ({' '.join(str(exc).split())})") from None
    if not isinstance(schema, dict):
        raise ValueError(f"model arg schema={path!r}: the file holds a {type(schema).__name__}, not a JSON Schema object")
    return schema


def _unknown_key(key, sampler, sampler_names, cache, cache_names) -> str:
    from dllm import modifiers

    owners = [name for name in modifiers.available() if key in modifiers.option_names(name)]
    if owners:
        return (f"model arg '{key}' is an option of modifier '{owners[0]}': name the modifier too, "
                f"modifiers={owners[0]} (several: joined by '+', e.g. modifiers=eoser+other)")
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
    if settings.schema is not None and model.tokenizer is not None:  # its scaffold must fit the canvas
        from dllm.grammars import scaffold

        pieces = scaffold.schema_pieces(load_schema(settings.schema), settings.slot_length or "model")
        if any(isinstance(p, scaffold.OpenSlot) for p in pieces):  # open slots: only the first piece is laid
            pieces = pieces[:1] if isinstance(pieces[0], str) else []
        length = len(scaffold.template_cells(pieces, model.tokenizer, model.mask_id))
        if length > settings.gen_length:
            raise ValueError(f"the scaffold of schema {settings.schema} is {length} tokens, longer than "
                             f"gen_length={settings.gen_length}: raise gen_length or lower slot_length")
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
