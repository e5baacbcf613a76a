"""Engine overhead: wall time per decoding step against a bare loop of network forwards of the same shapes.

    python benchmarks/bench_engine.py [--reps 3] [--threads 2] [--embedded | --sit-out]

For batch 1 and 8, decodes with ``static`` (one token per step, no cache) and with ``threshold`` + ``dual``
cache on a random tiny model, records every forward's input slice, then replays exactly those forwards
(same ids, positions, masks, cache writes) in a bare loop. The ratio engine / bare is the loop's overhead
(proposals, selection, commits, stop checks, bookkeeping). On a real GPU model the network dominates; on a
tiny CPU model the overhead is visible, which is why this benchmark uses one.

``--embedded`` runs the same comparison on the embedded ``tiny`` model with its real (ragged) task prompts and
lm-eval's stop string ``"\n\n"`` checked inside the loop, so rows retire early: the replay then feeds, at
each step, exactly the rows the network saw (``TrajectoryStep.fed``, else ``.rows``) with the same attention masks.

``--sit-out`` measures one engine rule instead: a row with nothing left in the span sits out uncached forwards
(``Engine._working_rows``). Free threshold decodes of the embedded ``tiny-cot`` on 60 ``cot_json`` prompts,
batch 16, at thresholds 0.9 / 0.5 / 0, with the rule and without it (every row enters every forward, as before
it), side by side, and the texts compared.
"""

from __future__ import annotations

import argparse

import torch

import dllm
from dllm.models import KVCache
from dllm.models.model import attention_mask_for

from common import paired_medians, prompts, random_model


def replay(model, out, batch, width, cache_name, canvas=None):
    """A bare loop of the same forwards: slices, positions, masks, the rows still active and the cache writes.

    ``canvas``: the request's canvas (ids, positions, key padding) when prompts are ragged; default a random
    unpadded one. Masks are built once per batch composition, as the engine does.
    """
    net = model.network
    if canvas is None:
        x = torch.randint(0, model.vocab_size - 3, (batch, width))
        positions, keep = torch.arange(width).expand(batch, width), None
    else:
        x, positions, keep = canvas.x, canvas.positions, canvas.keep if canvas.has_padding else None
    steps = [(step.feed, step.fed or step.rows or list(range(batch))) for step in out.trajectory.steps]

    def run():
        kv = KVCache.for_network(net, batch, width) if cache_name != "none" else None
        active, masks = list(range(batch)), {}
        for (start, length), rows in steps:
            if rows != active:  # rows retired: compact the cache like the engine does
                index = torch.tensor([active.index(r) for r in rows])
                if kv is not None:
                    kv.select_rows(index)
                active, masks = rows, {}
            end = start + length
            ids, pos = x[active], positions[active]
            k0, k1 = (0, width) if kv is not None else (start, end)
            key = (start, end, k0, k1)
            if key not in masks:
                masks[key] = attention_mask_for(model, pos[:, start:end], pos[:, k0:k1],
                                                None if keep is None else keep[active][:, k0:k1])
            if kv is None:
                net(ids[:, start:end], pos[:, start:end], masks[key], logits_columns=(0, length))
            elif start == 0:
                net(ids, pos, masks[key], kv, kv.rewrite(width), logits_columns=(0, length))
            else:
                net(ids[:, start:end], pos[:, start:end], masks[key], kv, kv.at_slots(start, length, width),
                    logits_columns=(0, length))
    return run


def embedded(reps: int) -> None:
    """The embedded model on its arithmetic prompts, batch 8, with lm-eval's stop string."""
    from dllm.engine.canvas import build_canvas
    from dllm.tiny import tasks

    model = dllm.load("tiny")
    gen, block = 32, 16
    print(f"embedded tiny model, dllm_arith prompts, gen {gen}, block {block}, stop '\\n\\n'")
    print(f"{'setting':<34}{'batch':>6}{'NFE':>6}{'engine ms/step':>16}{'bare ms/step':>14}{'overhead':>10}")
    for sampler, cache, options in (("static", "none", {}), ("static", "dual", {}), ("threshold", "dual", {"threshold": 0.9})):
        for batch in (1, 8):
            texts = [e.prompt for e in tasks.load_test_set("arith")[:batch]]
            kw = dict(sampler=sampler, cache=cache, gen_length=gen, block_length=block, stop=["\n\n"], **options)
            out = dllm.generate(model, texts, return_trajectory=True, **kw)
            ids = [model.encode(t) for t in texts]
            canvas = build_canvas(ids, gen, block, mask_id=model.mask_id, pad_id=model.pad_id, block_size=None,
                                  device="cpu")
            engine, bare = paired_medians(lambda: dllm.generate(model, texts, **kw),
                                          replay(model, out, batch, canvas.width, cache, canvas), reps)
            steps = out.stats.nfe
            print(f"{sampler + ' + ' + cache:<34}{batch:>6}{steps:>6}{1e3 * engine / steps:>16.2f}"
                  f"{1e3 * bare / steps:>14.2f}{engine / bare:>10.2f}")


def sit_out(reps: int) -> None:
    """Idle rows sitting out uncached forwards against every row entering every forward (see the docstring)."""
    from dllm.engine.loop import Engine
    from dllm.tiny import tasks

    model = dllm.load("tiny-cot")
    texts = [e.prompt for e in tasks.load_test_set("cot_json")[:60]]
    rule = Engine._working_rows

    def everyone(self, feed):
        return None

    def decode(threshold: float, working) -> list[str]:
        Engine._working_rows = working
        try:
            return [t for first in range(0, len(texts), 16) for t in
                    dllm.generate(model, texts[first:first + 16], sampler="threshold", threshold=threshold).texts]
        finally:
            Engine._working_rows = rule

    print(f"tiny-cot, 60 cot_json prompts, batch 16, no cache, free threshold decoding; seconds, median of {reps}")
    print(f"{'threshold':>10}{'every row':>12}{'sit out':>10}{'ratio':>8}  same texts")
    for threshold in (0.9, 0.5, 0.0):
        before, after = paired_medians(lambda: decode(threshold, everyone), lambda: decode(threshold, rule), reps)
        same = decode(threshold, everyone) == decode(threshold, rule)
        print(f"{threshold:>10}{before:>12.2f}{after:>10.2f}{after / before:>8.2f}  {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--embedded", action="store_true", help="the embedded model with stop strings instead")
    parser.add_argument("--sit-out", action="store_true", help="idle rows sitting out forwards, with and without")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.sit_out:
        sit_out(args.reps)
        return
    if args.embedded:
        embedded(args.reps)
        return
    model = random_model()
    print(f"random model: 4 layers, hidden 256, vocab 1000; prompt {args.prompt_length}, gen {args.gen_length}, "
          f"block 32, {args.threads} thread(s)")
    print(f"{'setting':<34}{'batch':>6}{'NFE':>6}{'engine ms/step':>16}{'bare ms/step':>14}{'overhead':>10}")
    for sampler, cache, options in (("static", "none", {}), ("threshold", "dual", {"threshold": 0.9})):
        for batch in (1, 8):
            batch_prompts = prompts(batch, args.prompt_length, model.vocab_size)
            kw = dict(sampler=sampler, cache=cache, gen_length=args.gen_length, block_length=32, eos_ids=(), **options)
            out = dllm.generate(model, batch_prompts, return_trajectory=True, **kw)
            engine, bare = paired_medians(lambda: dllm.generate(model, batch_prompts, **kw),
                                          replay(model, out, batch, args.prompt_length + args.gen_length, cache), args.reps)
            steps = out.stats.nfe
            print(f"{sampler + ' + ' + cache:<34}{batch:>6}{steps:>6}{1e3 * engine / steps:>16.2f}"
                  f"{1e3 * bare / steps:>14.2f}{engine / bare:>10.2f}")


if __name__ == "__main__":
    main()
