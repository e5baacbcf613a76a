"""Score a checkpoint on the tiny task suite with ``dllm.generate``: ``python -m dllm.tiny.score``.

Decodes every held-out problem of ``data/<task>_test.jsonl`` under several samplers and prints one table:
the reference row is static one-token-per-step decoding (``steps = gen_length``); the other rows show
what parallel decoding (confidence thresholds, fixed k tokens per step) costs on each task. TPF is
generated tokens per forward pass, the speed side of the trade-off.
"""

from __future__ import annotations

import argparse
import json
import time

from . import tasks

GEN_LENGTH, BLOCK_LENGTH = 32, 16  # the canvas the model was trained for (see train.Recipe)

# (row label, dllm.generate keyword arguments); steps are per whole canvas
SAMPLERS = (
    ("static, 1 token/step", {"sampler": "static", "steps": GEN_LENGTH}),
    ("static, 2 tokens/step", {"sampler": "static", "steps": GEN_LENGTH // 2}),
    ("static, 4 tokens/step", {"sampler": "static", "steps": GEN_LENGTH // 4}),
    ("threshold 0.9", {"sampler": "threshold", "threshold": 0.9}),
    ("threshold 0.7", {"sampler": "threshold", "threshold": 0.7}),
    ("threshold 0.5", {"sampler": "threshold", "threshold": 0.5}),
)
COLUMNS = (("arith", "exact"), ("json", "parseable"), ("json", "exact"), ("sort", "exact"))


def score_task(model, task: str, limit: int | None = None, batch_size: int = 100, **generate_options) -> dict:
    """Mean metrics of ``task`` (fractions in [0, 1]) plus ``tpf`` and ``seconds`` under one sampler."""
    import dllm

    examples = tasks.load_test_set(task)[:limit]
    totals: dict[str, float] = {}
    tokens = forwards = 0
    began = time.time()
    options = {"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, **generate_options}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        out = dllm.generate(model, [e.prompt for e in chunk], **options)
        for example, text in zip(chunk, out.texts):
            for key, value in tasks.score(task, example.target, text).items():
                totals[key] = totals.get(key, 0.0) + value
        tokens += out.stats.tokens
        forwards += sum(out.stats.row_nfe)
    result = {key: value / len(examples) for key, value in totals.items()}
    result.update(tpf=tokens / forwards if forwards else 0.0, seconds=time.time() - began, n=len(examples))
    return result


def sampler_table(model, limit: int | None = None, batch_size: int = 100, samplers=SAMPLERS, log=print) -> list[dict]:
    """One row per sampler: every task's metrics and the mean TPF."""
    rows = []
    for label, options in samplers:
        row = {"sampler": label, "options": options}
        tpfs = []
        for task in tasks.TASKS:
            result = score_task(model, task, limit, batch_size, **options)
            row[task] = result
            tpfs.append(result["tpf"])
        row["tpf"] = sum(tpfs) / len(tpfs)
        rows.append(row)
        log(format_row(row, rows[0]))
    return rows


def format_row(row: dict, reference: dict) -> str:
    cells = []
    for task, metric in COLUMNS:
        value, base = 100 * row[task][metric], 100 * reference[task][metric]
        delta = "" if row is reference else f" ({value - base:+.1f})"
        cells.append(f"{value:.1f}{delta}")
    return f"| {row['sampler']} | " + " | ".join(cells) + f" | {row['tpf']:.2f} |"


def markdown(rows: list[dict]) -> str:
    header = "| sampler | " + " | ".join(f"{t} {m}" for t, m in COLUMNS) + " | TPF |"
    rule = "|" + "---|" * (len(COLUMNS) + 2)
    return "\n".join([header, rule] + [format_row(r, rows[0]) for r in rows])


def main(argv: list[str] | None = None) -> None:
    import torch

    import dllm

    parser = argparse.ArgumentParser(prog="python -m dllm.tiny.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="checkpoint directory or 'tiny' (default)")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each test set")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = dllm.load(args.model, device="cpu")
    print(f"{model}\n")
    print("| sampler | " + " | ".join(f"{t} {m}" for t, m in COLUMNS) + " | TPF |")
    print("|" + "---|" * (len(COLUMNS) + 2))
    rows = sampler_table(model, args.limit, args.batch_size)
    print("\n" + markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
