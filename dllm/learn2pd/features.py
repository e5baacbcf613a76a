"""What the filter sees, computed by one function in training and at inference (spec LF §1.3, §1.7).

The input of a step is the vector of the model's raw confidences of its proposals at every column of the
current block — decoded columns included, as the reference does. Columns outside the row's generated region
(past a per-row end moved by EoTP, or prompt columns sharing a block with the answer in block-causal
families) are zeros, and a span narrower than the filter (the canvas's last span in block-causal families,
whose rows end at different columns) is right-padded with zeros: the reference's padding of a short block.
"""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path

import torch


def valid_columns(gen_start: torch.Tensor, end: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """[B, W] bool: the span ``columns`` that lie in each row's generated region ``[gen_start, end)``."""
    return (columns[None, :] >= gen_start[:, None]) & (columns[None, :] < end[:, None])


def block_features(raw_confidence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, W] fp32 filter input: raw confidences, zero where not ``valid`` (and where not finite)."""
    conf = torch.nan_to_num(raw_confidence.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return conf.masked_fill(~valid, 0.0)


def pad_right(values: torch.Tensor, width: int, fill=0) -> torch.Tensor:
    """[..., w] -> [..., width] (w <= width), filled with ``fill`` on the right."""
    short = width - values.shape[-1]
    if short <= 0:
        return values
    return torch.cat([values, values.new_full(values.shape[:-1] + (short,), fill)], dim=-1)


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_fingerprint(model) -> str:
    """A short hash that tells checkpoints apart: family, shape facts and a slice of the embedding table.

    The slice is rounded to bfloat16 first, so the same checkpoint gives the same fingerprint loaded in
    fp32 on a CPU or in bf16 on a GPU; another checkpoint (a fine-tune included) gives another one.
    """
    if model in _FINGERPRINTS:
        return _FINGERPRINTS[model]
    weight = model.network.embed.weight.detach()
    sample = weight.flatten()[:65536].to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
    digest = hashlib.sha256()
    digest.update(f"{model.family}|{model.vocab_size}|{tuple(weight.shape)}|{model.mask_id}".encode())
    digest.update(sample.numpy().tobytes())
    _FINGERPRINTS[model] = digest.hexdigest()[:16]
    return _FINGERPRINTS[model]


def model_name(model) -> str:
    """A readable id: the embedded model's name, a hub id from a cache snapshot path, else the directory."""
    from ..models.loader import EMBEDDED_MODELS

    path = Path(model.path).resolve()
    for name, directory in EMBEDDED_MODELS.items():
        if path == Path(directory).resolve():
            return name
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith("models--") and i + 1 < len(parts) and parts[i + 1] == "snapshots":
            return part[len("models--"):].replace("--", "/")
    return str(path)
