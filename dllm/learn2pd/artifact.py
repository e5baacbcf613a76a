"""The filter file: ``filter.safetensors`` (weights, with the metadata in its header) + ``filter.json``.

The safetensors header carries the whole metadata (JSON under the key ``learn2pd``), so the weights file is
self-describing and is the one the sampler reads; ``filter.json`` is the same metadata, indented, for people.
Both are written atomically (to a temporary folder beside them, then renamed), so a failure leaves ``--out``
as it was. Loading checks the file and refuses a filter for another model, block length or confidence kind
with a one-line :class:`FilterError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .features import model_fingerprint, model_name
from .network import FilterNet

WEIGHTS, METADATA = "filter.safetensors", "filter.json"
FORMAT, VERSION = "dllm-learn2pd-filter", 1
REQUIRED = ("format", "version", "model", "model_fingerprint", "block_length", "confidence")


class FilterError(ValueError):
    """A filter file that cannot be used; the message says which file, what is wrong and what to do."""


@dataclass
class FilterFile:
    path: Path
    network: FilterNet
    meta: dict

    @property
    def block_length(self) -> int:
        return int(self.meta["block_length"])

    def check(self, model, span_widths, confidence: str) -> None:
        """Refuse this filter for ``model`` decoding spans of ``span_widths`` ranked by ``confidence``."""
        meta, where = self.meta, f"learn2pd: the filter {self.path}"
        fingerprint = model_fingerprint(model)
        if meta["model_fingerprint"] != fingerprint:
            name = model_name(model)
            raise FilterError(f"{where} was trained for model '{meta['model']}' (fingerprint "
                              f"{meta['model_fingerprint']}), not for '{name}' ({fingerprint}): train one with "
                              f"dllm train-filter --model {name} --out DIR")
        widest = max(span_widths)  # only a block-causal canvas's last span may be narrower (zero-padded)
        if widest != self.block_length:
            raise FilterError(f"{where} was trained for block length {self.block_length}, this generation decodes "
                              f"blocks of {widest}: pass block_length={self.block_length} or train one with "
                              f"dllm train-filter --block-length {widest}")
        if meta["confidence"] != confidence:
            raise FilterError(f"{where} reads '{meta['confidence']}' confidences, this generation ranks by "
                              f"'{confidence}': pass confidence='{meta['confidence']}' or train one with "
                              f"dllm train-filter --confidence {confidence}")


def resolve(path) -> Path:
    """A filter path: the weights file itself, or a folder holding ``filter.safetensors``."""
    path = Path(path).expanduser()
    return path / WEIGHTS if path.is_dir() else path


_LOADED: dict[tuple, FilterFile] = {}


def load_filter(path) -> FilterFile:
    """Read and check a filter file (cached by path, size and modification time); one-line FilterError if not usable."""
    from safetensors import safe_open

    path = resolve(path)
    try:
        stat = path.stat()
    except OSError:
        raise FilterError(f"learn2pd: no filter file at {path}: train one with dllm train-filter --model M --out "
                          f"{path.parent}, or pass filter=PATH") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    bad = f"learn2pd: the filter file {path} is corrupt or not a learn2pd filter"
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise FilterError(f"{bad} ({_one_line(exc)}): retrain it with dllm train-filter") from None
    try:
        meta = json.loads(header["learn2pd"])
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("its header has no learn2pd metadata")
        absent = [k for k in REQUIRED if k not in meta]
        if absent:
            raise ValueError(f"its metadata lacks '{absent[0]}'")
        if int(meta["version"]) > VERSION:
            raise ValueError(f"it is format version {meta['version']}, this dllm reads up to {VERSION}")
        network = FilterNet.from_tensors(tensors)
        if network.block_length != int(meta["block_length"]):
            raise ValueError(f"its weights are {network.block_length} wide but its metadata says block length "
                             f"{meta['block_length']}")
    except KeyError:
        raise FilterError(f"{bad} (its header has no learn2pd metadata): retrain it with dllm train-filter") from None
    except (ValueError, TypeError) as exc:
        raise FilterError(f"{bad} ({_one_line(exc)}): retrain it with dllm train-filter") from None
    loaded = FilterFile(path, network, meta)
    _LOADED[key] = loaded
    return loaded


def filter_bytes(network: FilterNet, meta: dict) -> bytes:
    """The safetensors bytes of a filter (deterministic: sorted JSON metadata, fp32 tensors)."""
    from safetensors.torch import save

    return save(network.tensors(), metadata={"learn2pd": json.dumps(meta, sort_keys=True)})


def write_filter(out, network: FilterNet, meta: dict) -> Path:
    """Write ``filter.safetensors`` + ``filter.json`` into ``out`` atomically; return the weights path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".filter-", dir=out))
    try:
        (staging / WEIGHTS).write_bytes(filter_bytes(network, meta))
        (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for name in (WEIGHTS, METADATA):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / WEIGHTS


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__
