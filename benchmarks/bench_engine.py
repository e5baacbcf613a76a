"""Engine overhead: wall time per decoding step against a bare loop of network forwards of the same shapes.

    python benchmarks/bench_engine.py [--reps 3] [--threads 2]

For batch 1 and 8, decodes with ``static`` (one token per step, no cache) and with ``threshold`` + ``dual``
cache on a random tiny model, records every forward's input slice, then replays exactly those forwards
(same ids, positions, masks, cache writes) in a bare loop. The ratio engine / bare is the loop's overhead
(proposals, selection, commits, stop checks, bookkeeping). On a real GPU model the network dominates; on a
tiny CPU model the overhead is visible, which is why this benchmark uses one.
"""

from __future__ import annotations

import argparse

import torch

import dllm
from dllm.models import KVCache
from dllm.models.model import attention_mask_for

from common import median_seconds, prompts, random_model


def replay(model, out, batch, width, cache_name):
    """A bare loop of the same forwards: slices, positions, masks and (for dual) the cache writes."""
    net = model.network
    x = torch.randint(0, model.vocab_size - 3, (batch, width))
    positions = torch.arange(width).expand(batch, width)
    feeds = [step.feed for step in out.trajectory.steps]

    def run():
        kv = KVCache.for_network(net, batch, width) if cache_name != "none" else None
        for start, length in feeds:
            end = start + length
            if kv is None:
                net(x[:, start:end], positions[:, start:end], None, logits_columns=(0, length))
            elif start == 0:
                kv.reset()
                net(x, positions, None, kv, kv.append(width), logits_columns=(0, length))
            else:
                net(x[:, start:end], positions[:, start:end], None, kv, kv.at_slots(start, length, width),
                    logits_columns=(0, length))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_model()
    print(f"random model: 4 layers, hidden 256, vocab 1000; prompt {args.prompt_length}, gen {args.gen_length}, "
          f"block 32, {args.threads} thread(s)")
    print(f"{'setting':<34}{'batch':>6}{'NFE':>6}{'engine ms/step':>16}{'bare ms/step':>14}{'overhead':>10}")
    for sampler, cache, options in (("static", "none", {}), ("threshold", "dual", {"threshold": 0.9})):
        for batch in (1, 8):
            batch_prompts = prompts(batch, args.prompt_length, model.vocab_size)
            kw = dict(sampler=sampler, cache=cache, gen_length=args.gen_length, block_length=32, eos_ids=(), **options)
            out = dllm.generate(model, batch_prompts, return_trajectory=True, **kw)
            engine = median_seconds(lambda: dllm.generate(model, batch_prompts, **kw), args.reps)
            bare = median_seconds(replay(model, out, batch, args.prompt_length + args.gen_length, cache), args.reps)
            steps = out.stats.nfe
            print(f"{sampler + ' + ' + cache:<34}{batch:>6}{steps:>6}{1e3 * engine / steps:>16.2f}"
                  f"{1e3 * bare / steps:>14.2f}{engine / bare:>10.2f}")


if __name__ == "__main__":
    main()
