"""MoE expert dispatch: the former per-expert Python loop against the grouped dispatch, in one run.

    python benchmarks/moe_dispatch.py [--reps 15] [--threads N] [--goldens DIR] [--quick]

Starts from the goldens MoE checkpoints' config.json (``llada_moe``: softmax router; ``llada2``: grouped sigmoid
router with expert bias and a shared expert), parsed by the families' own config readers, and scales them up
(hidden size, experts, top-k, groups, tokens). Each network gets random weights and runs full forwards under
``torch.inference_mode()`` with three MoE dispatches, interleaved rep by rep:

* ``loop``: the dispatch before the change (``idx.unique().tolist()`` and a Python loop over the experts that
  received tokens; one host read per MoE layer) — kept here, verbatim, as the baseline;
* ``grouped``: :func:`dllm.models.network.routed_experts` (token-slot pairs sorted by expert, grouped matmul);
* ``dense``: the same function's fallback for torch builds without ``torch._grouped_mm`` (every expert on every
  token, E/k times the FLOPs).

Prints min / median ms per forward (the min is the steadier figure on a shared machine), the ratio of the mins
loop / grouped (> 1: grouped is faster) and the largest logit difference of each new dispatch against the loop.
The full table takes about 15 seconds on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dllm.models import network as network_module
from dllm.models.families import family_by_name
from dllm.models.network import MoEMLP, Network

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = ROOT / "tests" / "data" / "goldens"

# (label, family, config.json overrides, batch, tokens per row). Row 1 of each family is the goldens config as
# it is; the others scale it towards the released models (LLaDA-MoE: 64 experts top-8; LLaDA2-mini: 256
# experts top-8 in 8 groups, 4 kept) at a hidden size a CPU can run.
SETTINGS = [
    ("goldens", "llada_moe", {}, 2, 32),
    ("h256 E8 k2", "llada_moe", {"hidden_size": 256, "expert_intermediate_size": 128,
                                 "dense_intermediate_size": 512, "num_attention_heads": 8, "num_key_value_heads": 8},
     4, 256),
    ("h256 E64 k8", "llada_moe", {"hidden_size": 256, "expert_intermediate_size": 128,
                                  "dense_intermediate_size": 512, "num_attention_heads": 8,
                                  "num_key_value_heads": 8, "num_experts": 64, "num_experts_per_tok": 8}, 1, 256),
    ("h256 E64 k8", "llada_moe", {"hidden_size": 256, "expert_intermediate_size": 128,
                                  "dense_intermediate_size": 512, "num_attention_heads": 8,
                                  "num_key_value_heads": 8, "num_experts": 64, "num_experts_per_tok": 8}, 1, 32),
    ("goldens", "llada2", {}, 2, 32),
    ("h256 E8 k2", "llada2", {"hidden_size": 256, "moe_intermediate_size": 128, "intermediate_size": 512,
                              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32}, 4, 256),
    ("h256 E64 k8 g8/4", "llada2", {"hidden_size": 256, "moe_intermediate_size": 128, "intermediate_size": 512,
                                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
                                    "num_experts": 64, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4},
     1, 256),
    ("h256 E64 k8 g8/4", "llada2", {"hidden_size": 256, "moe_intermediate_size": 128, "intermediate_size": 512,
                                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
                                    "num_experts": 64, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4},
     1, 32),
]


def loop_forward(self: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """``MoEMLP.forward`` as it was before the grouped dispatch (the baseline)."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    _, idx, weights = self.route(flat)
    out = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
    for expert in idx.unique().tolist():
        token, slot = (idx == expert).nonzero(as_tuple=True)
        h = flat[token]
        y = F.linear(F.silu(F.linear(h, self.gate[expert])) * F.linear(h, self.up[expert]), self.down[expert])
        out.index_add_(0, token, y.float() * weights[token, slot, None])
    out = out.to(x.dtype)
    if self.shared is not None:
        out = out + self.shared(flat)
    return out.view(shape)


def forced_forward(grouped: bool):
    def forward(self: MoEMLP, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        _, idx, weights = self.route(flat)
        out = network_module.routed_experts(flat, idx, weights, self.gate, self.up, self.down, grouped=grouped)
        out = out.to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)

    return forward


DISPATCHES = {"loop": loop_forward, "grouped": forced_forward(True), "dense": forced_forward(False)}


def random_network(family: str, overrides: dict, goldens: Path, seed: int = 0) -> Network:
    config = {**json.loads((goldens / family / "config.json").read_text()), **overrides}
    net = Network(family_by_name(family).network_config(config))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("router_bias"):
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 1 / p.shape[-1] ** 0.5)
    return net.eval().requires_grad_(False)


def run(net: Network, ids: torch.Tensor, positions: torch.Tensor, dispatch: str) -> torch.Tensor:
    original = MoEMLP.forward
    MoEMLP.forward = DISPATCHES[dispatch]
    try:
        with torch.inference_mode():
            return net(ids, positions)
    finally:
        MoEMLP.forward = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--goldens", type=Path, default=GOLDENS, help="folder with llada_moe/ and llada2/ configs")
    parser.add_argument("--quick", action="store_true", help="only the goldens-size rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grouped_native = network_module.grouped_mm_available(torch.device("cpu"), torch.float32)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, torch._grouped_mm on CPU fp32: "
          f"{grouped_native}; {args.reps} timed reps after 1 warm-up; ms per full forward, min / median")
    print(f"{'family':9s} {'setting':16s} {'tokens':>6s} {'loop':>15s} {'grouped':>15s} {'dense':>15s} "
          f"{'loop/grouped':>12s} {'max|diff| grouped':>17s} {'dense':>8s}")
    for label, family, overrides, batch, length in SETTINGS:
        if args.quick and label != "goldens":
            continue
        net = random_network(family, overrides, args.goldens)
        vocab = net.cfg.vocab_size
        ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
        positions = torch.arange(length).expand(batch, length)
        names = list(DISPATCHES) if grouped_native else ["loop", "dense"]
        logits = {name: run(net, ids, positions, name) for name in names}  # warm-up and parity
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.reps):
            for name in names:
                start = time.perf_counter()
                run(net, ids, positions, name)
                times[name].append(time.perf_counter() - start)
        best = {name: min(t) * 1e3 for name, t in times.items()}
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        cell = {name: f"{best[name]:.2f} / {med[name]:.2f}" for name in names}
        diff = {name: (logits[name] - logits["loop"]).abs().max().item() for name in names}
        nan = float("nan")
        ratio = best["loop"] / best["grouped"] if "grouped" in best else nan
        print(f"{family:9s} {label:16s} {batch * length:6d} {cell['loop']:>15s} {cell.get('grouped', '-'):>15s} "
              f"{cell['dense']:>15s} {ratio:12.2f} {diff.get('grouped', nan):17.2e} {diff['dense']:8.2e}", flush=True)


if __name__ == "__main__":
    main()
