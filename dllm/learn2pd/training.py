"""Fit the filter to the EGP labels (spec LF §1.3): full-batch AdamW, split by prompt, early stopping.

Deterministic: the split, the initialisation and every step are functions of the seed, and the fit runs on
one thread (a tiny network; thread count would otherwise change the reduction order and the bytes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .network import FilterNet
from .traces import Traces

ALPHAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99)


@dataclass
class FitSettings:
    hidden: int = 32
    lr: float = 3e-3
    max_iterations: int = 40_000  # the reference's count; early stopping usually ends far sooner
    eval_every: int = 50
    patience: int = 2_000  # iterations without a better validation loss
    val_fraction: float = 0.2
    seed: int = 0


@dataclass
class FitResult:
    network: FilterNet
    iterations: int
    best_iteration: int
    train_loss: float
    val_loss: float
    metrics: dict = field(default_factory=dict)  # per alpha: false-positive rate and accept rate on validation
    prompts: dict = field(default_factory=dict)  # train / val prompt counts
    records: dict = field(default_factory=dict)


def split_by_prompt(prompt: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean record masks (train, val): every record of a prompt lands on the same side."""
    ids = torch.unique(prompt)
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    n_val = max(1, round(val_fraction * len(ids))) if len(ids) > 1 else 0
    val = torch.isin(prompt, order[:n_val])
    return ~val, val


def _loss(net: FilterNet, x, y, w) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(net(x), y, reduction="none") * w).sum() / w.sum().clamp(min=1)


def alpha_metrics(net: FilterNet, traces: Traces, rows: torch.Tensor) -> dict:
    """Per alpha, over the candidate slots of ``rows``: false-positive rate (accepted with label 0 / accepted)
    and accept rate (accepted / candidates); plus the oracle's accept rate (label 1 / candidates)."""
    q = net.probability(traces.features[rows])
    slots = traces.masked[rows] & traces.valid[rows]
    labels = traces.labels[rows] > 0.5
    total = int(slots.sum())
    out = {"candidate_slots": total, "oracle_accept_rate": float((labels & slots).sum()) / max(total, 1)}
    for alpha in ALPHAS:
        accepted = slots & (q > alpha)
        n = int(accepted.sum())
        out[f"{alpha:g}"] = {"false_positive_rate": round(float((accepted & ~labels).sum()) / n, 6) if n else 0.0,
                             "accept_rate": round(n / max(total, 1), 6)}
    return out


def fit(traces: Traces, settings: FitSettings, progress: bool = True) -> FitResult:
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, val = split_by_prompt(traces.prompt, settings.val_fraction, settings.seed)
        if not bool(val.any()):
            val = train  # a single prompt: nothing to hold out, validate on the training records
        width = traces.features.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            net = FilterNet(width, settings.hidden)
        data = [(traces.features[m], traces.labels[m], traces.valid[m].float()) for m in (train, val)]
        (xt, yt, wt), (xv, yv, wv) = data
        optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr)
        best, best_state, best_iteration, iteration = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
        bar = tqdm(total=settings.max_iterations, desc="fit filter", unit="it", disable=not progress,
                   mininterval=0.5, leave=False)
        for iteration in range(1, settings.max_iterations + 1):
            optimizer.zero_grad()
            loss = _loss(net, xt, yt, wt)
            loss.backward()
            optimizer.step()
            if iteration % settings.eval_every == 0 or iteration == settings.max_iterations:
                with torch.no_grad():
                    val_loss = float(_loss(net, xv, yv, wv))
                if val_loss < best * (1 - 1e-3):  # a 0.1 % improvement resets the patience
                    best, best_state, best_iteration = val_loss, copy.deepcopy(net.state_dict()), iteration
                bar.update(settings.eval_every if iteration % settings.eval_every == 0 else iteration % settings.eval_every)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", val=f"{val_loss:.4f}", best=best_iteration,
                                refresh=False)
                if iteration - best_iteration >= settings.patience:
                    break
        bar.close()
        net.load_state_dict(best_state)
        net.eval()
        with torch.no_grad():
            train_loss, val_loss = float(_loss(net, xt, yt, wt)), float(_loss(net, xv, yv, wv))
        return FitResult(network=net, iterations=iteration, best_iteration=best_iteration,
                         train_loss=round(train_loss, 6), val_loss=round(val_loss, 6),
                         metrics=alpha_metrics(net, traces, val),
                         prompts={"train": int(torch.unique(traces.prompt[train]).numel()),
                                  "val": int(torch.unique(traces.prompt[val]).numel())},
                         records={"train": int(train.sum()), "val": int(val.sum())})
    finally:
        torch.set_num_threads(threads)
