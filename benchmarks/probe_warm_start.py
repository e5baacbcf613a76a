"""What has a tiny-cot run learnt left to right so far? (a probe on a run's ``train_state.pt``, mid-run or not)

Teacher-forces each task's first test problems through the two-stream left-to-right layout of the warm start
and prints, per task, the token accuracy and the share of problems whose every answer token (and the first
EOS) is the argmax: exactly the problems greedy left-to-right decoding gets right. For ``cot_filter`` the
teacher forcing follows one of the valid orders, so its number is a lower bound. It reads the state without
touching the run, so it can watch a run in the background (give it one thread).

    OMP_NUM_THREADS=1 python benchmarks/probe_warm_start.py RUN_DIR/train_state.pt [--limit 48]
"""

from __future__ import annotations

import argparse

import torch

from dllm.tiny import tasks, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", help="a run's train_state.pt")
    parser.add_argument("--limit", type=int, default=48, help="first N test problems per task")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state, recipe, tok, ids, _, net = train.load_state(args.state)
    net.eval()
    seen = {}

    def capture(*inputs):  # the two-stream forward's logits, read back after the loss
        seen["logits"] = net(*inputs)
        return seen["logits"]

    print(f"step {state['step']} of {recipe.steps} (warm start {recipe.warm_start})")
    for task in recipe.task_list:
        held = tasks.load_test_set(task)[:args.limit]
        answer_lengths = torch.tensor([len(tok.encode(e.target).ids) for e in held])
        length = 1 + int(answer_lengths.max())  # answer + first EOS
        batch = train.collate(held, tok, ids, length)
        with torch.no_grad():
            _, metrics = train.left_to_right_loss(capture, batch, ids["mask"])
        targets = batch.ids[batch.response].view(len(held), length)
        answer = torch.arange(length)[None, :] <= answer_lengths[:, None]
        right = (seen["logits"][:, batch.ids.shape[1]:].argmax(-1) == targets) | ~answer
        print(f"{task}: token accuracy {metrics['acc']:.3f}, greedy left-to-right exact "
              f"{float(right.all(1).float().mean()):.3f} ({len(held)} problems)", flush=True)


if __name__ == "__main__":
    main()
