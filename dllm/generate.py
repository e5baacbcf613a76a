"""``dllm.generate``: validate the request, lay out the canvas, plug sampler and cache into the engine."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from . import caches, filters, modifiers, samplers
from .engine.canvas import build_canvas
from .engine.events import StepEvent
from .engine.loop import DecodeSettings, Engine, LogitProcessor  # noqa: F401  (LogitProcessor: public type)
from .engine.proposals import CONFIDENCES
from .engine.result import Generation
from .models.model import Model

Prompt = str | Sequence[int]


def generate(model: Model, prompts: Prompt | Sequence[Prompt], **kwargs) -> Generation:
    """Decode ``prompts`` (strings, or token-id lists) with a sampler over a cache; see README for examples.

    * ``gen_length`` tokens per prompt, decoded in blocks of ``block_length``. Defaults: the checkpoint's
      ``generation_config.json`` (the embedded models ship theirs), else 128 and 32 (or ``gen_length`` when 32
      does not divide it); block-causal families: the model's block size. Full-attention families align blocks
      to the prompt end; block-causal ones to absolute multiples of the block size.
    * ``sampler`` (default ``"static"``) and its options as keywords (e.g. ``threshold=0.9``); ``steps``: the
      step budget of step-scheduled samplers (default ``gen_length``: one token per step), a multiple of the
      number of blocks.
    * ``cache``: ``"none"``, ``"prefix"``, ``"dual"`` (full attention) or ``"block"`` (block-causal; default
      there), its options as keywords (``refresh_every``, ``sub_block``).
    * ``modifiers``: names (or objects, or ``(name, options)``) of ranking modifiers, e.g. ``["eoser"]``; their
      options as keywords (``gamma_min=0.01``). ``filters``: commit filters, the same way.
    * ``temperature`` > 0 samples proposals; ``seed`` makes it reproducible per row: an int gives row i the
      stream of ``seed + i``, a list gives each prompt its own seed, so a prompt decodes the same alone and in
      any batch with the same seed. ``cfg_scale`` > 0 applies unsupervised classifier-free guidance.
    * ``stop``: strings that end a row's output (checked inside the loop, so finished rows stop early);
      ``eos_ids`` overrides the checkpoint's stop token ids.
    * ``ar_first``: commit each block's opening position first, greedily (default: on for logit-shift
      block-causal families, whose blocks open with an AR token).
    * ``confidence``: ``"prob"`` (default), ``"margin"`` or ``"entropy"`` — what samplers rank by.
    * ``chat`` / ``system``: wrap string prompts in the checkpoint's chat template, with a system turn.
    * ``return_trajectory``: also record every step's commits (``out.trajectory``).
    """
    engine, canvas, request = prepare(model, prompts, **kwargs)
    engine.run(canvas)
    return request.collect(engine)


def stream(model: Model, prompts: Prompt | Sequence[Prompt], **kwargs) -> "Stream":
    """Like :func:`generate`, but iterate over the decode: one :class:`~dllm.engine.StepEvent` per step.

    ``for event in (s := dllm.stream(model, prompts)): ...``; once the loop ends, ``s.result`` is the
    :class:`Generation` that ``generate`` would have returned.
    """
    return Stream(*prepare(model, prompts, **kwargs))


class Stream:
    """Iterable of step events; ``result`` holds the final :class:`Generation` once iteration is complete."""

    def __init__(self, engine: Engine, canvas, request: "_Request"):
        self._engine, self._canvas, self._request = engine, canvas, request
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[StepEvent]:
        yield from self._engine.steps(self._canvas)
        self.result = self._request.collect(self._engine)


_DEFAULTS = dict(sampler="static", cache=None, gen_length=None, block_length=None, steps=None, temperature=0.0,
                 cfg_scale=0.0, seed=None, stop=None, chat=False, system=None, return_trajectory=False,
                 confidence="prob", ar_first=None, eos_ids=None, processors=(), modifiers=(), filters=(),
                 max_rejections=100)


def prepare(model: Model, prompts, **kwargs) -> tuple[Engine, object, "_Request"]:
    """Validate a request and build its engine and canvas (no forward runs here)."""
    if "trajectory" in kwargs:
        raise ValueError("unknown option 'trajectory': the keyword is return_trajectory=True")
    args = {**_DEFAULTS, **{k: kwargs.pop(k) for k in list(kwargs) if k in _DEFAULTS}}
    options = kwargs
    prompt_ids = _encode_prompts(model, prompts, args["chat"], args["system"])
    defaults = model.canvas_defaults
    gen_length = args["gen_length"] if args["gen_length"] is not None else defaults.get("gen_length", 128)
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length must be a positive integer (got {gen_length!r})")
    block_length = args["block_length"]
    if block_length is None and args["gen_length"] is None:
        block_length = defaults.get("block_length")
    block_causal = model.attention == "block_causal"
    cache_name = args["cache"] or ("block" if block_causal else "none")
    cache_options = {k: options.pop(k) for k in list(options) if k in caches.base.all_option_names()}
    cache_obj = caches.build(cache_name, model.attention, model.family, cache_options)
    modifier_objs = _plugins(modifiers, args["modifiers"], options)
    filter_objs = _plugins(filters, args["filters"], options)
    sampler_obj = samplers.build(args["sampler"], options)

    block_length = _block_length(model, gen_length, block_length, cache_options.get("sub_block"))
    layout = sampler_obj.layout(gen_length, block_length)
    steps = args["steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer (got {steps!r})")
    steps_per_span = None
    if layout is not None:
        if steps is not None:
            raise ValueError(f"sampler '{sampler_obj.name}' lays out its own steps: do not pass steps")
        if block_causal:
            raise ValueError(f"sampler '{sampler_obj.name}' needs its own span layout, which block-causal "
                             f"families (block size {model.block_size}) cannot take")
    elif steps is not None or sampler_obj.uses_steps:
        num_blocks = math.ceil(gen_length / block_length)
        steps = gen_length if steps is None else steps
        if steps % num_blocks:
            raise ValueError(f"steps={steps} is not a multiple of the number of blocks ({num_blocks} = "
                             f"gen_length {gen_length} / block_length {block_length}): use e.g. steps={num_blocks * max(1, steps // num_blocks)}")
        steps_per_span = steps // num_blocks
    temperature, cfg_scale = _number("temperature", args["temperature"]), _number("cfg_scale", args["cfg_scale"])
    if args["confidence"] not in CONFIDENCES:
        raise ValueError(f"unknown confidence '{args['confidence']}': use one of {', '.join(CONFIDENCES)}")
    _check_context(model, prompt_ids, gen_length)

    stop = args["stop"]
    stop_strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise ValueError("stop strings must be non-empty strings (an empty one would end every output at once)")
    eos = tuple(int(i) for i in (args["eos_ids"] if args["eos_ids"] is not None else model.eos_ids))
    ar_first = args["ar_first"]
    if ar_first is None:
        ar_first = model.logit_shift and block_causal
    if ar_first:
        filter_objs = [filters.build("ar_opening")] + filter_objs
    generators = None
    if temperature > 0 or sampler_obj.needs_generator:
        generators = _generators(args["seed"], len(prompt_ids), model.device)
    elif args["seed"] is not None:
        _generators(args["seed"], len(prompt_ids), model.device)  # validate it all the same
    max_rejections = args["max_rejections"]
    if isinstance(max_rejections, bool) or not isinstance(max_rejections, int) or max_rejections < 0:
        raise ValueError(f"max_rejections must be an integer >= 0 (got {max_rejections!r})")

    canvas = build_canvas(prompt_ids, gen_length, block_length, mask_id=model.mask_id, pad_id=model.pad_id,
                          block_size=model.block_size if block_causal else None, device=model.device,
                          span_lengths=layout)
    settings = DecodeSettings(steps_per_span=steps_per_span, temperature=temperature, cfg_scale=cfg_scale,
                              confidence=args["confidence"], eos_ids=eos, stop_strings=stop_strings,
                              record=args["return_trajectory"], generators=generators,
                              processors=list(args["processors"]), max_rejections=max_rejections)
    engine = Engine(model, sampler_obj, cache_obj, settings, modifier_objs, filter_objs)
    request = _Request(model, prompt_ids, canvas.pad.tolist(), canvas.gen_start.tolist(), gen_length, eos, stop_strings)
    return engine, canvas, request


def _plugins(kind, specs, options: dict) -> list:
    """Build modifiers / filters; keyword options that name one of their options are routed to it."""
    if specs is None:
        specs = []
    elif isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        specs = [specs]
    built = []
    for spec in specs:
        if isinstance(spec, str):
            names = kind.option_names(spec)
            mine = {k: options.pop(k) for k in list(options) if k in names}
            built.append(kind.build(spec, mine))
        else:
            built.append(kind.build(spec))
    return built


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")
    return float(value)


def _generators(seed, rows: int, device) -> list[torch.Generator]:
    """One generator per row: an int seed gives row i ``seed + i``; a list gives each prompt its own seed."""
    if seed is None:
        base = int(torch.randint(0, 2**62, (1,)).item())
        seeds = [base + i for i in range(rows)]
    elif isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or a list of integers, one per prompt (got {seed!r})")
    elif isinstance(seed, int):
        seeds = [seed + i for i in range(rows)]
    elif isinstance(seed, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
        if len(seed) != rows:
            raise ValueError(f"seed has {len(seed)} entries for {rows} prompts: give one seed per prompt")
        seeds = list(seed)
    else:
        raise ValueError(f"seed must be an integer or a list of integers, one per prompt (got {seed!r})")
    generators = []
    for value in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(value % 2**63)
        generators.append(generator)
    return generators


# ----------------------------------------------------------------------------------------------------
def _encode_prompts(model: Model, prompts, chat: bool, system: str | None = None) -> list[list[int]]:
    if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt (a string or a list of token ids)")
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = model.encode(prompt, chat=chat, system=system)
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


class _Request:
    """What ``collect`` needs to turn the engine's final canvas into a :class:`Generation`."""

    def __init__(self, model, prompt_ids, pads, gen_starts, gen_length, eos, stop_strings):
        self.model, self.prompt_ids, self.pads, self.gen_starts = model, prompt_ids, pads, gen_starts
        self.gen_length, self.eos, self.stop_strings = gen_length, eos, stop_strings

    def collect(self, engine: Engine) -> Generation:
        model, final, stats = self.model, engine.final.cpu(), engine.stats
        texts, sequences, canvases = [], [], []
        eos_set = set(self.eos)
        for row, prompt in enumerate(self.prompt_ids):
            start = self.gen_starts[row]
            generated = final[row, start:start + self.gen_length].tolist()
            cut = next((i for i, t in enumerate(generated) if t in eos_set), len(generated))
            answer = [t for t in generated[:cut] if t != model.mask_id]
            full = model.decode(answer)
            text = cut_at_stops(full, self.stop_strings)
            if len(text) < len(full):
                answer = _tokens_within(model, answer, text)
            texts.append(text)
            sequences.append(answer)
            canvases.append(final[row, self.pads[row]:start + self.gen_length].tolist())
        stats.row_tokens = [len(s) for s in sequences]
        stats.tokens = sum(stats.row_tokens)
        trajectory = engine.trajectory
        if trajectory is not None:  # the first frame spans exactly what ``canvases`` holds (no alignment pad)
            trajectory.initial = [row[:len(c)] for row, c in zip(trajectory.initial, canvases)]
        return Generation(texts=texts, sequences=sequences, canvases=canvases,
                          prompt_lengths=[len(p) for p in self.prompt_ids], stats=stats, trajectory=trajectory)


def cut_at_stops(text: str, stops) -> str:
    """``text`` up to the first occurrence of any stop string."""
    for stop in stops:
        index = text.find(stop)
        if index >= 0:
            text = text[:index]
    return text


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
