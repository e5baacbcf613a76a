"""``dllm.load``: a checkpoint directory (or hub id) -> :class:`dllm.Model`, without running checkpoint code.

Reads config.json, single or sharded safetensors, the tokenizer files and the chat template; detects the
family from config keys; maps tensor names onto the native network; reads special-token ids from config,
generation_config, tokenizer roles, and (only as a last resort) the family's known token strings. Python files
shipped in a checkpoint directory (``auto_map`` / ``modeling_*.py``) are never imported.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch

from .families import Family, UnsupportedConfigError, checkpoint_name, detect_family, map_weight_name
from .model import Model
from .network import Network

EMBEDDED_MODELS = {"tiny": Path(__file__).resolve().parent.parent / "tiny" / "checkpoint",
                   "tiny-cot": Path(__file__).resolve().parent.parent / "tiny" / "checkpoint_cot"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says what is wrong and what to do."""


def load(path_or_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
         device: torch.device | str | None = None, block_size: int | None = None) -> Model:
    """Load a dLLM checkpoint (local directory, hub id from the local cache, or ``"tiny"``).

    ``dtype`` defaults to float32 on CPU and bfloat16 on GPU; ``device`` to CUDA when available.
    ``block_size`` overrides the attention block size of block-causal families (needed for LLaDA2, whose
    config does not store it; default 32 as its reference sampler).
    """
    directory = resolve_checkpoint(path_or_id)
    config = _read_json(directory / "config.json")
    family = detect_family(config)
    try:
        net_cfg = family.network_config(config)
    except KeyError as exc:
        raise CheckpointError(f"{directory / 'config.json'} has no key '{exc.args[0]}', which a {family.name} "
                              f"checkpoint needs: fix or re-download config.json") from None
    except (TypeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{directory / 'config.json'} has an invalid value for the {family.name} family "
                              f"({_one_line(exc)}): fix or re-download config.json") from None
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _parse_dtype(dtype, device)

    with torch.device("meta"):
        network = Network(net_cfg)
    state = _read_weights(directory, family, network, dtype, device)
    if net_cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    network.load_state_dict(state, strict=True, assign=True)
    if net_cfg.tie_embeddings:
        network.lm_head.weight = network.embed.weight
    network.eval().requires_grad_(False)

    tokenizer = load_tokenizer(directory)
    generation_config = _read_json(directory / "generation_config.json") if (directory / "generation_config.json").exists() else {}
    ids = special_token_ids(family, config, generation_config, tokenizer)
    if family.attention == "block_causal":
        block_size = block_size or config.get(family.block_size_key or "", None) or family.default_block_size
    else:
        block_size = None
    return Model(
        network=network, tokenizer=tokenizer, family=family.name, config=config, path=directory,
        logit_shift=family.logit_shift, attention=family.attention, block_size=block_size, **ids,
    )


# --------------------------------------------------------------------------------------------------
def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """Local directory, embedded model name, or a hub id found in (or fetched into) the HF cache."""
    text = str(path_or_id)
    if text in EMBEDDED_MODELS:
        directory = EMBEDDED_MODELS[text]
        if not (directory / "config.json").exists():
            raise CheckpointError(f"the embedded model '{text}' is missing from this install ({directory}): reinstall dllm")
        return directory
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file: pass the checkpoint directory that holds config.json")
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: pass a Hugging Face checkpoint directory")
        return path
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise CheckpointError(f"checkpoint path '{text}' does not exist: pass an existing directory, a hub id, or 'tiny'")
    return _from_hub(text)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]  # never *.py
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(
            f"'{repo_id}' is neither a local directory nor in the local Hugging Face cache, and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded: pass a local checkpoint directory instead (dllm.load('/path/to/checkpoint'), the folder "
            f"holding config.json and *.safetensors) or download it first (hf download {repo_id})"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # no network, unknown repo, gated repo ...
        raise CheckpointError(
            f"'{repo_id}' is neither a local directory nor in the local Hugging Face cache, and could not be downloaded "
            f"({type(exc).__name__}): pass a local checkpoint directory instead (dllm.load('/path/to/checkpoint'), "
            f"the folder holding config.json and *.safetensors)"
        ) from None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (errors raised by dllm.load are single lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): fix or re-download it") from None


def _parse_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "auto": None}
    if dtype not in names:
        raise ValueError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    return names[dtype] or _parse_dtype(None, device)


SINGLE_WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files, by the Hugging Face naming convention and nothing else.

    The shards listed in ``model.safetensors.index.json``; else ``model.safetensors``; else a complete set of
    ``model-XXXXX-of-YYYYY.safetensors`` shards (an index lost in a copy). Other ``*.safetensors`` files in the
    directory (adapters, test data, optimizer states) are not weights of this checkpoint and are never read.
    """
    index = directory / WEIGHTS_INDEX
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map': re-download the checkpoint")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).exists()]
        if missing:
            raise CheckpointError(f"shard {missing[0]} listed in {index.name} is missing from {directory}")
        return [directory / f for f in files]
    single = directory / SINGLE_WEIGHTS
    if single.exists():
        return [single]
    shards = {p.name: SHARD_NAME.fullmatch(p.name) for p in directory.glob("model-*-of-*.safetensors")}
    shards = {name: match for name, match in shards.items() if match}
    if shards:
        totals = {int(m.group(2)) for m in shards.values()}
        numbers = {int(m.group(1)) for m in shards.values()}
        total = max(totals)
        absent = [i for i in range(1, total + 1) if i not in numbers]
        if len(totals) > 1 or absent:
            raise CheckpointError(f"{directory} has an incomplete set of weight shards (no {WEIGHTS_INDEX}; "
                                  f"found {', '.join(sorted(shards))}): re-download the checkpoint")
        return sorted(directory / name for name in shards)
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise CheckpointError(f"{directory} holds only pickle weights (.bin/.pt): convert them to safetensors first")
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    found = f" (found {', '.join(others)}, which are not named as checkpoint weights)" if others else ""
    raise CheckpointError(f"{directory} has no {SINGLE_WEIGHTS}, {WEIGHTS_INDEX} or model-XXXXX-of-YYYYY.safetensors "
                          f"shards{found}")


def _read_weights(directory: Path, family: Family, network: Network, dtype, device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    expected = dict(network.state_dict())  # meta tensors: names and shapes
    tied = network.cfg.tie_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    state: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    unknown: list[str] = []
    for file in weight_files(directory):
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {file}: the file is truncated or corrupt ({_one_line(exc)}); "
                                  f"re-download it") from None
        with handle:
            for name in handle.keys():
                mapped = map_weight_name(family, name)
                if mapped is None or (mapped[0] == "lm_head.weight" and tied):
                    if mapped is None:
                        unknown.append(name)
                    continue
                native, expert = mapped
                if native not in expected:
                    unknown.append(name)
                    continue
                try:
                    tensor = handle.get_tensor(name)
                except (SafetensorError, OSError, RuntimeError) as exc:
                    raise CheckpointError(f"cannot read tensor '{name}' from {file}: the file is truncated or "
                                  f"corrupt ({_one_line(exc)}); re-download it") from None
                tensor = tensor.to(dtype=dtype if tensor.is_floating_point() else tensor.dtype)
                if expert is None:
                    state[native] = tensor.to(device)
                else:
                    experts.setdefault(native, {})[expert] = tensor
    for native, parts in experts.items():
        count = expected[native].shape[0]
        absent = [e for e in range(count) if e not in parts]
        if absent:
            name = checkpoint_name(family, native, absent[0]) or f"expert {absent[0]} of '{native}'"
            raise CheckpointError(f"checkpoint in {directory} is missing tensor '{name}' "
                                  f"(expected {count} experts per MoE layer)")
        state[native] = torch.stack([parts[e] for e in range(count)]).to(device)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        warnings.warn(f"ignoring {len(unknown)} checkpoint tensor(s) the native {family.name} network does not use: {shown}",
                      stacklevel=3)
    missing = [k for k in expected if k not in state]
    if missing:
        names = [checkpoint_name(family, k) or k for k in missing]
        more = f" (+{len(missing) - 1} more: {', '.join(names[1:4])}{', ...' if len(missing) > 4 else ''})" if len(missing) > 1 else ""
        hint = " (or set the tie flag in config.json if the LM head shares the embedding)" if missing[0] == "lm_head.weight" else ""
        raise CheckpointError(f"checkpoint in {directory} is missing tensor '{names[0]}'{more} required by the "
                              f"{family.name} config{hint}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            name = checkpoint_name(family, key) or key
            raise CheckpointError(f"tensor '{name}' has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{tuple(expected[key].shape)}")
    return state


def load_tokenizer(directory: Path):
    """A transformers fast tokenizer from tokenizer.json (or Qwen2 vocab.json + merges.txt); never remote code."""
    from transformers import PreTrainedTokenizerFast

    if (directory / "tokenizer.json").exists():
        reader, files = PreTrainedTokenizerFast, "tokenizer.json"
    elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        from transformers import Qwen2TokenizerFast

        reader, files = Qwen2TokenizerFast, "vocab.json + merges.txt"
    else:
        raise CheckpointError(f"{directory} has no tokenizer.json (or vocab.json + merges.txt): add the tokenizer files")
    try:
        tokenizer = reader.from_pretrained(str(directory))
    except Exception as exc:  # corrupt or truncated files surface as parser errors of several kinds
        raise CheckpointError(f"cannot read the tokenizer ({files}) in {directory}: {_one_line(exc)}; "
                              f"fix or re-download the tokenizer files") from None
    template = directory / "chat_template.jinja"
    if getattr(tokenizer, "chat_template", None) is None and template.exists():
        tokenizer.chat_template = template.read_text()
    return tokenizer


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _token_id(tokenizer, token: str) -> int | None:
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def special_token_ids(family: Family, config: dict, generation_config: dict, tokenizer) -> dict:
    """mask / EOS (with end-of-turn) / pad / bos ids: config first, then tokenizer roles, then token strings."""
    mask_id = config.get("mask_token_id")
    if mask_id is None:
        mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        for token in family.mask_tokens:
            mask_id = _token_id(tokenizer, token)
            if mask_id is not None:
                break
    if mask_id is None:
        raise CheckpointError("cannot find the mask token id: set 'mask_token_id' in config.json")

    eos: list[int] = []
    for candidate in (_as_list(config.get("eos_token_id")), _as_list(generation_config.get("eos_token_id")),
                      _as_list(getattr(tokenizer, "eos_token_id", None))):
        eos += [i for i in candidate if i not in eos]
    eot_id = None
    for token in family.end_of_turn_tokens:
        eot_id = _token_id(tokenizer, token)
        if eot_id is not None:
            break
    if eot_id is not None and eot_id not in eos:
        eos.append(eot_id)
    if not eos:
        raise CheckpointError("cannot find an EOS token id: set 'eos_token_id' in config.json")
    eos = [i for i in eos if i != mask_id]

    pad_id = config.get("pad_token_id")
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = eos[0]
    if pad_id == mask_id:
        raise UnsupportedConfigError("config.json key 'pad_token_id' equals the mask token id: padding needs another id")
    bos_id = config.get("bos_token_id")
    if bos_id is None:
        bos_id = getattr(tokenizer, "bos_token_id", None)
    return {"mask_id": int(mask_id), "eos_ids": tuple(eos), "pad_id": int(pad_id),
            "bos_id": None if bos_id is None else int(bos_id)}
