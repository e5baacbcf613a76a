"""Native forward vs stock transformers on CPU (same random weights, bidirectional Qwen2 = Dream layout).

    python benchmarks/bench_forward.py [--reps 10] [--warmup 3] [--threads N] [--attn sdpa|eager]

Builds a random tiny-but-not-trivial Dream-style config, loads the same randomised weights into the native
network (through the Dream family's config parser and weight-name rules) and into stock
``Qwen2ForCausalLM`` with ``config.is_causal = False``, checks that both give the same logits, then times
full-sequence forwards under ``torch.inference_mode()`` for batch 1 and 8 (native and stock interleaved rep by
rep) and prints median / min times and the ratio of the medians native / stock (< 1: native is faster).
Runs in well under a minute on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from dllm.models.families import family_by_name, map_weight_name
from dllm.models.network import Network

from common import timed_pair

DIMS = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 4, "inter": 768, "vocab": 1000, "seq": 256}


def dream_config(d: dict) -> dict:
    return {
        "model_type": "Dream", "architectures": ["DreamModel"], "hidden_act": "silu",
        "hidden_size": d["hidden"], "intermediate_size": d["inter"], "num_hidden_layers": d["layers"],
        "num_attention_heads": d["heads"], "num_key_value_heads": d["kv_heads"], "vocab_size": d["vocab"],
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
        "use_sliding_window": False, "max_position_embeddings": 4096, "mask_token_id": d["vocab"] - 1,
    }


def build(d: dict, attn: str, seed: int = 0):
    cfg = Qwen2Config(
        vocab_size=d["vocab"], hidden_size=d["hidden"], intermediate_size=d["inter"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"], rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=4096, tie_word_embeddings=False,
    )
    cfg.is_causal = False
    stock = Qwen2ForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in stock.state_dict().items():
        noise = torch.randn(tensor.shape, generator=gen)
        if name.endswith("norm.weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            state[name] = 0.1 * noise
        elif "embed_tokens" in name:
            state[name] = 0.5 * noise
        else:
            state[name] = noise / tensor.shape[-1] ** 0.5
    stock.load_state_dict(state, strict=True)

    family = family_by_name("dream")
    native = Network(family.network_config(dream_config(d))).eval()
    mapped = {}
    for name, tensor in state.items():
        target = map_weight_name(family, name)
        assert target is not None and target[1] is None, name
        mapped[target[0]] = tensor
    native.load_state_dict(mapped, strict=True)
    native.requires_grad_(False)
    stock.requires_grad_(False)
    return native, stock



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="stock attention implementation")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    d = DIMS
    native, stock = build(d, args.attn)
    params = sum(p.numel() for p in native.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, stock attn '{args.attn}'; "
          f"config: {d['layers']} layers, hidden {d['hidden']}, heads {d['heads']}/{d['kv_heads']} kv, "
          f"inter {d['inter']}, vocab {d['vocab']}, seq {d['seq']}, {params / 1e6:.2f}M params; "
          f"{args.warmup} warm-up + {args.reps} timed reps")
    print(f"{'batch':>5} {'native ms (med/min)':>20} {'stock ms (med/min)':>20} {'native/stock':>13} {'max|diff|':>10}")
    gen = torch.Generator().manual_seed(1)
    for batch in (int(b) for b in args.batches.split(",")):
        ids = torch.randint(0, d["vocab"], (batch, d["seq"]), generator=gen)
        positions = torch.arange(d["seq"]).expand(batch, d["seq"])
        with torch.inference_mode():
            diff = (native(ids, positions) - stock(ids, use_cache=False).logits).abs().max().item()
            t_native, t_stock = timed_pair(lambda: native(ids, positions), lambda: stock(ids, use_cache=False).logits,
                                           args.warmup, args.reps)
        med_n, med_s = statistics.median(t_native) * 1e3, statistics.median(t_stock) * 1e3
        print(f"{batch:>5} {med_n:>11.2f} / {min(t_native) * 1e3:<7.2f} {med_s:>11.2f} / {min(t_stock) * 1e3:<7.2f} "
              f"{med_n / med_s:>13.3f} {diff:>10.2e}")


if __name__ == "__main__":
    main()
