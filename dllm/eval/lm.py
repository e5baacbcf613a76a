"""The lm-eval model ``dllm``: batched ``generate_until`` through the engine, Monte-Carlo ``loglikelihood``.

Configured with lm-eval's usual ``--model_args`` (``pretrained``, ``sampler``, ``cache``, ``gen_length``,
``block_length``, ``steps``, any sampler or cache option, ``modifiers=eoser`` (several joined by ``+``) with
their options, ``eotp``, ``grammar``, ``schema``, ``mc_num`` ...; see :mod:`dllm.eval.settings`).
Requests are grouped by task and generation settings, sorted by prompt length and decoded ``batch_size`` at
a time as ragged batches (exact: a row decodes as it would alone); ``until`` strings stop rows inside the
decode loop. Speed statistics go to the results JSON through ``get_model_info``; data parallelism follows
lm-eval's rank / world-size protocol over accelerate (``accelerate launch`` or ``torchrun``; gloo on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, replace

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

import dllm

from .likelihood import greedy_matches, mc_loglikelihood, rolling_windows
from ..cli import check_device
from ..stops import cut_at_stops
from .settings import EvalSettings, RequestCanvas, load_schema, parse_model_args, plan_canvas, resolve_defaults
from .speed import SpeedLog, versions

log = logging.getLogger("dllm.eval")
#: the one batch rule: 32 prompts decoded together unless told otherwise — in ``dllm eval``, ``dllm lm-eval``,
#: lm-eval's ``auto`` and this class (dllm has no OOM probing; batching is exact, so only speed changes)
DEFAULT_BATCH = 32


@dataclass(frozen=True)
class RequestOptions:
    """What makes requests batchable together (with the same task): canvas, stop strings, temperature."""

    canvas: RequestCanvas  # its max_tokens is zeroed: requests differing only in max_gen_toks share batches
    until: tuple[str, ...]
    temperature: float


@register_model("dllm")
class DiffusionLM(TemplateLM):
    """lm-eval ``LM`` over a :class:`dllm.Model` (``pretrained`` may also be a loaded model)."""

    backend = "causal"

    def __init__(self, batch_size: int | str = DEFAULT_BATCH, max_batch_size: int | None = None, **model_args) -> None:
        super().__init__()
        self.settings: EvalSettings = parse_model_args(model_args)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        device = check_device(self.settings.device)
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = self._join_data_parallel(device)
        pretrained = self.settings.pretrained
        if isinstance(pretrained, dllm.Model):
            self.model = pretrained
        else:
            self.model = dllm.load(str(pretrained), dtype=self.settings.dtype, device=device)
        self._device = self.model.device
        self.tokenizer = self.model.tokenizer
        resolve_defaults(self.settings, self.model)
        self._schema = None if self.settings.schema is None else load_schema(self.settings.schema)
        if self._schema is not None:
            import jsonschema

            self._schema_validator = jsonschema.validators.validator_for(self._schema)(self._schema)
        self.batch_size = _batch_size(batch_size)
        self.mc_batch_size = self.settings.mc_batch_size or math.gcd(self.settings.mc_num, self.batch_size)
        self.speed = SpeedLog()
        self.decoding: dict = {}
        self._warned: set[str] = set()
        self.warnings: list[str] = []
        self.progress = True  # False: no progress bars (dllm eval --no-progress)

    # -- lm-eval construction: model_args win over the CLI's defaults (its --device defaults to cuda:0) --
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "DiffusionLM":
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "DiffusionLM":
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    def _join_data_parallel(self, device: str | None) -> str | None:
        from accelerate import Accelerator

        on_cpu = not torch.cuda.is_available() or (device is not None and str(device).startswith("cpu"))
        accelerator = Accelerator(cpu=on_cpu)
        if accelerator.num_processes <= 1:
            return device
        self.accelerator = accelerator
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        return "cpu" if on_cpu else str(accelerator.device)

    # -- lm-eval's distributed primitives ------------------------------------------------------------
    def all_gather(self, tensor):
        return tensor if self.world_size <= 1 else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        """lm-eval gathers samples and metrics through this collective; every rank's speed counters travel
        along, so rank 0 reports the whole run."""
        if self.world_size <= 1:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object((obj, self.speed.snapshot()), gathered, dst=dst)
        if self.rank != dst:
            return None
        self.speed.ranks = {rank: snapshot for rank, (_, snapshot) in enumerate(gathered)}
        return [item for item, _ in gathered]

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    # -- tokenizer facts ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.model.eos_ids[0]

    @property
    def prefix_token_id(self) -> int:
        return self.model.bos_id if self.model.bos_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.settings.max_length or self.model.max_length or 4096

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def tok_decode(self, tokens) -> str:
        return self.model.decode(tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the {self.model.family} checkpoint at {self.model.path} has no chat template: "
                             f"drop --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # -- generation -----------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        limits: dict[int, int] = {}
        first_seen: dict[int, int] = {}
        copies: dict[int, int] = {}
        for i, request in enumerate(requests):
            options, limits[i] = self._request_options(request.args[1])
            if options.temperature == 0 and id(request) in first_seen:  # lm-eval's DP padding repeats a request
                copies[i] = first_seen[id(request)]
                continue
            first_seen.setdefault(id(request), i)
            groups.setdefault((request.task_name, options), []).append(i)
        bar = tqdm(total=len(requests), desc="dllm generate_until", leave=False, disable=self._quiet(disable_tqdm))
        for (task, options), indices in groups.items():
            prompts = {i: self._prompt_ids(requests[i].args[0], options.canvas.gen_length) for i in indices}
            indices.sort(key=lambda i: -len(prompts[i]))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                kwargs = self._generate_kwargs(options)
                if kwargs["sampler"] == "oracle" and not kwargs.get("targets"):
                    kwargs["targets"] = self._static_outputs([prompts[i] for i in batch], kwargs)
                out = dllm.generate(self.model, [prompts[i] for i in batch], **kwargs)
                tokens = 0
                for row, i in enumerate(batch):
                    results[i], count = self._answer(out, row, options.until, limits[i])
                    tokens += count
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                self._record(task, out.stats, len(batch), tokens, [results[i] for i in batch])
                bar.update(len(batch))
        for i, original in copies.items():
            results[i] = results[original]
        bar.update(len(copies))
        bar.close()
        return results

    def _request_options(self, gen_kwargs: dict | None) -> tuple[RequestOptions, int]:
        """The batching key of a request's gen_kwargs and its own token cap (max_gen_toks)."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_gen_toks = kwargs.pop("max_gen_toks", None)
        do_sample = kwargs.pop("do_sample", None)
        temperature = kwargs.pop("temperature", None)
        if do_sample:
            temperature = 1.0 if temperature is None else float(temperature)
        elif do_sample is None and temperature:
            temperature = float(temperature)
        else:
            temperature = float(self.settings.temperature)
        if kwargs:
            self._warn_once("ignored", f"dllm ignores these generation kwargs: {', '.join(sorted(kwargs))}")
        canvas = plan_canvas(self.settings, self.model, int(max_gen_toks) if max_gen_toks else None)
        return RequestOptions(replace(canvas, max_tokens=0), until, temperature), canvas.max_tokens

    def _prompt_ids(self, context: str, canvas_length: int) -> list[int]:
        ids = self.tok_encode(context) or [self.prefix_token_id]
        room = self.max_length - canvas_length
        if room < 1:
            raise ValueError(f"gen_length {canvas_length} leaves no room for a prompt in the model's context of "
                             f"{self.max_length} tokens: lower gen_length or max_gen_toks")
        if len(ids) > room:
            self._warn_once("truncate", f"prompts longer than {room} tokens are cut from the left to fit the context")
            ids = ids[-room:]
        return ids

    def _generate_kwargs(self, options: RequestOptions) -> dict:
        s, canvas = self.settings, options.canvas
        return dict(sampler=s.sampler, cache=s.cache, gen_length=canvas.gen_length, block_length=canvas.block_length,
                    steps=canvas.steps, temperature=options.temperature, cfg_scale=s.cfg_scale, seed=s.seed,
                    stop=list(options.until) or None, confidence=s.confidence, ar_first=s.ar_first,
                    modifiers=list(s.modifiers), eotp=s.eotp, max_rejections=s.max_rejections, grammar=s.grammar,
                    schema=self._schema, slot_length=s.slot_length,
                    **s.modifier_options, **s.sampler_options, **s.cache_options)

    def _static_outputs(self, prompts: list[list[int]], kwargs: dict) -> list[list[int]]:
        """The EGP oracle's targets: each prompt's static one-token-per-step output on the same canvas and cache
        (its cost is not counted: the oracle is an upper bound, not a method)."""
        static = {k: v for k, v in kwargs.items() if k not in ("sampler", "targets", "steps")}
        from dllm import samplers

        for key in samplers.option_names("oracle"):
            static.pop(key, None)
        out = dllm.generate(self.model, prompts, sampler="static", steps=kwargs["gen_length"], **static)
        return [canvas[len(canvas) - kwargs["gen_length"]:] for canvas in out.canvases]

    def _answer(self, out, row: int, until: tuple[str, ...], limit: int) -> tuple[str, int]:
        """The row's text cut at EOS, at the first stop string and at ``max_gen_toks`` tokens."""
        sequence = out.sequences[row]
        if len(sequence) <= limit:
            return out.texts[row], len(sequence)
        return cut_at_stops(self.model.decode(sequence[:limit]), until), limit

    def _record(self, task: str | None, stats, samples: int, tokens: int, answers: list[str] = ()) -> None:
        speed = self.speed.task(task)
        speed.samples += samples
        speed.nfe += stats.nfe
        speed.forwards += sum(stats.row_nfe)
        speed.tokens += tokens
        speed.seconds += stats.seconds
        accepted = stats.counters.get("accepted") or []  # FreeDave's accepted draft lengths, one per row-step
        speed.accepted_events += len(accepted)
        speed.accepted_tokens += sum(accepted)
        rejections = stats.counters.get("grammar_rejections")
        if rejections is not None:
            speed.grammar_rows += len(rejections)
            speed.grammar_rejections += sum(rejections)
        speed.stuck += sum(status == "stuck" for status in stats.status)
        s = self.settings
        if s.grammar == "json" or self._schema is not None:  # the output is meant to be JSON: how often it is
            for answer in answers:
                try:
                    value = json.loads(answer)
                except ValueError:
                    value, parsed = None, False
                else:
                    parsed = True
                speed.json_checked += 1
                speed.json_valid += parsed
                if self._schema is not None:
                    speed.schema_checked += 1
                    speed.schema_valid += parsed and self._schema_validator.is_valid(value)
        if not self.decoding:
            self.decoding = {"sampler": stats.sampler, "cache": stats.cache}

    # -- likelihood -----------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        encoded = []
        for request in requests:
            context, continuation = request.args
            if context == "":
                target = self.tok_encode(continuation)
                prefix = [self.prefix_token_id]
                if target and target[0] == self.prefix_token_id:
                    prefix, target = target[:1], target[1:]
            else:
                prefix, target = self._encode_pair(context, continuation)
            encoded.append(((context, continuation), prefix, target))
        return self._loglikelihood_tokens(encoded, tasks=[r.task_name for r in requests], disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, tasks=None, disable_tqdm: bool = False, cache_key: str = "loglikelihood"):
        tasks = tasks or [None] * len(requests)
        memo: dict[tuple, tuple[float, bool]] = {}
        results = []
        s = self.settings
        for (key, prefix, target), task in tqdm(list(zip(requests, tasks)), desc="dllm loglikelihood", leave=False,
                                                disable=self._quiet(disable_tqdm)):
            prefix, target = self._fit(prefix, target)
            signature = (tuple(prefix), tuple(target))
            if signature not in memo:
                started = time.perf_counter()
                ll, forwards = mc_loglikelihood(self.model, prefix, target, mc_num=s.mc_num,
                                                batch_size=self.mc_batch_size, cfg_scale=s.cfg_scale, seed=s.seed or 0)
                greedy = False
                if s.greedy_check:
                    greedy, extra = greedy_matches(self.model, prefix, target, s.cfg_scale)
                    forwards += extra
                memo[signature] = (ll, greedy)
                speed = self.speed.task(task)
                speed.ll_requests += 1
                speed.ll_forwards += forwards
                speed.ll_seconds += time.perf_counter() - started
            results.append(memo[signature])
            if key is not None and cache_key:
                self.cache_hook.add_partial(cache_key, key, memo[signature])
        return results

    def _fit(self, prefix: list[int], target: list[int]) -> tuple[list[int], list[int]]:
        """Cut the context from the left (then the target) so prefix + target fits the model."""
        limit = self.max_length
        if len(prefix) + len(target) <= limit:
            return prefix, target
        self._warn_once("fit", f"loglikelihood inputs longer than {limit} tokens are cut from the left")
        if len(target) >= limit:
            return prefix[-1:], target[-(limit - 1):]
        return prefix[-(limit - len(target)):], target

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, desc="dllm loglikelihood_rolling", leave=False, disable=self._quiet(disable_tqdm)):
            (text,) = request.args
            windows = rolling_windows(self.tok_encode(text), self.prefix_token_id, self.max_length - 1)
            pieces = [(None, context, continuation) for context, continuation in windows]
            scores = self._loglikelihood_tokens(pieces, tasks=[request.task_name] * len(pieces), disable_tqdm=True)
            total = sum(ll for ll, _ in scores)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    # -- results JSON ---------------------------------------------------------------------------------
    def get_model_info(self) -> dict:
        """Merged by lm-eval into the results JSON's ``config``: model facts, every decoding setting, the
        library versions, and per-task speed statistics (all ranks)."""
        m = self.model
        return {
            "model_num_parameters": sum(p.numel() for p in m.network.parameters()),
            "model_dtype": str(m.dtype),
            "dllm": {
                "versions": versions(),
                "model": {"path": str(m.path), "family": m.family, "attention": m.attention,
                          "block_size": m.block_size, "logit_shift": m.logit_shift, "mask_id": m.mask_id,
                          "eos_ids": list(m.eos_ids), "device": str(m.device), "max_length": self.max_length},
                "settings": self.settings.describe(),
                "decoding": self.decoding,
                "batch_size": self.batch_size,
                "mc_batch_size": self.mc_batch_size,
                "world_size": self.world_size,
                "speed": self.speed.merged(),
                "warnings": list(self.warnings),
            },
        }

    def _quiet(self, disable_tqdm: bool) -> bool:
        return disable_tqdm or not self.progress or self.rank != 0

    def _warn_once(self, key: str, message: str) -> None:
        """A warning on its own stderr line (above any progress bar), once, and kept in the results JSON."""
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(message)
            log.info(message)
            tqdm.write(f"dllm: warning: {message}", file=sys.stderr)


def _batch_size(value) -> int:
    text = str(value)
    if text.startswith("auto"):
        return DEFAULT_BATCH
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"batch_size={value!r} must be a positive integer or 'auto'") from None
    if size < 1:
        raise ValueError(f"batch_size={value!r} must be a positive integer or 'auto'")
    return size
