"""FreeDave vs static one-token-per-step decoding: NFE and wall-time ratios, batch 1 and 8, D = 2, 4, 8.

    python benchmarks/bench_freedave.py [--model tiny] [--cache dual] [--threads 1] [--reps 3] [--device cpu|cuda]

Prompts: the embedded model's test tasks (sort, arith, json; round robin). Both decoders use the model's
recommended canvas (tiny: gen 32, block 16), the same cache and greedy decoding; FreeDave's output is checked
equal to static's on every run (it is lossless). NFE ratio = FreeDave NFE / static NFE; time ratio = FreeDave
seconds / static seconds (medians of alternating runs). On a CPU the D hypotheses of a verification forward
cost ~D times a plain forward's compute, so wall time gains much less than NFE; on a GPU a D-wide forward of a
small batch costs about one forward, which is where the NFE saving turns into time. Runs on CUDA when present
(``--device`` overrides).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import dllm
from dllm.samplers.freedave import acceptance

from common import paired_medians

TASKS = ("sort", "arith", "json")


def task_prompts(count: int) -> list[str]:
    data = Path(dllm.__file__).parent / "tiny" / "data"
    pools = [[json.loads(line)["prompt"] for line in (data / f"{t}_test.jsonl").read_text().splitlines() if line]
             for t in TASKS]
    return [pools[i % len(pools)][i // len(pools)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--cache", default="dual")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--drafts", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per setting (batch 1: decoded one by one)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = dllm.load(args.model, device=args.device)
    texts = task_prompts(args.prompts)
    print(f"model {args.model} ({model.family}), cache {args.cache}, device {args.device}, {args.threads} thread(s), "
          f"{len(texts)} prompts, canvas {model.canvas_defaults}")
    print(f"{'batch':>5} {'D':>3} {'static NFE':>10} {'FreeDave NFE':>12} {'NFE ratio':>9} {'static s':>9} "
          f"{'FreeDave s':>10} {'time ratio':>10} {'accepted mean':>13}  histogram")
    for batch in args.batches:
        groups = [texts[i:i + batch] for i in range(0, len(texts), batch)]

        def run(sampler, **options):
            return [dllm.generate(model, g, sampler=sampler, cache=args.cache, **options) for g in groups]

        static = run("static")
        for d in args.drafts:
            fast = run("freedave", draft_steps=d)
            assert [o.canvases for o in fast] == [o.canvases for o in static], "FreeDave differs from static"
            nfe_static, nfe_fast = sum(o.stats.nfe for o in static), sum(o.stats.nfe for o in fast)
            t_static, t_fast = paired_medians(lambda: run("static"), lambda: run("freedave", draft_steps=d), args.reps)
            merged = dllm.engine.Stats(counters={"accepted": [n for o in fast for n in o.stats.counters.get("accepted", [])]})
            summary = acceptance(merged)
            print(f"{batch:>5} {d:>3} {nfe_static:>10} {nfe_fast:>12} {nfe_fast / nfe_static:>9.2f} {t_static:>9.3f} "
                  f"{t_fast:>10.3f} {t_fast / t_static:>10.2f} {summary['mean']:>13.2f}  {summary['histogram']}")


if __name__ == "__main__":
    main()
