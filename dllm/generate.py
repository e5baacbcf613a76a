"""``dllm.generate``: validate the request, lay out the canvas, plug sampler and cache into the engine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Iterator, Sequence

import torch

from . import caches, filters, modifiers, registry, samplers
from .engine.canvas import build_canvas
from .engine.events import StepEvent
from .engine.loop import DecodeSettings, Engine, LogitProcessor  # noqa: F401  (LogitProcessor: public type)
from .engine.proposals import CONFIDENCES
from .canvas_defaults import default_block_length, default_gen_length
from .engine.result import Generation
from .models.model import Model
from .stops import cut_at_stops, normalize_stops

Prompt = str | Sequence[int]


def generate(model: Model, prompts: Prompt | Sequence[Prompt], **kwargs) -> Generation:
    """Decode ``prompts`` (strings, or token-id lists) with a sampler over a cache; see README for examples.

    * ``gen_length`` tokens per prompt, decoded in blocks of ``block_length``. Defaults
      (:mod:`dllm.canvas_defaults`): the checkpoint's ``generation_config.json`` (the embedded models ship theirs),
      else 128 and 32 (or ``gen_length`` when 32 does not divide it); block-causal families: the model's block size. Full-attention families align blocks
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
    * ``chat`` / ``system`` / ``chat_template_kwargs``: wrap string prompts in the checkpoint's chat template, with
      a system turn and template arguments (e.g. SDAR's ``{"enable_thinking": False}``).
    * ``return_trajectory``: also record every step's commits (``out.trajectory``).
    * ``eotp``: End-of-Text prediction with any sampler (``"committed"``: once a row commits EOS, everything after
      it is cut; ``"predicted"``: cut at a confidently predicted EOS; ``"fill"``: write the rest of the block as EOS,
      without cutting). ``max_rejections``: filter vetoes a row may collect without a commit before it ends as ``"stuck"``.
    * ``grammar``: constrain the output to a grammar — ``"json"``, a ``.lark`` path, Lark text, or a JSON Schema
      dict (no scaffold); or a list, one per prompt. Every committed token keeps the output completable (filter
      ``grammar``, ``dllm/filters/grammar.py``); rows left with no allowed token end as ``"stuck"`` with a
      completion in ``out.stats.witnesses[row]``. ``schema``: a JSON Schema (dict or path to a ``.json`` file; or
      a list, one per prompt): the grammar of its valid instances *and* a scaffold of its skeleton.
      ``slot_length``: ``"model"`` (default) — each value is as long as the model writes it, and the skeleton's
      keys are written right after it (filter ``scaffold``, ``dllm/filters/scaffold.py``); ``"schema"``, an int,
      or a dict by property / type name — fixed slots of that many tokens.
      ``template``: text with ``<mask:N>`` slots (one string, or one per prompt) laid into the output region
      (``dllm/grammars/scaffold.py``); the output ends where it ends. Without ``gen_length`` the canvas is the
      template rounded up to whole blocks. ``stats.tokens`` counts only what the model wrote, not fixed text.
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


@dataclass
class GenerateOptions:
    """``dllm.generate``'s own keywords (anything else is a sampler, cache, modifier or filter option).

    Values are checked against these types once, wherever they come from (Python, ``-o``, lm-eval model args):
    ``temperature="hot"`` or ``steps=True`` fail in one line naming the option.
    """

    sampler: object = "static"  # a registered name or a Sampler object
    cache: str | None = None
    gen_length: int | None = None
    block_length: int | None = None
    steps: int | None = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    seed: object = None  # int, or one int per prompt
    stop: object = None  # str or list of str
    chat: bool = False
    system: str | None = None
    chat_template_kwargs: dict | None = None  # passed to the chat template (e.g. {"enable_thinking": False})
    return_trajectory: bool = False
    confidence: str = "prob"
    ar_first: bool | None = None
    eos_ids: object = None
    processors: object = ()
    modifiers: object = ()
    filters: object = ()
    max_rejections: int = 100
    eotp: object = None  # "committed", "predicted", "fill" (True = committed)
    grammar: object = None
    schema: object = None
    template: object = None
    slot_length: object = None


_OWN = {f.name for f in fields(GenerateOptions)}


def prepare(model: Model, prompts, **kwargs) -> tuple[Engine, object, "_Request"]:
    """Validate a request and build its engine and canvas (no forward runs here)."""
    if "trajectory" in kwargs:
        raise ValueError("unknown option 'trajectory': the keyword is return_trajectory=True")
    own = {k: kwargs.pop(k) for k in list(kwargs) if k in _OWN}
    args = GenerateOptions(**registry.coerce_options(GenerateOptions, own, "dllm.generate"))
    options = kwargs
    prompt_ids = _encode_prompts(model, prompts, args.chat, args.system, args.chat_template_kwargs)
    grammar, templates, open_pieces = _structure(model, args, len(prompt_ids))
    gen_length = args.gen_length if args.gen_length is not None else default_gen_length(model)
    if templates is not None and args.gen_length is None and open_pieces is None:  # the template, in whole blocks
        block = args.block_length or (model.block_size if model.attention == "block_causal" else None) \
            or model.canvas_defaults.get("block_length") or 32
        gen_length = -(-max(len(t) for t in templates) // block) * block
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length must be a positive integer (got {gen_length!r})")
    block_length = args.block_length
    block_causal = model.attention == "block_causal"
    cache_name = args.cache or ("block" if block_causal else "none")
    cache_options = {k: options.pop(k) for k in list(options) if k in caches.base.all_option_names()}
    cache_obj = caches.build(cache_name, model.attention, model.family, cache_options)
    modifier_objs = _plugins(modifiers, args.modifiers, options)
    filter_objs = _plugins(filters, args.filters, options)
    grammar_filter = None
    grammar_only = [k for k in filters.option_names("grammar") if k != "grammar" and k in options]
    if grammar is None and grammar_only:
        raise ValueError(f"{grammar_only[0]} is an option of grammar-constrained decoding: "
                         "pass grammar= or schema= too")
    if grammar is not None:
        mine = {k: options.pop(k) for k in grammar_only}
        grammar_filter = filters.build("grammar", {"grammar": grammar, **mine})
        if open_pieces is not None:  # writes the skeleton's keys; the grammar filter checks them like any commit
            filter_objs.append(filters.build("scaffold", {"pieces": open_pieces}))
        filter_objs.append(grammar_filter)  # after the user's filters: it checks what they let through
    sampler_obj = samplers.build(args.sampler, options)

    block_length = _block_length(model, gen_length, block_length, cache_options.get("sub_block"))
    layout = sampler_obj.layout(gen_length, block_length)
    steps = args.steps
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
    temperature, cfg_scale = _number("temperature", args.temperature), _number("cfg_scale", args.cfg_scale)
    if args.confidence not in CONFIDENCES:
        raise ValueError(f"unknown confidence '{args.confidence}': use one of {', '.join(CONFIDENCES)}")
    _check_context(model, prompt_ids, gen_length)

    stop = args.stop
    stop_strings = normalize_stops(stop)
    eos = tuple(int(i) for i in (args.eos_ids if args.eos_ids is not None else model.eos_ids))
    ar_first = args.ar_first
    if ar_first is None:
        ar_first = model.logit_shift and block_causal
    if ar_first:
        filter_objs = [filters.build("ar_opening")] + filter_objs
    if args.eotp:  # End-of-Text prediction: last, so it sees every other filter's commits
        filter_objs = filter_objs + [filters.build("eotp", {"mode": "committed" if args.eotp is True else args.eotp})]
    generators = None
    if temperature > 0 or sampler_obj.needs_generator:
        generators = _generators(args.seed, len(prompt_ids), model.device)
    elif args.seed is not None:
        _generators(args.seed, len(prompt_ids), model.device)  # validate it all the same
    max_rejections = args.max_rejections
    if isinstance(max_rejections, bool) or not isinstance(max_rejections, int) or max_rejections < 0:
        raise ValueError(f"max_rejections must be an integer >= 0 (got {max_rejections!r})")

    fixed = None if templates is None else _fixed_cells(templates, gen_length, model.mask_id, eos,
                                                        open_end=open_pieces is not None)
    canvas = build_canvas(prompt_ids, gen_length, block_length, mask_id=model.mask_id, pad_id=model.pad_id,
                          block_size=model.block_size if block_causal else None, device=model.device,
                          span_lengths=layout, fixed=fixed)
    processors = list(args.processors)
    if fixed is not None:
        processors.append(_template_guard(fixed, canvas, model.mask_id, eos))
    if grammar_filter is not None:
        grammar_filter.attach(model, canvas, eos)  # an impossible template fails here, before any forward
    settings = DecodeSettings(steps_per_span=steps_per_span, temperature=temperature, cfg_scale=cfg_scale,
                              confidence=args.confidence, eos_ids=eos, stop_strings=stop_strings,
                              record=args.return_trajectory, generators=generators,
                              processors=processors, max_rejections=max_rejections)
    engine = Engine(model, sampler_obj, cache_obj, settings, modifier_objs, filter_objs)
    request = _Request(model, prompt_ids, canvas.pad.tolist(), canvas.gen_start.tolist(), gen_length, eos, stop_strings,
                       fixed)
    return engine, canvas, request


def _structure(model: Model, args: GenerateOptions, rows: int):
    """The grammar spec, the template cells per row (or None) and, for a scaffold with open slots, its pieces (or
    None) from ``grammar`` / ``schema`` / ``template`` / ``slot_length``. An open scaffold lays only its first
    fixed piece; the ``scaffold`` filter writes the rest."""
    from .grammars import load_grammar, scaffold

    grammar, schema, template = args.grammar, args.schema, args.template
    if isinstance(grammar, (list, tuple)) and len(grammar) not in (1, rows):
        raise ValueError(f"{len(grammar)} grammars for {rows} prompts: give one grammar, or one per prompt")
    if schema is not None:
        if grammar is not None:
            raise ValueError("give grammar= or schema=, not both (schema= is the grammar of its instances)")
        schemas = [_read_schema(s) for s in (schema if isinstance(schema, (list, tuple)) else [schema])]
        if len(schemas) not in (1, rows):
            raise ValueError(f"{len(schemas)} schemas for {rows} prompts: give one schema, or one per prompt")
        for one in schemas:
            load_grammar(one)  # unsupported keywords fail with their own message before the scaffold is laid
        grammar = schemas[0] if len(schemas) == 1 else schemas
        if template is None:
            slots = "model" if args.slot_length is None else args.slot_length
            pieces = [scaffold.schema_pieces(one, slots) for one in schemas]
            if any(isinstance(p, scaffold.OpenSlot) for row in pieces for p in row):
                firsts = [p[0] if isinstance(p[0], str) else "" for p in pieces]
                cells = [scaffold.template_cells([f], model.tokenizer, model.mask_id) if f else [] for f in firsts]
                return grammar, cells * rows if len(cells) == 1 else cells, pieces
            template = pieces
    elif args.slot_length is not None:
        raise ValueError("slot_length sizes the slots of a schema scaffold: pass schema= too")
    if template is None:
        return grammar, None, None
    if isinstance(template, str):
        template = [template]
    if not isinstance(template, (list, tuple)) or not template or not all(isinstance(t, (str, list)) for t in template):
        raise ValueError("template must be text with <mask:N> slots, or one such text per prompt")
    if len(template) not in (1, rows):
        raise ValueError(f"{len(template)} templates for {rows} prompts: give one template, or one per prompt")
    if model.tokenizer is None:
        raise ValueError("a template needs the model's tokenizer")
    pieces = [t if isinstance(t, list) else scaffold.parse_template(t) for t in template]
    cells = [scaffold.template_cells(p, model.tokenizer, model.mask_id) for p in pieces]
    return grammar, cells * rows if len(cells) == 1 else cells, None


def _read_schema(schema) -> dict:
    """A JSON Schema given as a dict, or the path of a JSON file."""
    if isinstance(schema, dict):
        return schema
    try:
        with open(schema, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, TypeError, ValueError) as exc:
        raise ValueError(f"schema must be a dict or the path of a JSON file ({schema!r}: "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())})") from None


def _fixed_cells(templates: list[list[int]], gen_length: int, mask_id: int, eos: tuple[int, ...],
                 open_end: bool = False) -> list[list[int]]:
    """Each row's generated region: its template, then EOS (the output ends where the template ends), or masks
    (``open_end``: a scaffold with open slots, whose end the model decides)."""
    rows = []
    for i, cells in enumerate(templates):
        if len(cells) > gen_length:
            raise ValueError(f"template{'' if len(templates) == 1 else f' {i}'} is {len(cells)} tokens, longer than "
                             f"the canvas (gen_length {gen_length}): raise gen_length or shorten the template")
        if open_end:
            rows.append(list(cells) + [mask_id] * (gen_length - len(cells)))
            continue
        if len(cells) < gen_length and not eos:
            raise ValueError("a template shorter than gen_length ends the output with EOS, but eos_ids is empty")
        rows.append(list(cells) + [eos[0] if eos else mask_id] * (gen_length - len(cells)))
    return rows


def _template_guard(fixed: list[list[int]], canvas, mask_id: int, eos: tuple[int, ...]):
    """No EOS before a row's last fixed template token (it would cut the template off)."""
    from .grammars.scaffold import TemplateGuard

    eos_set = set(eos)
    last = [max((i for i, t in enumerate(row) if t != mask_id and t not in eos_set), default=-1) for row in fixed]
    starts = canvas.gen_start.cpu().tolist()
    return TemplateGuard(torch.tensor([starts[r] + i if i >= 0 else -1 for r, i in enumerate(last)]), eos)


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
def _encode_prompts(model: Model, prompts, chat: bool, system: str | None = None,
                    template_kwargs: dict | None = None) -> list[list[int]]:
    if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt (a string or a list of token ids)")
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = model.encode(prompt, chat=chat, system=system, template_kwargs=template_kwargs)
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
        return default_block_length(model, gen_length)
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
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

    def __init__(self, model, prompt_ids, pads, gen_starts, gen_length, eos, stop_strings, fixed=None):
        self.model, self.prompt_ids, self.pads, self.gen_starts = model, prompt_ids, pads, gen_starts
        self.gen_length, self.eos, self.stop_strings = gen_length, eos, stop_strings
        self.fixed = fixed  # template cells per row: their non-MASK cells are not generated tokens

    def collect(self, engine: Engine) -> Generation:
        model, final, stats = self.model, engine.final.cpu(), engine.stats
        texts, sequences, canvases, counts = [], [], [], []
        eos_set = set(self.eos)
        for row, prompt in enumerate(self.prompt_ids):
            start = self.gen_starts[row]
            generated = final[row, start:start + self.gen_length].tolist()
            cut = next((i for i, t in enumerate(generated) if t in eos_set), len(generated))
            where = [i for i in range(cut) if generated[i] != model.mask_id]
            answer = [generated[i] for i in where]
            full = model.decode(answer)
            text = cut_at_stops(full, self.stop_strings)
            if len(text) < len(full):
                answer = _tokens_within(model, answer, text)
            texts.append(text)
            sequences.append(answer)
            fixed = None if self.fixed is None else self.fixed[row]
            written = set().union(*(f.fixed_cells().get(row, ()) for f in engine.filters))  # e.g. a scaffold's keys
            counts.append(sum((fixed is None or fixed[i] == model.mask_id) and i not in written
                              for i in where[:len(answer)]))
            canvases.append(final[row, self.pads[row]:start + self.gen_length].tolist())
        stats.row_tokens = counts
        stats.tokens = sum(stats.row_tokens)
        trajectory = engine.trajectory
        if trajectory is not None:  # the first frame spans exactly what ``canvases`` holds (no alignment pad)
            trajectory.initial = [row[:len(c)] for row, c in zip(trajectory.initial, canvases)]
        return Generation(texts=texts, sequences=sequences, canvases=canvases,
                          prompt_lengths=[len(p) for p in self.prompt_ids], stats=stats, trajectory=trajectory)


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
