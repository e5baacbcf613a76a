"""Token id -> bytes, once per tokenizer.

Why not ``tokenizer.decode([id])``: decoding single tokens drops or adds spaces (SentencePiece ``▁``,
``add_prefix_space``) and turns byte-level tokens that split a UTF-8 character into U+FFFD. The grammar
works on bytes, so each vocabulary entry is mapped to the exact bytes it contributes to the output.

Kinds, detected from the tokenizer's own JSON description (``tokenizers.Tokenizer.to_str()``):

* **byte-level BPE** (GPT-2, Qwen, Llama-3, the embedded ``tiny`` model): a ``ByteLevel`` pre-tokenizer or
  decoder; every character of a token string stands for one byte through the GPT-2 byte<->unicode table
  (rebuilt here from its definition: printable latin-1 maps to itself, the other 68 bytes to U+0100...).
* **SentencePiece** (LLaMA-2, Mistral, Gemma style): a ``Metaspace`` piece or a decoder that replaces
  ``▁`` or uses ``ByteFallback``, or ``byte_fallback`` in the model; ``▁`` -> space, ``<0xNN>`` -> the byte
  0xNN. A leading ``▁`` that the decoder would strip at the very start of a text is kept (it is a space,
  which JSON-like grammars ignore) — choice: exactness at every position except the first is what matters.
* **raw** (anything else, e.g. the character-level goldens tokenizers with a ``Fuse`` decoder): the token
  string is its UTF-8 text.

Special tokens (``special=True`` added tokens: BOS, EOS, mask, pad, role markers, reserved ids) map to
``None``: they contribute no text and the oracle excludes them (EOS ids are handled as end-of-output by
the oracle, separately). Non-special added tokens contribute their literal UTF-8 content.
"""
from __future__ import annotations

import json
import re

import numpy as np

__all__ = ["token_bytes", "bytes_to_unicode", "TokenTable"]

_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table (written from its definition)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_DECODER = {c: b for b, c in bytes_to_unicode().items()}


def _backend(tokenizer):
    """A ``tokenizers.Tokenizer`` from a ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer``."""
    bt = getattr(tokenizer, "backend_tokenizer", None)
    if bt is not None:
        return bt
    if hasattr(tokenizer, "to_str") and hasattr(tokenizer, "id_to_token"):
        return tokenizer
    raise TypeError(f"unsupported tokenizer {type(tokenizer).__name__}: need a tokenizers.Tokenizer or a fast "
                    f"transformers tokenizer")


def _walk_types(obj) -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        t = obj.get("type")
        if isinstance(t, str):
            out.add(t)
        if t == "Replace":
            pat = obj.get("pattern", {})
            if "▁" in str(pat.get("String", "")) or "▁" in str(obj.get("content", "")):
                out.add("ReplaceMetaspace")
        for v in obj.values():
            out |= _walk_types(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _walk_types(v)
    return out


def detect_kind(spec: dict) -> str:
    kinds = _walk_types({k: spec.get(k) for k in ("pre_tokenizer", "decoder", "normalizer")})
    if "ByteLevel" in kinds:
        return "byte_level"
    if {"Metaspace", "ByteFallback", "ReplaceMetaspace"} & kinds or (spec.get("model") or {}).get("byte_fallback"):
        return "sentencepiece"
    return "raw"


def token_bytes(tokenizer) -> list[bytes | None]:
    """Bytes per token id (``None`` for special tokens), indexed by id over the full vocabulary."""
    bt = _backend(tokenizer)
    spec = json.loads(bt.to_str())
    kind = detect_kind(spec)
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    n = bt.get_vocab_size(with_added_tokens=True)
    n = max([n] + [i + 1 for i in added])
    out: list[bytes | None] = []
    for i in range(n):
        a = added.get(i)
        if a is not None:
            out.append(None if a.get("special") else a["content"].encode("utf-8"))
            continue
        s = bt.id_to_token(i)
        if s is None:
            out.append(None)
        elif kind == "byte_level":
            try:
                out.append(bytes(_BYTE_DECODER[c] for c in s))
            except KeyError:  # not a byte-level string (should not happen); keep its text
                out.append(s.encode("utf-8"))
        elif kind == "sentencepiece":
            m = _HEX_BYTE.match(s)
            out.append(bytes([int(m.group(1), 16)]) if m else s.replace("▁", " ").encode("utf-8"))
        else:
            out.append(s.encode("utf-8"))
    return out


class TokenTable:
    """Token bytes in the flat layout the kernels read: ``data[off[i]:off[i+1]]`` are token ``i``'s bytes.

    ``excluded[i]`` is True for tokens that can never be committed under a grammar (special tokens and
    empty strings), except the EOS ids which the oracle treats as end of output.
    """

    def __init__(self, tokenizer=None, table: list[bytes | None] | None = None):
        if table is None:
            table = token_bytes(tokenizer)
        self.table = table
        lens = np.array([len(b) if b else 0 for b in table], dtype=np.int64)
        self.off = np.zeros(len(table) + 1, dtype=np.int64)
        np.cumsum(lens, out=self.off[1:])
        self.data = np.frombuffer(b"".join(b or b"" for b in table), dtype=np.uint8).copy()
        if self.data.size == 0:
            self.data = np.zeros(1, dtype=np.uint8)
        self.excluded = np.array([not b for b in table], dtype=bool)

    def __len__(self) -> int:
        return len(self.table)
