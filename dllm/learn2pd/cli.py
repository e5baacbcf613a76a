"""``dllm train-filter``: train a Learn2PD filter for a model from its own decodes (see :mod:`dllm.learn2pd`)."""

from __future__ import annotations

import argparse
import sys


HELP = ("train a Learn2PD unmasking filter from the model's own static decodes and EGP oracle labels; "
        "writes filter.safetensors + filter.json")


def build_parser(prog: str = "dllm train-filter") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=HELP[0].upper() + HELP[1:] + ".")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``dllm train-filter`` (for ``dllm.cli.register_command``)."""
    parser.add_argument("--model", required=True, help="checkpoint directory, hub id, 'tiny' or 'tiny-cot'")
    parser.add_argument("--tasks", default=None, help="comma-separated embedded tasks whose training split gives "
                        "the prompts (e.g. arith,json,sort); with --prompts: names only, recorded in filter.json")
    parser.add_argument("--prompts", default=None, help="file of training prompts (one per line, or .jsonl) for "
                        "task sets without a training split")
    parser.add_argument("--limit", type=int, default=None, help="prompts per task (default 200), or the first N "
                        "of --prompts (default all)")
    parser.add_argument("--out", required=True, help="output directory (the checkpoint directory: the sampler "
                        "finds the filter there)")
    parser.add_argument("--block-length", type=int, default=None, help="decode block length the filter is for "
                        "(default: the model's)")
    parser.add_argument("--gen-length", type=int, default=None, help="canvas of the trace decodes (default: the model's)")
    parser.add_argument("--cache", default="none",
                        help="cache of the trace decodes (default none, as the reference; dual is several times "
                             "faster on long canvases)")
    parser.add_argument("--confidence", default="prob", help="confidence kind the filter reads (default prob)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the trace decodes (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-iterations", type=int, default=40_000)
    parser.add_argument("--patience", type=int, default=2_000)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the checkpoint's chat template")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def train_filter_main(argv: list[str] | None = None) -> int:
    """Entry point; errors are one line on stderr with exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as exc:
        print(f"dllm train-filter: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dllm train-filter: interrupted (nothing written)", file=sys.stderr)
        return 130
    return 0


def command(args) -> int:
    """``run`` for ``dllm.cli.register_command``: errors propagate as ValueError / OSError (one line)."""
    run(args)
    return 0


def run(args) -> dict:
    import torch

    import dllm
    from ..canvas_defaults import prompt_suffix
    from .pipeline import train_filter
    from .prompts import file_digest, file_prompts, task_prompts
    from .training import FitSettings

    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if not tasks and not args.prompts:
        raise ValueError("no training prompts: pass --tasks T1,T2 (embedded tasks) or --prompts FILE")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1 (got {args.limit})")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1 (got {args.threads})")
    torch.set_num_threads(args.threads)
    if args.prompts:
        source = {"tasks": tasks, "prompts_file": str(args.prompts).rsplit("/", 1)[-1],
                  "prompts_sha256": file_digest(args.prompts), "limit": args.limit}
    else:
        limit = args.limit or 200
        source = {"tasks": tasks, "limit_per_task": limit, "split": "train"}
        prompts = task_prompts(tasks, limit, args.seed)  # checks the task names before loading anything
    model = dllm.load(args.model, device=args.device or "cpu")
    if args.prompts:
        prompts = file_prompts(args.prompts, "" if args.chat else prompt_suffix(model), args.limit)
    settings = FitSettings(hidden=args.hidden, lr=args.lr, max_iterations=args.max_iterations,
                           patience=args.patience, val_fraction=args.val_fraction, seed=args.seed)
    return train_filter(model, prompts, args.out, gen_length=args.gen_length, block_length=args.block_length,
                        confidence=args.confidence, settings=settings, batch_size=args.batch_size, chat=args.chat,
                        cache=args.cache, source=source, progress=not args.quiet)


if __name__ == "__main__":
    sys.exit(train_filter_main())
