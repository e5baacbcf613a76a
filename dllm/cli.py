"""The ``dllm`` command line: ``dllm generate`` (more subcommands register themselves in ``COMMANDS``)."""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

COMMANDS: dict[str, tuple] = {}


def register_command(name: str, help: str, add_arguments, run) -> None:
    """Make ``dllm NAME`` call ``run(args)`` after ``add_arguments(parser)`` defined its flags."""
    COMMANDS[name] = (help, add_arguments, run)


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as a Python literal when it is one (numbers, True/False, None)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option '{text}' must look like KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler", default="static", help="sampler name (see `dllm generate --list-samplers`)")
    parser.add_argument("--cache", default=None, help="none | prefix | dual | block (default: the family's)")
    parser.add_argument("--gen-length", type=int, default=None, help="canvas size (default: the checkpoint's, else 128)")
    parser.add_argument("--block-length", type=int, default=None, help="default: the checkpoint's when it divides gen_length")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=None, help="threshold sampler's confidence threshold")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the checkpoint's chat template")
    parser.add_argument("-o", "--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="any other sampler or cache option, e.g. -o factor=1.0 -o refresh_every=4")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--device", default=None)


def decoding_kwargs(args) -> dict:
    kwargs = dict(sampler=args.sampler, cache=args.cache, gen_length=args.gen_length, block_length=args.block_length,
                  steps=args.steps, temperature=args.temperature, seed=args.seed, stop=args.stop, chat=args.chat)
    if args.threshold is not None:
        kwargs["threshold"] = args.threshold
    kwargs.update(dict(args.option))
    return kwargs


def _generate_arguments(parser):
    parser.add_argument("--model", default="tiny", help="checkpoint directory, hub id, or 'tiny' (default)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", action="append", help="prompt text (repeatable)")
    source.add_argument("--prompts-file", type=Path, help="one prompt per line (.txt) or {'prompt': ...} per line (.jsonl)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--list-samplers", action="store_true", help="print the registered samplers and exit")
    add_decoding_arguments(parser)


def _checkpoint_canvas(model, kwargs: dict) -> None:
    """Fill gen_length / block_length left unset from the checkpoint's generation_config.json (the embedded
    model ships the canvas it was trained for), else gen_length 128 and dllm.generate's own block rule."""
    defaults = model.canvas_defaults
    if kwargs["gen_length"] is None:
        kwargs["gen_length"] = defaults.get("gen_length", 128)
        block = defaults.get("block_length")
        if kwargs["block_length"] is None and block and kwargs["gen_length"] % block == 0:
            kwargs["block_length"] = block


def _generate(args) -> int:
    import dllm

    if args.list_samplers:
        for name in dllm.samplers.available():
            print(f"{name}: options {', '.join(dllm.samplers.option_names(name)) or '-'}")
        return 0
    prompts = _read_prompts(args)
    model = dllm.load(args.model, dtype=args.dtype, device=args.device)
    kwargs = decoding_kwargs(args)
    _checkpoint_canvas(model, kwargs)
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    progress = None
    if len(batches) > 1:
        from tqdm import tqdm

        progress = tqdm(total=len(prompts), desc="generate", unit="prompt", file=sys.stderr)
    totals = {"tokens": 0, "forwards": 0, "seconds": 0.0, "nfe": 0}
    for batch in batches:
        out = dllm.generate(model, batch, **kwargs)
        for prompt, text, tokens, nfe in zip(batch, out.texts, out.stats.row_tokens, out.stats.row_nfe):
            if args.json:
                print(json.dumps({"prompt": prompt, "text": text, "tokens": tokens, "nfe": nfe}))
            else:
                print(text if len(prompts) == 1 else f"--- {prompt!r}\n{text}")
        totals["tokens"] += out.stats.tokens
        totals["forwards"] += sum(out.stats.row_nfe)
        totals["nfe"] += out.stats.nfe
        totals["seconds"] += out.stats.seconds
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.close()
    tpf = totals["tokens"] / totals["forwards"] if totals["forwards"] else 0.0
    speed = totals["tokens"] / totals["seconds"] if totals["seconds"] else 0.0
    print(f"[dllm] {len(prompts)} prompt(s), {totals['tokens']} tokens, NFE {totals['nfe']}, TPF {tpf:.2f}, "
          f"{totals['seconds']:.2f}s, {speed:.1f} tok/s, sampler {out.stats.sampler['sampler']}, "
          f"cache {out.stats.cache['cache']}", file=sys.stderr)
    return 0


register_command("generate", "decode prompts and print texts with speed statistics", _generate_arguments, _generate)


def _read_prompts(args) -> list[str]:
    if args.prompt:
        return args.prompt
    if args.prompts_file is None:
        raise ValueError("give --prompt TEXT or --prompts-file FILE")
    if not args.prompts_file.exists():
        raise ValueError(f"prompts file {args.prompts_file} does not exist")
    lines = [line for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if args.prompts_file.suffix == ".jsonl":
        return [json.loads(line)["prompt"] for line in lines]
    return lines


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
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"dllm {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _load_subcommands() -> None:
    """Subcommands living in other modules (evaluation) register themselves on import."""
    try:
        import dllm.eval.cli  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only when the eval extra is broken
        if "dllm.eval.cli" not in str(exc):
            raise


if __name__ == "__main__":
    sys.exit(main())
