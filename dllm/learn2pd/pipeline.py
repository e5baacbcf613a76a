"""``train_filter``: prompts -> traces -> fit -> ``filter.safetensors`` + ``filter.json`` (one call, one place).

Everything is checked before the first decode (no prompts, an ``--out`` that is a file, a block length that
does not divide the canvas), and nothing is written until the filter is trained, so a failure leaves ``out``
as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import artifact
from .features import model_fingerprint, model_name
from .training import FitSettings, fit
from .traces import collect_traces


def train_filter(model, prompts: list, out, *, gen_length: int | None = None, block_length: int | None = None,
                 confidence: str = "prob", settings: FitSettings | None = None, batch_size: int = 64,
                 chat: bool = False, cache: str = "none", source: dict | None = None, progress: bool = True,
                 log=print) -> dict:
    """Train a Learn2PD filter for ``model`` on ``prompts`` and write it into ``out``; return its metadata.

    ``source`` describes where the prompts came from (recorded in the metadata: tasks, limit, file digest).
    """
    from .. import caches
    from ..canvas_defaults import default_block_length, default_gen_length
    from ..engine.proposals import CONFIDENCES

    settings = settings or FitSettings()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: pass a directory (filter.safetensors and filter.json go inside)")
    if not prompts:
        raise ValueError("no training prompts: pass --tasks with a training split (embedded tasks) and --limit > 0, "
                         "or --prompts FILE with at least one prompt")
    fitting = caches.available(model.attention)  # e.g. no "block" cache for a full-attention model
    if cache not in fitting:
        raise ValueError(f"unknown cache '{cache}' for the trace decodes of a {model.attention}-attention model: "
                         f"use one of {', '.join(fitting)}")
    if confidence not in CONFIDENCES:
        raise ValueError(f"unknown confidence '{confidence}': use one of {', '.join(CONFIDENCES)}")
    gen_length = gen_length or default_gen_length(model)
    block_length = block_length or default_block_length(model, gen_length)
    if block_length < 1 or gen_length % block_length:
        raise ValueError(f"block length {block_length} does not divide gen_length {gen_length}: pick a divisor")
    if not 0 <= settings.val_fraction < 1:
        raise ValueError(f"val fraction must be in [0, 1) (got {settings.val_fraction})")

    began = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), desc="decode traces", unit="prompt", disable=not progress, leave=False)
    traces = collect_traces(model, prompts, gen_length=gen_length, block_length=block_length, confidence=confidence,
                            batch_size=batch_size, chat=chat, cache=cache, progress=bar.update)
    bar.close()
    decoded = time.perf_counter() - began
    result = fit(traces, settings, progress=progress)
    static_nfe, egp_nfe = sum(traces.static_nfe), sum(traces.egp_nfe)
    meta = {
        "format": artifact.FORMAT, "version": artifact.VERSION,
        "model": model_name(model), "model_fingerprint": model_fingerprint(model), "family": model.family,
        "block_length": block_length, "gen_length": gen_length, "confidence": confidence,
        "hidden": settings.hidden, "parameters": sum(p.numel() for p in result.network.parameters()),
        "training": {
            **(source or {}), "prompts": len(prompts), "seed": settings.seed, "lr": settings.lr,
            "optimizer": "AdamW, full batch", "max_iterations": settings.max_iterations,
            "eval_every": settings.eval_every, "patience": settings.patience, "val_fraction": settings.val_fraction,
            "split": "by prompt", "iterations": result.iterations, "best_iteration": result.best_iteration,
            "records": result.records, "split_prompts": result.prompts, "chat": chat,
            "traces": f"static one-token-per-step decode (cache {cache}) -> EGP oracle decode towards it",
            "torch": torch.__version__.split("+")[0],
        },
        "validation": {"loss": result.val_loss, "train_loss": result.train_loss, "alpha": result.metrics,
                       "static_nfe_per_prompt": round(static_nfe / len(prompts), 4),
                       "egp_nfe_per_prompt": round(egp_nfe / len(prompts), 4)},
    }
    path = artifact.write_filter(out, result.network, meta)
    log(f"wrote {path} and {path.parent / artifact.METADATA}: {len(traces)} records from {len(prompts)} prompts "
        f"(decoded in {decoded:.0f} s), {result.iterations} iterations (best {result.best_iteration}), "
        f"val loss {result.val_loss:.4f}, false positives at alpha 0.96: "
        f"{result.metrics['0.96']['false_positive_rate']:.4f}, accepted "
        f"{result.metrics['0.96']['accept_rate']:.3f} of candidate slots (oracle "
        f"{result.metrics['oracle_accept_rate']:.3f}); {time.perf_counter() - began:.0f} s in all")
    return meta
