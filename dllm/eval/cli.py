"""``dllm eval`` (sweeps over samplers and caches) and ``dllm lm-eval`` (lm-eval's own CLI, dllm inside).

Imported by :func:`dllm.cli.main`, which it extends through ``register_command``. lm-eval's CLI does not
import third-party models or know external task folders by itself; ``dllm lm-eval`` registers the ``dllm``
model and adds the embedded tasks' folder to ``--include_path`` (next to any folder the user gives), then
hands every argument to lm-eval unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..cli import parse_option, register_command

DEFAULT_TASKS = "dllm_arith,dllm_json,dllm_sort"


def _eval_arguments(parser) -> None:
    parser.add_argument("--model", default="tiny", help="checkpoint directory, hub id, or 'tiny' (default)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated lm-eval tasks (default {DEFAULT_TASKS})")
    parser.add_argument("--samplers", default="static,threshold",
                        help="comma-separated sampler specs name[:key=value...], e.g. static,threshold:threshold=0.9")
    parser.add_argument("--caches", default=None, help="comma-separated caches, e.g. none,dual (default: the family's)")
    parser.add_argument("--limit", type=float, default=None, help="first N documents per task (or a fraction < 1)")
    parser.add_argument("--output", type=Path, default=None, help="results folder (default runs/eval-<model>)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts decoded together (and the MC mini-batch)")
    parser.add_argument("--gen-length", type=int, default=None, help="canvas size (default: the checkpoint's, else 128)")
    parser.add_argument("--block-length", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="static sampler's steps for the full canvas")
    parser.add_argument("--mc-num", type=int, default=None, help="Monte-Carlo samples per loglikelihood request (128)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--apply-chat-template", action="store_true")
    parser.add_argument("--log-samples", action="store_true", help="also write per-sample outputs per combination")
    parser.add_argument("-o", "--model-arg", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                        help="any other dllm model arg for every combination, e.g. -o mc_batch_size=16")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _eval(args) -> int:
    from .sweep import Sweep, parse_caches, parse_samplers, run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_args = {key: value for key, value in (("gen_length", args.gen_length), ("block_length", args.block_length),
                                                ("steps", args.steps), ("mc_num", args.mc_num), ("seed", args.seed))
                  if value is not None}
    model_args.update(dict(args.model_arg))
    limit = args.limit
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"--limit {limit:g} must be > 0")
        limit = int(limit) if limit >= 1 else limit
    output = args.output or Path("runs") / f"eval-{Path(str(args.model)).name or 'model'}"
    sweep = Sweep(model=str(args.model), tasks=[t.strip() for t in args.tasks.split(",")],
                  samplers=parse_samplers(args.samplers), caches=parse_caches(args.caches), output=output, limit=limit,
                  batch_size=args.batch_size, model_args=model_args, log_samples=args.log_samples,
                  apply_chat_template=args.apply_chat_template, num_fewshot=args.num_fewshot)
    run(sweep, dtype=args.dtype, device=args.device, progress=not args.no_progress)
    return 0


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's command line with ``--model dllm`` and the embedded tasks available."""
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    from . import TASKS_DIR, quiet_task_loading, register

    register()
    quiet_task_loading()
    setup_logging()
    saved = sys.argv
    sys.argv = ["dllm lm-eval", *argv]
    try:
        cli = HarnessCLI()
        args = cli.parse_args()
        if hasattr(args, "include_path"):
            extra = args.include_path
            args.include_path = [str(TASKS_DIR)] + ([extra] if extra else [])
        cli.execute(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dllm lm-eval: error: {message}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


register_command("eval", "score samplers x caches on lm-eval tasks (embedded suite by default); resumable",
                 _eval_arguments, _eval)
register_command("lm-eval", "lm-eval's own command line with the dllm model and the embedded tasks registered",
                 lambda parser: None, run_lm_eval)
