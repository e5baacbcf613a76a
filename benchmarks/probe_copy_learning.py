"""How fast does the ``tiny-cot`` recipe learn to copy? Plain spans against keyed spans (a training probe).

The second tiny-cot run never learnt to copy values from the prompt. This probe trains the ``cot`` preset's
network left-to-right on one copy task only and prints the token accuracy every 50 steps, for

* ``plain``: ``Copy: 12 45 7`` -> ``12 45 7`` (needs an induction circuit: find the token just written, emit the
  one after it), and
* ``keyed``: ``Copy: a=12 b=45 c=7`` -> the same text (each value is retrieved by its key, the kind of lookup
  ``tiny`` learnt for JSON and sorting).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/probe_copy_learning.py plain|keyed [--steps 400]
[--min-len 5 --max-len 24]``. Results are in ``dllm/tiny/README.md`` and ``benchmarks/README.md`` (about 12
minutes per 400 steps on one core).
"""

from __future__ import annotations

import argparse
import random

import torch

from dllm.tiny import cot_tasks, train
from dllm.tiny.tasks import Example

from common import training_probe

KEYS = "abcdefghijklmnopqrstuvwxyz"


def copy_task(keyed: bool, min_len: int, max_len: int):
    def generate(rng: random.Random, **_) -> Example:
        items = [str(rng.randint(0, 90)) for _ in range(rng.randint(min_len, max_len))]
        text = " ".join(f"{k}={v}" for k, v in zip(KEYS, items)) if keyed else " ".join(items)
        return Example("cot_copy", f"Copy: {text}\n", text, {"answer": text})

    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("plain", "keyed"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-len", type=int, default=5, help="shortest span (items)")
    parser.add_argument("--max-len", type=int, default=24, help="longest span (items); the preset's range is 5-32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cot_tasks.GENERATORS["cot_copy"] = copy_task(args.mode == "keyed", args.min_len, args.max_len)  # this process only
    recipe, tokenizer, ids, net, optimizer = training_probe(
        {"tasks": "cot_copy", "steps": args.steps, "warm_start": args.steps, "warmup": 50, "curriculum": 0,
         "curriculum_tasks": ""}, ("cot_copy",))
    window = []
    for step in range(recipe.steps):
        window.append(train.train_step(net, optimizer, recipe, step, tokenizer, ids)["acc"])
        if (step + 1) % 50 == 0:
            print(f"{args.mode} step {step + 1}: token accuracy {sum(window) / len(window):.3f}", flush=True)
            window = []


if __name__ == "__main__":
    main()
