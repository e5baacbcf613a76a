"""From logits to proposals: the token each masked position would take and how confident the model is."""

from __future__ import annotations

import torch

CONFIDENCES = ("prob", "margin", "entropy")


def propose_and_score(logits: torch.Tensor, kind: str, temperature: float = 0.0, generators=None,
                      exclude: int | None = None, draw: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals [B, W] and their fp32 confidences [B, W] under the untempered distribution.

    ``exclude`` (the mask id) is never proposed: committing MASK would leave the position undecided. Its logit
    is set to -inf *in place* after the confidence's normaliser was taken, so confidences still count its
    probability mass (as the references do) and no [B, W, V] copy is made. ``prob`` needs only
    ``exp(z[x0] - logsumexp(z))``, not a full softmax.

    ``temperature`` > 0 samples with the Gumbel-max trick, argmax(z + T·g), in fp32; ``generators`` holds one
    :class:`torch.Generator` per row, and a row draws noise only where ``draw[b]`` (it has candidates this
    step), so its random stream advances exactly as it would if the row decoded alone.
    """
    if kind not in CONFIDENCES:
        raise ValueError(f"unknown confidence '{kind}'; use one of {', '.join(CONFIDENCES)}")
    z = logits if logits.dtype == torch.float32 else logits.float()
    if kind == "prob":
        normaliser = torch.logsumexp(z, dim=-1)
    else:
        probs = z.softmax(-1)
        if kind == "margin":
            top = probs.topk(2, dim=-1).values
            conf = top[..., 0] - top[..., 1]
        else:
            conf = (probs * torch.log(probs + 1e-10)).sum(-1)
        del probs
    if exclude is not None:
        z[..., exclude] = float("-inf")
    scores = z if temperature <= 0 else z + temperature * _gumbel(z, generators, draw)
    x0 = scores.argmax(-1)
    if kind == "prob":
        conf = torch.exp(z.gather(-1, x0[..., None]).squeeze(-1) - normaliser)
    return x0, conf


def propose_greedy(logits: torch.Tensor, kind: str, exclude: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`propose_and_score` gives at temperature 0 — the same values, bit for bit — without touching
    ``logits`` (a sampler scoring hypotheses whose logits it may hand over to the next step)."""
    z = logits if logits.dtype == torch.float32 else logits.float()
    x0 = greedy(z, exclude)
    if kind == "prob":
        return x0, torch.exp(z.gather(-1, x0[..., None]).squeeze(-1) - torch.logsumexp(z, dim=-1))
    probs = z.softmax(-1)
    if kind == "margin":
        top = probs.topk(2, dim=-1).values
        return x0, top[..., 0] - top[..., 1]
    if kind == "entropy":
        return x0, (probs * torch.log(probs + 1e-10)).sum(-1)
    raise ValueError(f"unknown confidence '{kind}'; use one of {', '.join(CONFIDENCES)}")


def _gumbel(z: torch.Tensor, generators, draw) -> torch.Tensor:
    noise = torch.zeros_like(z)
    tiny = torch.finfo(torch.float32).tiny
    for b, generator in enumerate(generators or ()):
        if draw is not None and not draw[b]:
            continue
        u = torch.rand(z.shape[1:], generator=generator, device=z.device, dtype=torch.float32).clamp_(min=tiny)
        noise[b] = -torch.log(-torch.log(u))
    return noise


def greedy(logits: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
    """Argmax tokens (lowest id on ties), never ``exclude``; does not modify ``logits``."""
    if exclude is None:
        return logits.argmax(-1)
    best = logits.argmax(-1)
    if bool((best == exclude).any()):
        masked = logits.clone()
        masked[..., exclude] = float("-inf")
        best = masked.argmax(-1)
    return best


def guided(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch [conditional; prompt-masked]: u + (scale + 1)(c - u)."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (scale + 1.0) * (cond - uncond)
