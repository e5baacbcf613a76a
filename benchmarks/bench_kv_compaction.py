"""Row retirement: what compacting the KV cache costs against what dropping the row saves.

    python benchmarks/bench_kv_compaction.py [--batch 32] [--width 256] [--threads 1]

When a row finishes, the engine drops it from the canvas and from every layer's K/V (one copy of the cache). The
alternative — keep finished rows in the batch and compact only when a fair share has finished — saves copies but
spends a 1/B share of every later forward on rows that are done. This prints both sides for a model of
``tiny-cot``'s size (6 layers, hidden 160) so the choice rests on numbers.
"""

from __future__ import annotations

import argparse

import torch

from dllm.models import KVCache

from common import paired_medians, random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_model(layers=6, hidden=160, heads=5, kv_heads=5, vocab=1000)
    net, b, t, w = model.network, args.batch, args.width, args.block
    kv = KVCache.for_network(net, b, t)
    x = torch.randint(0, 990, (b, t))
    positions = torch.arange(t).expand(b, t)
    start = t - 2 * w
    keep = torch.arange(b - 1)
    with torch.inference_mode():
        net(x, positions, None, kv, kv.rewrite(t), logits_columns=(0, w))

        def step():
            net(x[:, start:start + w], positions[:, start:start + w], None, kv, kv.at_slots(start, w, t),
                logits_columns=(0, w))

        def compact():
            return [layer[keep] for layer in kv.k], [layer[keep] for layer in kv.v]

        forward, copy = paired_medians(step, compact, args.reps)
    saved = forward / b
    print(f"batch {b}, canvas {t}, dual-cache block step of {w} columns ({args.threads} thread(s))")
    print(f"  one forward                     {forward * 1e3:8.2f} ms")
    print(f"  compacting the cache (one row)  {copy * 1e3:8.2f} ms")
    print(f"  compute one row costs per step  {saved * 1e3:8.2f} ms  -> a compaction pays for itself after "
          f"{copy / saved:.1f} steps")


if __name__ == "__main__":
    main()
