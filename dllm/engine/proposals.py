"""From logits to proposals: the token each masked position would take and how confident the model is."""

from __future__ import annotations

import torch

CONFIDENCES = ("prob", "margin", "entropy")


def propose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
            exclude: int | None = None) -> torch.Tensor:
    """Proposed tokens [B, W]: argmax (lowest id on ties), or a sample from softmax(logits / temperature).

    ``exclude`` (the mask id) is never proposed: committing MASK would leave the position undecided and a
    step could make no progress. Confidences still use the untouched logits.

    Sampling uses the Gumbel-max trick in the safe form argmax(z - T·log(-log u)), equivalent to LLaDA's
    exp(z) / (-log u)^T without its float64 overflow risk (the random stream differs from LLaDA's).
    """
    if temperature <= 0:
        scores = logits
    else:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        u = u.clamp_(min=torch.finfo(torch.float64).tiny)
        scores = logits.double() - temperature * torch.log(-torch.log(u))
    if exclude is None:
        return scores.argmax(-1)
    saved = scores[..., exclude].clone()
    scores[..., exclude] = float("-inf")
    best = scores.argmax(-1)
    scores[..., exclude] = saved
    return best


def confidence(logits: torch.Tensor, x0: torch.Tensor, kind: str) -> torch.Tensor:
    """fp32 confidence [B, W] of the proposals under the untempered distribution.

    ``prob``: p(x0) (LLaDA / Fast-dLLM); ``margin``: p(top1) - p(top2); ``entropy``: sum p log p (negative
    entropy, higher = surer; Dream's ``entropy`` ranking).
    """
    probs = logits.float().softmax(-1)
    if kind == "prob":
        return probs.gather(-1, x0[..., None]).squeeze(-1)
    if kind == "margin":
        top = probs.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if kind == "entropy":
        return (probs * torch.log(probs + 1e-10)).sum(-1)
    raise ValueError(f"unknown confidence '{kind}'; use one of {', '.join(CONFIDENCES)}")


def guided(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch [conditional; prompt-masked]: u + (scale + 1)(c - u)."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (scale + 1.0) * (cond - uncond)
