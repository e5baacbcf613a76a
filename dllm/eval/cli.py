"""``dllm eval`` (sweeps over samplers and caches) and ``dllm lm-eval`` (lm-eval's own CLI, dllm inside).

Imported by :func:`dllm.cli.main`, which it extends through ``register_command``. lm-eval's CLI does not
import third-party models or know external task folders by itself; ``dllm lm-eval`` registers the ``dllm``
model and adds the embedded tasks' folder to ``--include_path`` (next to any folder the user gives), then
hands every argument to lm-eval unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_common_arguments, check_device, parse_option, positive_int, register_command, set_threads

DEFAULT_TASKS = "dllm_arith,dllm_json,dllm_sort"


def _eval_arguments(parser) -> None:
    parser.add_argument("--model", default="tiny", help="checkpoint directory, hub id, or 'tiny' (default)")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated lm-eval tasks (default {DEFAULT_TASKS})")
    parser.add_argument("--samplers", default="static,threshold",
                        help="comma-separated sampler specs name[:key=value...], e.g. static,threshold:threshold=0.9")
    parser.add_argument("--caches", default=None,
                        help="comma-separated caches name[:key=value...], e.g. none,dual:refresh_every=2 (default: the family's)")
    parser.add_argument("--limit", type=float, default=None, help="first N documents per task (or a fraction < 1)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results folder (default runs/eval-<model>); runs with other settings write beside earlier ones")
    parser.add_argument("--gen-length", type=positive_int, default=None, help="canvas size (default: the checkpoint's, else 128)")
    parser.add_argument("--block-length", type=positive_int, default=None)
    parser.add_argument("--steps", type=positive_int, default=None, help="static sampler's steps for the full canvas")
    parser.add_argument("--mc-num", type=positive_int, default=None, help="Monte-Carlo samples per loglikelihood request (128)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-fewshot", type=int, default=None,
                        help="few-shot examples (tasks whose config fixes 0 shots, the embedded ones among them, refuse > 0)")
    parser.add_argument("--apply-chat-template", action="store_true")
    parser.add_argument("--log-samples", action="store_true", help="also write per-sample outputs per combination")
    parser.add_argument("--grid", default=None,
                        help="vary decoding args for every sampler, e.g. gen_length=32,64,block_length=8,16,cache=none,dual")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="also write figures, AUP and Pareto tables, report.md and report.html into DIR")
    add_common_arguments(parser, "any other option for every combination: a sampler or cache option (to the "
                                 "combinations that take it) or a dllm model arg, e.g. -o mc_batch_size=16")
    parser.add_argument("--model-arg", action="append", type=parse_option, dest="option", metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)  # the old long name of -o


def _eval(args) -> int:
    from .sweep import Sweep, check_output, parse_caches, parse_samplers, run

    model_args = {key: value for key, value in (("gen_length", args.gen_length), ("block_length", args.block_length),
                                                ("steps", args.steps), ("mc_num", args.mc_num), ("seed", args.seed),
                                                ("threshold", args.threshold))
                  if value is not None}
    model_args.update(dict(args.option or []))
    limit = args.limit
    if limit is not None:
        if not limit > 0:
            raise ValueError(f"--limit {limit:g} must be > 0")
        if limit >= 1 and not float(limit).is_integer():
            raise ValueError(f"--limit {limit:g}: give a whole number of documents, or a fraction below 1")
        limit = int(limit) if limit >= 1 else limit
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot {args.num_fewshot} must be >= 0")
    output = args.output or Path("runs") / f"eval-{Path(str(args.model)).name or 'model'}"
    check_output(output)
    if args.report is not None:
        from .report import check_output_dir

        check_output_dir(args.report)
    samplers, caches = grid_points(parse_samplers(args.samplers), parse_caches(args.caches), args.grid, args.caches)
    device = check_device(args.device)
    set_threads(args.threads)
    sweep = Sweep(model=str(args.model), tasks=[t.strip() for t in args.tasks.split(",")],
                  samplers=samplers, caches=caches, output=output, limit=limit,
                  batch_size=args.batch_size, model_args=model_args, log_samples=args.log_samples,
                  apply_chat_template=args.apply_chat_template, num_fewshot=args.num_fewshot)
    run(sweep, dtype=args.dtype, device=device, progress=not args.no_progress)
    if args.report is not None:
        from .report import write_report

        for path in write_report(sweep.output, args.report, files=sweep.files):
            print(f"report: {path}")
    return 0


def grid_points(samplers, caches, grid: str | None, caches_flag: str | None):
    """The run plan with ``--grid``: every sampler point crossed with every grid point (decoding args join the
    sampler's options; ``cache=...`` entries join the caches)."""
    if not grid:
        return samplers, caches
    from .ranges import expand_grid, point_text
    from .sweep import SamplerSpec, parse_caches

    points = expand_grid(grid)
    grid_caches = [p.pop("cache") for p in points if "cache" in p]
    if grid_caches and caches_flag is not None:
        raise ValueError("--grid sets cache= and --caches is given too: name the caches in one of them")
    if grid_caches:
        caches = parse_caches(",".join(dict.fromkeys(str(c) for c in grid_caches)))
    crossed = []
    for spec in samplers:
        for point in dict.fromkeys(tuple(sorted(p.items())) for p in points):
            options = {**dict(spec.options), **dict(point)}
            crossed.append(SamplerSpec(spec.name, tuple(options.items()), point_text(spec.name, options)))
    return list(dict.fromkeys(crossed)), caches


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's command line with ``--model dllm`` and the embedded tasks available. With ``--model dllm``
    and no ``--batch_size`` the batch size is dllm's one default (32), as in ``dllm eval``."""
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    from . import TASKS_DIR, check_num_fewshot, quiet_lm_eval, quiet_task_loading, register, task_manager
    from .lm import DEFAULT_BATCH

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
        if getattr(args, "model", None) == "dllm" and not getattr(args, "config", None) and not hasattr(args, "batch_size"):
            args.batch_size = str(DEFAULT_BATCH)
        requested = _task_names(getattr(args, "tasks", None))
        embedded = task_manager(include_defaults=False)
        unknown = [t for t in requested if t.startswith("dllm_") and t not in embedded.all_tasks]
        if unknown:  # an embedded-suite name that does not exist: say so without indexing all of lm-eval
            raise ValueError(f"Tasks not found: {', '.join(unknown)}")
        if getattr(args, "num_fewshot", None):
            tasks = requested
            check_num_fewshot(embedded, [t for t in tasks if t.startswith("dllm_")],
                              args.num_fewshot, flag="--num_fewshot")
        with quiet_lm_eval():
            cli.execute(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dllm lm-eval: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dllm lm-eval: interrupted; lm-eval writes its results at the end, so none were kept", file=sys.stderr)
        return 130
    finally:
        sys.argv = saved
    return 0


def _task_names(tasks) -> list[str]:
    items = tasks if isinstance(tasks, (list, tuple)) else [tasks] if tasks else []
    return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


register_command("eval", "score samplers x caches on lm-eval tasks (embedded suite by default); resumable",
                 _eval_arguments, _eval)
register_command("lm-eval", "lm-eval's own command line with the dllm model and the embedded tasks registered",
                 lambda parser: None, run_lm_eval)


def _report_command():
    from . import report

    register_command("report", "figures, AUP and Pareto tables (report.md, report.html) from a finished `dllm eval` run",
                     report.add_arguments, report.run)


_report_command()
