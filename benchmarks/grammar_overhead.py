"""Grammar-oracle overhead: time per feasibility check on JSON canvases.

For canvas lengths 64 / 256 / 512 tokens (tokenizer of the embedded ``tiny`` model, byte-level BPE) and
fill rates 30 / 60 / 90 %, a random JSON document of about the canvas length is tokenized, a random
fraction of its cells is committed (the rest masked, EOS after the document), and ``state.allows`` is timed
for random masked positions — half with the document's own token (an accepted check, early exit), half
with a random vocabulary token (usually a rejection, the expensive exhaustive case). Median and worst
per check, for the numba kernels and the pure-Python fallback (fewer checks: it is slow). ``median``/
``worst``: the engine's per-commit check (``allows``: only the gaps next to the cell unrolled); ``full``:
the same candidate with every short gap unrolled (the grammar filter runs one per row and step); ``bytewise``: that
full check with the oracle's cell table and committed-prefix snapshots off (every byte swept). A second table
times whole-canvas checks on canvases as the filter's frontier keeps them (decoded text with short holes, then one
long masked run): plain, counted (``count_gaps``: the long run's tokens bounded, as the filter checks by default;
with the oracle's template and entry table), counted with the template alone, and counted with the run swept in
full.

    python benchmarks/grammar_overhead.py [--checks 40] [--py-checks 6] [--lengths 64 256 512] [--exact-cells 4 0]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from dllm.grammars import Oracle

TOKENIZER = Path(__file__).resolve().parents[1] / "dllm" / "tiny" / "checkpoint" / "tokenizer.json"
WORDS = ["box", "chair", "red", "Austin", "wool", "Lumen", "copper", "name", "price", "city", "size", "stock"]


def random_value(rng: random.Random, depth: int):
    r = rng.random()
    if depth > 2 or r < 0.35:
        return rng.choice([rng.randint(0, 999), rng.choice(WORDS), rng.choice([True, False, None]), round(rng.random() * 100, 2)])
    if r < 0.7:
        return {rng.choice(WORDS) + str(i): random_value(rng, depth + 1) for i in range(rng.randint(1, 4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(1, 4))]


def document(rng: random.Random, tok, n_tokens: int) -> list[int]:
    """Token ids of a JSON object whose length is at most ``n_tokens`` and close to it."""
    obj: dict = {}
    best: list[int] = tok.encode("{}").ids
    i = 0
    while True:
        obj[f"{rng.choice(WORDS)}{i}"] = random_value(rng, 0)
        ids = tok.encode(json.dumps(obj)).ids
        if len(ids) > n_tokens:
            return best
        best = ids
        i += 1


def bench(oracle: Oracle, tok, length: int, fill: float, checks: int, seed: int):
    rng = random.Random(seed)
    mask, eos = oracle.mask_id, sorted(oracle.eos_ids)[0]
    vocab = [i for i in range(len(oracle.tokens)) if not oracle.excluded[i]]
    times, full, nodes, bytewise = [], [], [], []
    oracle.use_cell_table = oracle.use_prefix = True
    while len(times) < checks:
        doc = document(rng, tok, length - 1)
        target = doc + [eos] * (length - len(doc))
        cells = [t if rng.random() < fill else mask for t in target]
        masked = [i for i, t in enumerate(cells) if t == mask]
        if not masked:
            continue
        state = oracle.start(cells)
        state.feasible()  # the standing canvas: checked once per commit set in the engine, not per check
        for _ in range(4):
            pos = rng.choice(masked)
            token = target[pos] if len(times) % 2 == 0 else rng.choice(vocab)
            t0 = time.perf_counter()
            state.allows(pos, token)
            times.append(time.perf_counter() - t0)
            state._memo.clear()
            state.rejected.discard((pos, token))
            cand = oracle.encode(cells)
            cand[pos] = oracle.code(token)
            t0 = time.perf_counter()
            oracle.status_cells(cand)
            full.append(time.perf_counter() - t0)
            # the same check sweeping every byte: no cell table, no committed-prefix snapshot (session 9's oracle)
            oracle.use_cell_table = oracle.use_prefix = False
            t0 = time.perf_counter()
            oracle.status_cells(cand)
            bytewise.append(time.perf_counter() - t0)
            oracle.use_cell_table = oracle.use_prefix = True
        nodes.append(oracle.nfa_size(cells))
    return (statistics.median(times) * 1e3, max(times) * 1e3, statistics.median(full) * 1e3, max(full) * 1e3,
            statistics.median(nodes), statistics.median(bytewise) * 1e3)


def frontier_canvas(rng: random.Random, tok, oracle: Oracle, length: int, fill: float) -> list[int]:
    """A canvas as the grammar filter's frontier keeps it: the first ``fill`` of a document decoded (holes of at most
    ``exact_cells`` masks), the rest one masked run up to the region end."""
    mask = oracle.mask_id
    doc = document(rng, tok, length - 1)
    cut = int(len(doc) * fill)
    cells, run = [], 0
    for t in doc[:cut]:
        hole = rng.random() < 0.2 and run < max(oracle.exact_cells, 1)
        run = run + 1 if hole else 0
        cells.append(mask if hole else t)
    return cells + [mask] * (length - len(cells))


def bench_counted(tok, length: int, fill: float, checks: int, seed: int, backend: str):
    """Whole-canvas checks on frontier canvases: plain (the long run is any text), counted (``count_gaps``: its
    tokens bounded; template and entry table built first), counted with the template alone (the lexemes entering
    the run swept through it) and counted with every counted run swept in full."""
    mask = tok.token_to_id("<|mdm_mask|>")
    eos = tok.token_to_id("<|endoftext|>")
    plain = Oracle("json", tok, mask_id=mask, eos_ids=[eos], backend=backend)
    counted = Oracle("json", tok, mask_id=mask, eos_ids=[eos], backend=backend, count_gaps=True).warm()
    template = Oracle("json", tok, mask_id=mask, eos_ids=[eos], backend=backend, count_gaps=True)
    template.use_entry_table = False
    swept = Oracle("json", tok, mask_id=mask, eos_ids=[eos], backend=backend, count_gaps=True)
    swept.use_template = False
    rng = random.Random(seed)
    oracles = (("plain", plain), ("counted", counted), ("template", template), ("swept", swept))
    times: dict[str, list[float]] = {name: [] for name, _ in oracles}
    for _, oracle in oracles:  # compile / build the template outside the timings
        oracle.status_cells(oracle.encode(frontier_canvas(random.Random(0), tok, oracle, 16, 0.5)))
    for _ in range(checks):
        cells = plain.encode(frontier_canvas(rng, tok, plain, length, fill))
        for name, oracle in oracles:
            t0 = time.perf_counter()
            oracle.status_cells(cells)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: (statistics.median(v), max(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=40)
    ap.add_argument("--py-checks", type=int, default=8)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--fills", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    ap.add_argument("--backends", nargs="+", default=["numba", "python"])
    ap.add_argument("--exact-cells", type=int, nargs="+", default=[4, 0],
                    help="oracle exact_cells values to time (4 = the default, 0 = length-blind gaps)")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    mask, eos = tok.token_to_id("<|mdm_mask|>"), tok.token_to_id("<|endoftext|>")
    print(f"{'backend':8} {'exact':>5} {'tokens':>6} {'fill':>5} {'nodes':>6} {'median ms':>10} {'worst ms':>9} "
          f"{'full med':>9} {'full worst':>10} {'bytewise med':>12}")
    for backend, exact in [(b, e) for b in args.backends for e in args.exact_cells]:
        oracle = Oracle("json", tok, mask_id=mask, eos_ids=[eos], backend=backend, exact_cells=exact)
        warm = oracle.start(length=8)
        warm.allows(0, tok.token_to_id("{"))  # numba: load / compile outside the timings
        n = args.checks if backend == "numba" else args.py_checks
        for length in args.lengths:
            for fill in args.fills:
                med, worst, fmed, fworst, nodes, old = bench(oracle, tok, length, fill, n,
                                                             seed=length * 100 + int(fill * 100))
                print(f"{backend:8} {exact:5d} {length:6d} {fill:5.0%} {nodes:6.0f} {med:10.2f} {worst:9.2f} "
                      f"{fmed:9.2f} {fworst:10.2f} {old:12.2f}", flush=True)
    print("\nwhole-canvas checks on frontier canvases (ms, median / worst): plain, counted, counted with the template "
          "alone, counted swept in full")
    print(f"{'backend':8} {'tokens':>6} {'fill':>5} {'plain':>13} {'counted':>13} {'template':>13} {'swept':>13}")
    for backend in args.backends:
        n = args.checks if backend == "numba" else args.py_checks
        for length in args.lengths:
            for fill in args.fills:
                r = bench_counted(tok, length, fill, n, length * 100 + int(fill * 100) + 1, backend)
                print(f"{backend:8} {length:6d} {fill:5.0%} " + " ".join(f"{r[k][0]:6.2f}/{r[k][1]:6.2f}"
                                                                     for k in ("plain", "counted", "template", "swept")),
                      flush=True)


if __name__ == "__main__":
    main()
