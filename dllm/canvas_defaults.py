"""The canvas a checkpoint decodes by default, decided in one place for ``dllm.generate``, the CLI and the
lm-eval model.

A checkpoint may recommend its canvas and prompt format in ``generation_config.json``:

* ``gen_length`` / ``block_length`` — the canvas it was trained for (the embedded models ship theirs);
* ``prompt_suffix`` — text every raw prompt ends with (the embedded models: ``"\\n"`` — their prompts are
  ``"<Instruction>: <input>\\n"``; a shell cannot type that newline, so the CLI appends it).
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_GEN_LENGTH = 128
DEFAULT_BLOCK_LENGTH = 32
EMBEDDED_PROMPT_SUFFIX = "\n"  # dllm/tiny/README.md: prompt format


def default_gen_length(model) -> int:
    """The checkpoint's ``gen_length``, else 128."""
    return model.canvas_defaults.get("gen_length", DEFAULT_GEN_LENGTH)


def default_block_length(model, gen_length: int) -> int:
    """The one block-length rule. Block-causal families: the model's block size. Full attention: the
    checkpoint's ``block_length`` when it divides ``gen_length``, else 32 when that divides it, else the
    whole canvas as one block."""
    if model.attention == "block_causal":
        return model.block_size
    block = model.canvas_defaults.get("block_length")
    if block and gen_length % block == 0:
        return block
    return DEFAULT_BLOCK_LENGTH if gen_length % DEFAULT_BLOCK_LENGTH == 0 else gen_length


def prompt_suffix(model) -> str:
    """The text the checkpoint's raw (non-chat) prompts end with: ``prompt_suffix`` in its
    generation_config.json; the embedded models (``"<Instruction>: <input>\\n"``) end in a newline even
    where their config does not say so yet; '' for other checkpoints."""
    try:
        data = json.loads((Path(model.path) / "generation_config.json").read_text())
    except (OSError, ValueError, TypeError):
        data = {}
    suffix = data.get("prompt_suffix") if isinstance(data, dict) else None
    if isinstance(suffix, str):
        return suffix
    return EMBEDDED_PROMPT_SUFFIX if _is_embedded(model) else ""


def _is_embedded(model) -> bool:
    from .models.loader import EMBEDDED_MODELS

    try:
        path = Path(model.path).resolve()
    except (OSError, TypeError):
        return False
    return any(path == Path(p).resolve() for p in EMBEDDED_MODELS.values())


def format_prompt(model, prompt: str, chat: bool = False) -> str:
    """``prompt`` in the checkpoint's raw prompt format: its ``prompt_suffix`` appended unless the prompt
    already ends with it (chat prompts are the chat template's business and stay as given)."""
    suffix = "" if chat else prompt_suffix(model)
    return prompt if not suffix or prompt.endswith(suffix) else prompt + suffix
