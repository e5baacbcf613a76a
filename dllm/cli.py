"""The ``dllm`` command line: ``dllm generate`` (more subcommands register themselves in ``COMMANDS``).

Flags shared by ``generate`` and ``eval`` mean the same in both: ``-o/--option KEY=VALUE`` (any other
sampler, cache or decoding option), ``--threshold``, ``--threads``, ``--device``, ``--dtype``,
``--batch-size`` (32 unless told otherwise) and ``--no-progress``. A cache may carry its options,
``--cache dual:refresh_every=2``. Every input error is one line on stderr (exit 2); Ctrl-C is one line saying
what was kept (exit 130).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import registry

COMMANDS: dict[str, tuple] = {}
DEFAULT_BATCH_SIZE = 32  # the one rule, shared with dllm eval and the lm-eval model (dllm.eval.lm.DEFAULT_BATCH)


class Interrupted(Exception):
    """Ctrl-C caught by a command, with the one line that says what was kept."""


def register_command(name: str, help: str, add_arguments, run) -> None:
    """Make ``dllm NAME`` call ``run(args)`` after ``add_arguments(parser)`` defined its flags."""
    COMMANDS[name] = (help, add_arguments, run)


# --------------------------------------------------------------------------------------------------
# argument types and checks shared by the subcommands
# --------------------------------------------------------------------------------------------------
def parse_option(text: str) -> tuple[str, object]:
    """argparse type of ``-o KEY=VALUE`` (:func:`dllm.registry.parse_option`)."""
    try:
        return registry.parse_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def slot_length(text: str) -> int | str:
    """``--slot-length``: ``model``, ``schema`` or a positive integer."""
    if text in ("model", "schema"):
        return text
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use model, schema or a positive number of tokens")
    return int(text)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def check_device(device) -> str | None:
    """``device`` if torch can use it here, else a one-line ValueError (``banana``; ``cuda`` on a CPU build)."""
    if device is None:
        return None
    import torch

    text = str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device '{device}': use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA device is visible to this process")
            raise ValueError(f"device '{device}': {why}; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{device}': MPS is not available on this machine; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device '{device}' is not supported by dllm: use cpu, cuda, cuda:N or mps")
    return text


def set_threads(threads: int | None) -> None:
    """torch CPU threads: as given, else half the cores (at least 1). torch's default of one thread per core
    collapses when another process shares the cores (measured 10x slower on a busy 2-core machine)."""
    import os

    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))


def add_common_arguments(parser: argparse.ArgumentParser, option_help: str) -> None:
    """The flags ``generate`` and ``eval`` share, with one meaning."""
    parser.add_argument("-o", "--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        dest="option", help=option_help)
    parser.add_argument("--threshold", type=float, default=None,
                        help="confidence threshold of the samplers that take one (threshold ...)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"prompts decoded together (default {DEFAULT_BATCH_SIZE}; batching is exact, only speed changes)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: half the cores, at least 1; one per core collapses under load)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (dllm's and lm-eval's)")


# --------------------------------------------------------------------------------------------------
# dllm generate
# --------------------------------------------------------------------------------------------------
def _generate_arguments(parser):
    parser.add_argument("--model", default="tiny", help="checkpoint directory, hub id, or 'tiny' (default)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", help="prompt text (repeatable)")
    source.add_argument("--prompts-file", type=Path, help="one prompt per line (.txt) or {\"prompt\": ...} per line (.jsonl)")
    parser.add_argument("--raw-prompt", action="store_true",
                        help="send prompts exactly as given (do not append the checkpoint's prompt suffix)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--list-samplers", action="store_true", help="print the registered samplers and exit")
    parser.add_argument("--sampler", default="static", help="sampler name (see `dllm generate --list-samplers`)")
    parser.add_argument("--cache", default=None,
                        help="none | prefix | dual | block, with options as dual:refresh_every=2 (default: the family's)")
    parser.add_argument("--gen-length", type=positive_int, default=None,
                        help="canvas size (default: the checkpoint's, else 128)")
    parser.add_argument("--block-length", type=positive_int, default=None,
                        help="default: the checkpoint's when it divides gen_length, else 32 when that does, else gen_length")
    parser.add_argument("--steps", type=positive_int, default=None)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the checkpoint's chat template")
    parser.add_argument("--modifiers", default=None, help="ranking modifiers, comma- or '+'-separated, e.g. eoser "
                        "(their options with -o, e.g. -o gamma_min=0.01)")
    parser.add_argument("--eotp", default=None, choices=("committed", "predicted", "fill"), metavar="MODE",
                        help="End-of-Text prediction: cut a row's EOS tail once an EOS is committed (committed) "
                        "or predicted (predicted), or write the rest of the block as EOS without cutting (fill)")
    parser.add_argument("--max-rejections", type=non_negative_int, default=None, metavar="N",
                        help="filter rejections per row before it ends as stuck (default 100)")
    structure = parser.add_mutually_exclusive_group()
    structure.add_argument("--grammar", default=None, metavar="SPEC",
                           help="constrain the output: json, or a .lark grammar file")
    structure.add_argument("--schema", type=Path, default=None, metavar="PATH",
                           help="a JSON Schema file: its grammar, and a scaffold of its skeleton laid into the output")
    parser.add_argument("--template", default=None, metavar="TEXT",
                        help="output template with <mask:N> slots, e.g. '{\"name\": \"<mask:8>\"}'")
    parser.add_argument("--slot-length", type=slot_length, default=None, metavar="N|model|schema",
                        help="value slots of the --schema scaffold: model (default: each value as long as the model "
                             "writes it, the keys written after it), schema (lengths from the schema), or N tokens")
    parser.add_argument("--stream", action="store_true",
                        help="show the canvas filling in, one line per step on stderr (MASK shown as _)")
    add_common_arguments(parser, "any other sampler, cache or decoding option, e.g. -o factor=1.0 -o refresh_every=4")


def decoding_kwargs(args, model) -> dict:
    """``dllm.generate`` keywords from the flags, the canvas filled by :mod:`dllm.canvas_defaults`."""
    from .canvas_defaults import default_block_length, default_gen_length
    from .stops import normalize_stops

    kwargs = dict(sampler=args.sampler, gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                  temperature=args.temperature, seed=args.seed, stop=list(normalize_stops(args.stop)) or None,
                  chat=args.chat)
    if args.cache is not None:
        name, options = registry.parse_spec(args.cache, "--cache")
        kwargs["cache"] = name
        kwargs.update(options)
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    if args.modifiers:
        kwargs["modifiers"] = registry.split_names(args.modifiers, "--modifiers")
    for key in ("eotp", "max_rejections", "grammar", "template", "slot_length"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.schema is not None:
        kwargs["schema"] = str(args.schema)
    kwargs.update(dict(args.option))
    if kwargs.get("template") is not None or kwargs.get("schema") is not None:
        return kwargs  # without --gen-length the canvas is the template, rounded up to whole blocks
    if kwargs["gen_length"] is None:
        kwargs["gen_length"] = default_gen_length(model)
    if kwargs["block_length"] is None and model.attention != "block_causal":
        kwargs["block_length"] = default_block_length(model, kwargs["gen_length"])
    return kwargs


def _generate(args) -> int:
    import dllm

    from .canvas_defaults import format_prompt

    if args.list_samplers:
        for name in dllm.samplers.available():
            print(f"{name}: options {', '.join(dllm.samplers.option_names(name)) or '-'}")
        return 0
    prompts = read_prompts(args)
    device = check_device(args.device)
    set_threads(args.threads)
    model = dllm.load(args.model, dtype=args.dtype, device=device)
    kwargs = decoding_kwargs(args, model)
    if not args.raw_prompt:
        prompts = [format_prompt(model, p, chat=args.chat) for p in prompts]
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    progress = None
    if len(batches) > 1 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(prompts), desc="generate", unit="prompt", file=sys.stderr)
    totals = {"tokens": 0, "forwards": 0, "seconds": 0.0, "nfe": 0}
    methods = {"accepted": [], "rejections": None, "stuck": 0, "completed": 0}
    done, out = 0, None
    try:
        for batch in batches:
            out = streamed(model, batch, kwargs) if args.stream else dllm.generate(model, batch, **kwargs)
            for row, (prompt, text, tokens, nfe) in enumerate(zip(batch, out.texts, out.stats.row_tokens,
                                                                  out.stats.row_nfe)):
                if args.json:
                    record = {"prompt": prompt, "text": text, "tokens": tokens, "nfe": nfe,
                              "status": out.stats.status[row] if row < len(out.stats.status) else None}
                    if row in out.stats.witnesses:
                        record["witness"] = out.stats.witnesses[row]
                    print(json.dumps(record))
                else:
                    print(text if len(prompts) == 1 else f"--- {prompt!r}\n{text}")
            done += len(batch)
            totals["tokens"] += out.stats.tokens
            totals["forwards"] += sum(out.stats.row_nfe)
            totals["nfe"] += out.stats.nfe
            totals["seconds"] += out.stats.seconds
            _add_method_stats(methods, out.stats)
            if progress is not None:
                progress.update(len(batch))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {done} of {len(prompts)} prompt(s) decoded (printed above); "
                          f"the batch in flight is lost") from None
    finally:
        if progress is not None:
            progress.close()
    tpf = totals["tokens"] / totals["forwards"] if totals["forwards"] else 0.0
    speed = totals["tokens"] / totals["seconds"] if totals["seconds"] else 0.0
    print(f"[dllm] {len(prompts)} prompt(s), {totals['tokens']} tokens, NFE {totals['nfe']}, TPF {tpf:.2f}, "
          f"{totals['seconds']:.2f}s, {speed:.1f} tok/s, sampler {out.stats.sampler['sampler']}, "
          f"cache {out.stats.cache['cache']}{_method_summary(methods)}", file=sys.stderr)
    return 0


def _add_method_stats(methods: dict, stats) -> None:
    """Accumulate what the summary line reports beside NFE/TPF: FreeDave's accepted draft lengths, grammar
    rejections, stuck rows, rows the grammar's completion finished (``complete_after``)."""
    methods["accepted"].extend(stats.counters.get("accepted") or [])
    if "grammar_rejections" in stats.counters:
        methods["rejections"] = (methods["rejections"] or 0) + sum(stats.counters["grammar_rejections"])
    methods["stuck"] += sum(status == "stuck" for status in stats.status)
    methods["completed"] += sum(1 for cells in stats.counters.get("grammar_completed") or [] if cells)


def _method_summary(methods: dict) -> str:
    parts = []
    if methods["accepted"]:
        parts.append(f"accepted {sum(methods['accepted']) / len(methods['accepted']):.2f}")
    if methods["rejections"] is not None:
        parts.append(f"grammar rejections {methods['rejections']}")
    if methods["rejections"] is not None or methods["stuck"]:
        parts.append(f"stuck {methods['stuck']}")
    if methods["completed"]:
        parts.append(f"completed by the grammar {methods['completed']}")
    return "".join(f", {p}" for p in parts)


def streamed(model, prompts: list[str], kwargs: dict):
    """Decode through ``dllm.stream``, printing each row's canvas after every step to stderr."""
    import dllm

    run = dllm.stream(model, prompts, **kwargs)
    canvases: dict[int, list[int]] = {}
    for event in run:
        for row, commits in event.commits.items():
            canvas = canvases.setdefault(row, [model.mask_id] * (kwargs.get("gen_length") or 0))
            for position, token in commits:
                if position >= len(canvas):  # a template's canvas: its size is known once decoding runs
                    canvas.extend([model.mask_id] * (position + 1 - len(canvas)))
                canvas[position] = token
        for row in sorted(event.commits):
            shown = "".join("_" if t == model.mask_id else model.decode([t]) for t in canvases[row])
            print(f"[step {event.step:>3} NFE {event.nfe:>3}] row {row}: {shown!r}", file=sys.stderr)
    return run.result


register_command("generate", "decode prompts and print texts with speed statistics", _generate_arguments, _generate)

from .learn2pd.cli import HELP as _TRAIN_FILTER_HELP, add_arguments as _train_filter_arguments, command as _train_filter  # noqa: E402

register_command("train-filter", _TRAIN_FILTER_HELP, _train_filter_arguments, _train_filter)


def read_prompts(args) -> list[str]:
    """``--prompt`` values, or the prompts of ``--prompts-file`` (a .txt line or a .jsonl ``"prompt"``
    each, as written); an empty or malformed file is a one-line error."""
    if args.prompt:
        return list(args.prompt)
    path = args.prompts_file
    if path is None:
        raise ValueError("give --prompt TEXT or --prompts-file FILE")
    if not path.exists():
        raise ValueError(f"prompts file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"prompts file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line)
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path} line {number} is not JSON ({getattr(exc, 'msg', exc)}): "
                             f"each line must be {{\"prompt\": \"...\"}}") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f"{path} line {number} has no \"prompt\" key: each line must be {{\"prompt\": \"...\"}}")
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise ValueError(f"{path} line {number}: \"prompt\" must be non-empty text (got {row['prompt']!r})")
        prompts.append(row["prompt"])
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts (it is empty or blank): write one prompt per line")
    return prompts


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    _load_subcommands()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "lm-eval" and "lm-eval" in COMMANDS:
        return COMMANDS["lm-eval"][2](argv[1:])
    parser = argparse.ArgumentParser(prog="dllm", description="Fast, correct decoding for masked diffusion LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        if name == "lm-eval":
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args) or 0
    except (ValueError, TypeError, OSError) as exc:  # OSError: e.g. train-filter's unwritable --out
        print(f"dllm {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"dllm {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"dllm {args.command}: interrupted", file=sys.stderr)
        return 130


def _load_subcommands() -> None:
    """Subcommands living in other modules (evaluation) register themselves on import."""
    try:
        import dllm.eval.cli  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only when the eval extra is broken
        if "dllm.eval.cli" not in str(exc):
            raise


if __name__ == "__main__":
    sys.exit(main())
