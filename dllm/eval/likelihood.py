"""Log-likelihood for masked diffusion LMs: the Monte-Carlo ELBO of LLaDA (spec §1.9) and its greedy check.

A dLLM has no left-to-right factorisation to read log p(target | prefix) from, so lm-eval's loglikelihood
requests are answered with the masked-diffusion ELBO: mask a stratified random share of the target, score
the masked tokens with cross-entropy and reweight by (target length / masked count). Every function here
takes a :class:`dllm.Model` and token ids, so it is testable without lm-eval.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


def request_generator(seed: int, prefix: list[int], target: list[int]) -> torch.Generator:
    """A CPU generator seeded by ``seed``, the prefix and the target's *length*: the estimate of a request is
    the same alone, in any batch, on any rank, in any order; and the choices of a multiple-choice question
    (same prefix) that have the same length are scored under the same masks (common random numbers), so
    their comparison is not drowned in masking noise."""
    digest = hashlib.sha256(f"{seed}|{prefix}|{len(target)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))


def aligned_logits(model, ids: torch.Tensor, prompt_length: int | None = None, cfg_scale: float = 0.0) -> torch.Tensor:
    """Logits whose row i scores token i (fp32): the family's logit shift undone, optional unsupervised CFG
    (the unconditional copy has the first ``prompt_length`` positions replaced by MASK, spec §1.4)."""
    if cfg_scale > 0:
        uncond = ids.clone()
        uncond[:, :prompt_length] = model.mask_id
        both = model.logits(torch.cat([ids, uncond])).float()
        cond, free = both.chunk(2)
        logits = free + (cfg_scale + 1) * (cond - free)
    else:
        logits = model.logits(ids).float()
    if model.logit_shift:  # Dream / Fast-dLLM v2: the output at i-1 predicts token i
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits


def mask_counts(length: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """Stratified masked counts in [1, length], one per row: evenly spaced (step length/rows) from a random
    start, wrapped; every row masks at least one token (spec §1.9)."""
    start = int(torch.randint(1, length + 1, (1,), generator=generator))
    counts = torch.linspace(start, start + (rows - 1) * length / rows, rows).round().long()
    return (counts - 1) % length + 1


def mc_loglikelihood(model, prefix: list[int], target: list[int], *, mc_num: int = 128, batch_size: int = 32,
                     cfg_scale: float = 0.0, seed: int = 0) -> tuple[float, int]:
    """Monte-Carlo ELBO estimate of log p(target | prefix) and the number of forwards it took.

    ``mc_num`` masked copies of prefix + target in mini-batches of ``batch_size`` rows (``mc_num`` must be a
    multiple of it); the prefix is never masked; each masked token's cross-entropy is weighted by
    ``len(target) / masked count`` of its row; the estimate is minus the mean per-row loss.
    """
    if not target:
        return 0.0, 0
    if not prefix:
        raise ValueError("loglikelihood needs a non-empty prefix (lm-eval supplies BOS/EOS for an empty context)")
    batch_size = min(batch_size, mc_num)
    if mc_num % batch_size:
        raise ValueError(f"mc_num={mc_num} is not a multiple of the MC batch size {batch_size}")
    generator = request_generator(seed, prefix, target)
    p, t = len(prefix), len(target)
    sequence = torch.tensor(prefix + target, device=model.device).repeat(batch_size, 1)
    answer = sequence[:, p:]
    losses = []
    for _ in range(mc_num // batch_size):
        counts = mask_counts(t, batch_size, generator)
        order = torch.rand(batch_size, t, generator=generator).argsort(dim=1)
        masked = (order < counts[:, None]).to(model.device)  # a uniform random subset of size counts[r]
        noisy = sequence.clone()
        noisy[:, p:][masked] = model.mask_id
        logits = aligned_logits(model, noisy, p, cfg_scale)[:, p:]
        loss = F.cross_entropy(logits[masked], answer[masked], reduction="none")
        weight = (t / counts.to(model.device).float())[:, None].expand(-1, t)[masked]
        losses.append((loss * weight).sum() / batch_size)
    return -float(torch.stack(losses).mean()), mc_num // batch_size


def greedy_matches(model, prefix: list[int], target: list[int], cfg_scale: float = 0.0) -> tuple[bool, int]:
    """Whether greedy decoding of the fully masked target (one most-confident token per forward, LLaDA's
    ``suffix_greedy_prediction``) reproduces it, and the forwards used (it stops at the first wrong commit:
    commits are final, so the answer is known then)."""
    p, t = len(prefix), len(target)
    ids = torch.tensor([prefix + [model.mask_id] * t], device=model.device)
    expected = torch.tensor(target, device=model.device)
    for step in range(t):
        logits = aligned_logits(model, ids, p, cfg_scale)[0, p:]
        probs = logits.softmax(-1)
        confidence, proposal = probs.max(-1)
        still = ids[0, p:] == model.mask_id
        confidence = torch.where(still, confidence, torch.full_like(confidence, -1.0))
        position = int(confidence.argmax())  # ties: the lowest position
        ids[0, p + position] = proposal[position]
        if proposal[position] != expected[position]:
            return False, step + 1
    return True, t


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows covering ``tokens`` once each, every window at most
    ``max_length`` tokens (lm-eval's rolling scheme: each window gets as much preceding context as fits)."""
    from lm_eval import utils

    windows = utils.get_rolling_token_windows(token_list=tokens, prefix_token=prefix_token,
                                              max_seq_len=max_length, context_len=1)
    return [tuple(map(list, utils.make_disjoint_window(w))) for w in windows]
