"""Per-step wall time of a decode, for comparing two versions of the engine side by side.

    PYTHONPATH=<tree> python benchmarks/bench_step_time.py    # prints one JSON line of ms/step per setting

Run it alternately against two checkouts (e.g. before and after an engine change) and compare medians; the
settings are the embedded ``tiny`` model on its arithmetic prompts (gen 32, block 16) with lm-eval's stop string,
and a random 4-layer model (prompt 64, gen 64, block 32) — the same inputs in every version.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

import dllm


def per_step_ms(model, prompts, reps: int = 5, **kw) -> float:
    dllm.generate(model, prompts, **kw)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = dllm.generate(model, prompts, **kw)
        times.append((time.perf_counter() - start) / out.stats.nfe)
    return 1e3 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from common import prompts, random_model

    from dllm.tiny import tasks

    tiny = dllm.load("tiny")
    arith = [e.prompt for e in tasks.load_test_set("arith")[:8]]
    rand = random_model()
    rand_prompts = prompts(8, 64, rand.vocab_size)
    result = {}
    for batch in (1, 8):
        result[f"tiny threshold+dual b{batch}"] = per_step_ms(tiny, arith[:batch], sampler="threshold", threshold=0.9,
                                                             cache="dual", gen_length=32, block_length=16, stop=["\n\n"])
        result[f"tiny static+none b{batch}"] = per_step_ms(tiny, arith[:batch], sampler="static", cache="none",
                                                          gen_length=32, block_length=16, stop=["\n\n"])
        result[f"random threshold+dual b{batch}"] = per_step_ms(rand, rand_prompts[:batch], sampler="threshold",
                                                               threshold=0.9, cache="dual", gen_length=64,
                                                               block_length=32, eos_ids=())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
