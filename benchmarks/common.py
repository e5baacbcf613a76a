"""Shared pieces of the benchmark scripts: a random tiny-but-not-trivial dLLM and timing helpers."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from dllm.models.model import Model
from dllm.models.network import Network, NetworkConfig


def random_model(attention: str = "full", layers: int = 4, hidden: int = 256, heads: int = 8, kv_heads: int = 4,
                 vocab: int = 1000, block_size: int = 32, seed: int = 0, sharpness: float = 4.0) -> Model:
    """A randomly initialised model (LLaDA-like for full attention, SDAR-like for block-causal), no tokenizer."""
    torch.manual_seed(seed)
    cfg = NetworkConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                        head_dim=hidden // heads, intermediate_size=3 * hidden, norm_eps=1e-5, rope_theta=10000.0,
                        rotary_dim=hidden // heads, qk_norm=attention == "block_causal")
    net = Network(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 1 / p.shape[-1] ** 0.5)
        net.lm_head.weight.mul_(sharpness)
    net.eval().requires_grad_(False)
    block_causal = attention == "block_causal"
    return Model(network=net, tokenizer=None, family="sdar" if block_causal else "llada", config={}, path=Path("."),
                 mask_id=vocab - 1, eos_ids=(vocab - 2,), pad_id=vocab - 3, attention=attention,
                 block_size=block_size if block_causal else None)


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab - 3, (count, length), generator=gen).tolist()


def median_seconds(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_pair(fn_a, fn_b, warmup: int, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of two functions timed alternately (a, b, a, b, ...), so load drift on a shared machine hits both
    alike; ratios of the two are what the benchmarks report."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(reps):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times_a, times_b


def paired_medians(first, second, reps: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of :func:`timed_pair`."""
    a, b = timed_pair(first, second, warmup, reps)
    return statistics.median(a), statistics.median(b)


def training_probe(overrides: dict, tokenizer_tasks: tuple[str, ...]):
    """(recipe, tokenizer, special ids, network, optimizer) of a training probe: the ``cot`` preset's network
    with ``overrides`` (tasks, steps, warm start...) and a tokenizer trained on ``tokenizer_tasks``."""
    from dllm.tiny import train

    recipe = train.Recipe(**{**train.PRESETS["cot"], **overrides})
    tokenizer = train.train_tokenizer(task_names=tuple(tokenizer_tasks))
    ids = train.special_ids(tokenizer)
    net = train.build_network(train.llada_config(recipe, tokenizer.get_vocab_size(), ids), recipe.seed)
    return recipe, tokenizer, ids, net, train.make_optimizer(net, recipe)
