"""Shared test helpers: random tiny models of every family, trajectory checks."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

import dllm

from conftest import GOLDENS

FAMILY_SOURCES = {
    "llada": GOLDENS / "llada",
    "dream": GOLDENS / "dream",
    "fast_dllm_v2": GOLDENS / "fast_dllm_v2",
    "sdar": GOLDENS / "sdar",
    "llada_moe": GOLDENS / "llada_moe",
    "llada2": GOLDENS / "llada2",
}


@lru_cache(maxsize=None)
def golden_model(family: str):
    return dllm.load(FAMILY_SOURCES[family], block_size=8 if family == "llada2" else None)


def random_model(family: str, seed: int, sharpness: float = 6.0):
    """The family's goldens checkpoint (real format, tokenizer, special ids) with fresh random weights.

    ``sharpness`` scales the LM head so that confidences spread over (0, 1) and threshold samplers commit
    several tokens per step; the MASK row of the head is zeroed as real checkpoints never propose MASK.
    """
    model = dllm.load(FAMILY_SOURCES[family], block_size=8 if family == "llada2" else None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.network.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            elif param.dim() == 1:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
        head = model.network.lm_head.weight
        if head is not model.network.embed.weight:
            head.mul_(sharpness)
            head[model.mask_id] = 0
    return model


def random_prompts(model, count: int, seed: int, low: int = 3, high: int = 20) -> list[list[int]]:
    """Ragged prompts of ordinary characters (ids of the goldens' character-level tokenizers)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (count,), generator=gen).tolist()
    return [torch.randint(17, 112, (n,), generator=gen).tolist() for n in lengths]


def settled(sequence: list[int], start: int, mask_id: int, eos_ids) -> bool:
    """A row's output is settled when no MASK lies before its first EOS (or nothing is masked)."""
    generated = sequence[start:]
    first_eos = next((i for i, t in enumerate(generated) if t in eos_ids), len(generated))
    return mask_id not in generated[:first_eos]


def check_progress(model, out, eos_ids) -> None:
    """Every step, every unsettled row with MASK in the step's span commits >= 1 token, and commits land only
    on MASK positions inside the span."""
    traj = out.trajectory
    frame = traj.frame(0)
    for step in traj.steps:
        for row, commits in enumerate(step.commits):
            seq, pad = frame[row], traj.pads[row]
            span = range(step.span[0] - pad, step.span[1] - pad)
            masked_in_span = {p for p in span if 0 <= p < len(seq) and seq[p] == model.mask_id}
            if masked_in_span and not settled(seq, out.prompt_lengths[row], model.mask_id, eos_ids):
                assert commits, f"row {row} made no progress in span {step.span}"
            for position, token in commits:
                assert position in masked_in_span, f"row {row} committed position {position} outside the span's masks"
                seq[position] = token


def interrupt_on_call(real, n: int):
    """``real`` wrapped so that its ``n``-th call raises KeyboardInterrupt (Ctrl-C in the middle of a run)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


def one_line_error(exc_type, fn, *fragments):
    """``fn()`` raises ``exc_type`` with a one-line message containing every fragment."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
