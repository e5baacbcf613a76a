"""Cache speed: tokens/s of none vs prefix vs dual (and block for block-causal models), as ratios to none.

    python benchmarks/bench_caches.py [--gen 256 512] [--model tiny|random] [--threads 2]

Greedy one-token-per-step decoding (``static``, steps = gen_length) so that every cache does the same number
of forwards and only their cost differs, plus ``threshold`` 0.9 (Fast-dLLM's "parallel + cache" setting).
Block 32. ``--model random`` (default): a random 4-layer, hidden-256 model with full attention and its
block-causal twin; ``--model tiny``: the embedded model (once shipped).
"""

from __future__ import annotations

import argparse

import torch

import dllm

from common import median_seconds, prompts, random_model


def measure(model, batch_prompts, gen_length, cache, sampler, reps):
    kw = dict(sampler=sampler, cache=cache, gen_length=gen_length, block_length=32, eos_ids=())
    if sampler == "static":
        kw["steps"] = gen_length
    else:
        kw["threshold"] = 0.9
    out = dllm.generate(model, batch_prompts, **kw)
    seconds = median_seconds(lambda: dllm.generate(model, batch_prompts, **kw), reps, warmup=0)
    return out.stats.tokens / seconds, out.stats.nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gen", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--model", default="random")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samplers", nargs="+", default=["static", "threshold"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "random":
        models = {"full attention": random_model("full"), "block-causal": random_model("block_causal")}
    else:
        models = {args.model: dllm.load(args.model)}
    print(f"prompt {args.prompt_length}, batch {args.batch}, block 32, {args.threads} thread(s); tokens/s and ratio to none")
    for label, model in models.items():
        batch_prompts = prompts(args.batch, args.prompt_length, model.vocab_size)
        caches = dllm.caches.available(model.attention)
        for sampler in args.samplers:
            for gen_length in args.gen:
                results = {c: measure(model, batch_prompts, gen_length, c, sampler, args.reps) for c in caches}
                base = results["none"][0]
                cells = "  ".join(f"{c} {tps:7.1f} tok/s (NFE {nfe}, {tps / base:4.2f}x)" for c, (tps, nfe) in results.items())
                print(f"{label:<15} {sampler:<10} gen {gen_length:<4} {cells}")


if __name__ == "__main__":
    main()
