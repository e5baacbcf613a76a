"""Score an embedded model on its task suite with ``dllm.generate``: ``python -m dllm.tiny.score [--model tiny-cot]``.

Decodes every held-out problem of ``data/<task>_test.jsonl`` under several samplers and prints, per task and
sampler: accuracy (and the change against one token per step), NFE per sample, TPF, mean answer length and
the EOS tail share of the canvas. The reference row is static one-token-per-step decoding; the ``oracle``
row is the EGP oracle reaching that static output in the fewest forwards any rule could (the headroom a
smarter parallel sampler can hope for). ``--table eoser`` compares the ascending step-size schedule on one
full-canvas block with and without EOS early rejection.
"""

from __future__ import annotations

import argparse
import json
import time

from . import tasks

GEN_LENGTH, BLOCK_LENGTH = 32, 16  # the canvas ``tiny`` was trained for (see train.Recipe)


def canvas_of(model) -> tuple[int, int]:
    """(gen_length, block_length) from the checkpoint's generation_config.json."""
    defaults = model.canvas_defaults
    return defaults.get("gen_length", GEN_LENGTH), defaults.get("block_length", BLOCK_LENGTH)


def samplers_for(table: str, gen_length: int) -> list[tuple[str, dict]]:
    """(row label, dllm.generate options) of a table; steps are per whole canvas."""
    if table == "default":
        return [("static, 1 token/step", {"sampler": "static", "steps": gen_length}),
                ("static, 2 tokens/step", {"sampler": "static", "steps": gen_length // 2}),
                ("static, 4 tokens/step", {"sampler": "static", "steps": gen_length // 4}),
                ("threshold 0.9", {"sampler": "threshold", "threshold": 0.9}),
                ("threshold 0.7", {"sampler": "threshold", "threshold": 0.7}),
                ("threshold 0.5", {"sampler": "threshold", "threshold": 0.5}),
                ("EGP oracle", {"sampler": "oracle"})]
    if table == "eoser":
        one_block = {"sampler": "static", "schedule": "ascending", "block_length": gen_length}
        return [("static, 1 token/step", {"sampler": "static", "steps": gen_length}),
                ("ASS, one block", one_block),
                ("ASS + EOSER gamma_min 0.4", {**one_block, "modifiers": ["eoser"], "gamma_min": 0.4}),
                ("ASS + EOSER gamma_min 0.01", {**one_block, "modifiers": ["eoser"], "gamma_min": 0.01})]
    raise ValueError(f"unknown table {table!r}: use 'default' or 'eoser'")


def task_names(model) -> tuple[str, ...]:
    """The suite a model was trained on: ``tiny``'s three tasks, or ``tiny-cot``'s four."""
    from .cot_tasks import COT_TASKS

    return COT_TASKS if canvas_of(model)[0] > GEN_LENGTH else tasks.TASKS


def score_task(model, task: str, limit: int | None = None, batch_size: int = 100, references=None,
               **generate_options) -> dict:
    """Mean metrics of ``task`` (fractions in [0, 1]) plus speed and length statistics under one sampler.

    ``references``: per-problem generated token ids (the static decode) for the ``oracle`` sampler.
    Returns the metrics, ``tpf``, ``nfe`` (per sample), ``length`` (mean answer tokens), ``tail`` (EOS tail share
    of the canvas), ``seconds``, ``n`` and ``outputs`` (generated ids per problem, for the oracle).
    """
    import dllm

    examples = tasks.load_test_set(task)[:limit]
    gen_length, block_length = canvas_of(model)
    options = {"gen_length": gen_length, "block_length": block_length, **generate_options}
    totals: dict[str, float] = {}
    tokens = forwards = 0
    outputs = []
    began = time.time()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        extra = {"targets": references[start:start + len(chunk)]} if options.get("sampler") == "oracle" else {}
        out = dllm.generate(model, [e.prompt for e in chunk], **options, **extra)
        for example, text in zip(chunk, out.texts):
            for key, value in tasks.score(task, example.target, text).items():
                totals[key] = totals.get(key, 0.0) + value
        tokens += out.stats.tokens
        forwards += sum(out.stats.row_nfe)
        outputs.extend(c[len(c) - gen_length:] for c in out.canvases)
    n = len(examples)
    result = {key: value / n for key, value in totals.items()}
    result.update(tpf=tokens / forwards if forwards else 0.0, nfe=forwards / n, length=tokens / n,
                  tail=1 - tokens / (n * gen_length), seconds=time.time() - began, n=n, outputs=outputs)
    return result


def sampler_table(model, limit: int | None = None, batch_size: int = 100, table: str = "default",
                  log=print, tasks_: tuple[str, ...] | None = None, **common) -> dict[str, list[dict]]:
    """Per task, one row per sampler of ``table``; ``common`` options (e.g. ``cache="dual"``) go to every row."""
    gen_length, _ = canvas_of(model)
    result = {}
    for task in tasks_ or task_names(model):
        rows, references = [], None
        for label, options in samplers_for(table, gen_length):
            scored = score_task(model, task, limit, batch_size, references=references, **common, **options)
            if references is None:
                references = scored["outputs"]  # the first row is static one token per step
            rows.append({"task": task, "sampler": label, **{k: v for k, v in scored.items() if k != "outputs"}})
            log(format_row(rows[-1], rows[0]))
        result[task] = rows
    return result


def format_row(row: dict, reference: dict) -> str:
    metrics = [k for k in ("exact", "parseable", "fields") if k in row]
    cells = []
    for key in metrics:
        value, base = 100 * row[key], 100 * reference[key]
        delta = "" if row is reference else f" ({value - base:+.1f})"
        cells.append(f"{key} {value:.1f}{delta}")
    return (f"| {row['task']} | {row['sampler']} | {', '.join(cells)} | {row['nfe']:.1f} | {row['tpf']:.2f} | "
            f"{row['length']:.1f} | {100 * row['tail']:.0f} % |")


HEADER = ("| task | sampler | accuracy (%, change vs 1 token/step) | NFE / sample | TPF | answer tokens | EOS tail |\n"
          "|---|---|---|---:|---:|---:|---:|")


FIRST_DECODES = tasks.DATA_DIR / "cot_first_decodes.jsonl"


def first_decodes(model, per_task: int = 3) -> list[dict]:
    """One-token-per-step decodes of each task's first test problems (the documented answers a test holds the
    shipped ``tiny-cot`` to: a changed model, loader or engine shows up as a changed line)."""
    import dllm

    gen_length, block_length = canvas_of(model)
    examples = [e for task in task_names(model) for e in tasks.load_test_set(task)[:per_task]]
    out = dllm.generate(model, [e.prompt for e in examples], sampler="static", steps=gen_length,
                        gen_length=gen_length, block_length=block_length)
    return [{"task": e.task, "prompt": e.prompt, "target": e.target, "decode": text,
             "exact": tasks.score(e.task, e.target, text)["exact"]} for e, text in zip(examples, out.texts)]


def main(argv: list[str] | None = None) -> None:
    import torch

    import dllm

    parser = argparse.ArgumentParser(prog="python -m dllm.tiny.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="checkpoint directory, 'tiny' (default) or 'tiny-cot'")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each test set")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", default="default", choices=("default", "eoser"))
    parser.add_argument("--cache", default=None, help="cache for every row (default: none)")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the model's tasks")
    parser.add_argument("--json", default=None, help="also write the table as JSON to this file")
    parser.add_argument("--write-first-decodes", action="store_true",
                        help=f"only rewrite {FIRST_DECODES.name} (the documented first decodes) and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = dllm.load(args.model, device="cpu")
    if args.write_first_decodes:
        rows = first_decodes(model)
        FIRST_DECODES.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {FIRST_DECODES} ({sum(r['exact'] for r in rows):.0f} of {len(rows)} exact)")
        return
    print(f"{model}\n\n{HEADER}")
    began = time.time()
    common = {"cache": args.cache} if args.cache else {}
    subset = tuple(t.strip() for t in args.tasks.split(",")) if args.tasks else None
    rows = sampler_table(model, args.limit, args.batch_size, args.table, tasks_=subset, **common)
    print(f"\n{HEADER}\n" + "\n".join(format_row(r, task_rows[0]) for task_rows in rows.values() for r in task_rows))
    print(f"\n({time.time() - began:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
