"""How fast does the ``tiny-cot`` network learn chain arithmetic's facts? (a training probe)

Run 4 of the tiny-cot recipe copied operands right but got most results wrong (``8+6=13``). This probe trains
the ``cot`` preset's network left to right on ``cot_arith`` alone (32 chains per step, the recipe's four-task
tokenizer) and prints, every 100 steps, the token accuracy and the accuracy of the result tokens only (the
token between ``=`` and the line break: the arithmetic facts) on 64 fixed training chains, teacher-forced.
Results are in ``benchmarks/README.md`` and ``dllm/tiny/README.md``.

    OMP_NUM_THREADS=2 python benchmarks/probe_fact_learning.py [--steps 1500] [--threads 2]
"""

from __future__ import annotations

import argparse
import random

import torch

from dllm.tiny import cot_tasks, tasks, train

from common import training_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe, tok, ids, net, optimizer = training_probe(
        {"tasks": "cot_arith", "steps": args.steps, "warm_start": args.steps, "warmup": 100, "curriculum": 0,
         "curriculum_tasks": ""}, cot_tasks.COT_TASKS)
    rng = random.Random(7)
    held = [tasks.sample("cot_arith", rng, "train") for _ in range(64)]
    length = 1 + max(len(tok.encode(e.target).ids) for e in held)
    batch = train.collate(held, tok, ids, length)
    equals, newline = tok.encode("=").ids[0], tok.encode("\n").ids[0]
    targets = batch.ids[batch.response].view(len(held), length)
    is_result = torch.zeros_like(targets, dtype=torch.bool)
    is_result[:, 1:-1] = (targets[:, :-2] == equals) & (targets[:, 2:] == newline)
    seen = {}

    def capture(*inputs):  # the two-stream forward's logits, read back after the loss
        seen["logits"] = net(*inputs)
        return seen["logits"]

    for step in range(recipe.steps):
        train.train_step(net, optimizer, recipe, step, tok, ids)
        if (step + 1) % 100 == 0:
            net.eval()
            with torch.no_grad():
                _, metrics = train.left_to_right_loss(capture, batch, ids["mask"])
                predicted = seen["logits"][:, batch.ids.shape[1]:].argmax(-1)
                facts = float((predicted[is_result] == targets[is_result]).float().mean())
            net.train()
            print(f"step {step + 1}: token accuracy {metrics['acc']:.3f}, result tokens {facts:.3f}", flush=True)


if __name__ == "__main__":
    main()
