"""Scaffolds (S^3, structure priors): fixed text laid into the output region, the model fills only the slots.

A **template** is text with mask slots: ``<mask:N>`` is N masked cells, ``<mask>`` one cell; everything else
is fixed text, tokenized piece by piece (adjacent fixed text as one piece) and written into the canvas
before decoding — multi-region infilling: fixed text between masked regions anywhere in the output. The
output ends where the template ends (the cells after it are EOS), so a template that wants an open end
finishes with a slot. Example: ``'{"name": <mask:6>, "age": <mask:3>}'``.

A slot must be filled completely (a cell cannot be "empty"): JSON-like grammars let the model pad a value
with whitespace; inside fixed quotes (``"<mask:8>"``) the string content is exactly the slot. EOS is only
allowed in the last slot when nothing but EOS follows it (``TemplateGuard``; the grammar oracle enforces
the same rule).

A **schema scaffold** (:func:`schema_pieces`) is the template of a JSON Schema's skeleton: objects with
``properties`` are written out (every declared property, in declared order, compact separators
``{"a":<slot> "b":<slot>`` so keys tokenize as in ordinary JSON text), ``const`` values are fixed text,
every other value (strings with their quotes, numbers, booleans, arrays, enums, free objects) is one slot.
A value slot also holds the ``,`` or ``}`` right after the value: byte-level BPE merges a closing quote
with it (``",`` ``"}``), so the model writes the value in the tokens it knows (a one-token string takes
3 cells: `` "``, ``box``, ``",``). A slot longer than its value is padded by the model with whitespace.
Slot lengths (tokens): ``slot_length=`` an int for every slot, or a dict by property name or JSON type
name; ``"schema"``: from the schema (strings: ``maxLength``; integers: the digits of their bounds), else
:data:`DEFAULT_SLOTS`.

**Open slots** (``slot_length="model"``, the default of ``dllm.generate(schema=...)``): a value is as long as the
model writes it. Only the first fixed piece is laid before decoding; every later piece is written by the
``scaffold`` filter (``dllm/filters/scaffold.py``) right after the slot before it is complete, i.e. once the
slot's text is a whole JSON value followed by the structure the slot holds (its :attr:`OpenSlot.closer`, e.g.
``,`` or ``},``). Why: the model cannot know a fixed slot's length, and tiny-cot, like most models, never pads a
value with whitespace, so a slot of the wrong length is filled with a wrong value (an integer slot of 2 cells cut
190 to 19; array slots filled up with string text): 43-45 % exact against 87 % free on tiny-cot at threshold 0.9.
A model's first forward over the masked canvas, read as a draft, gave the right lengths for only 213 of 319 slots
(23 of 60 rows) - the draft degrades after its first block - so a length estimate made before decoding was not
good enough to fix the layout.
"""

from __future__ import annotations

import json
import math
import re

import torch

__all__ = ["parse_template", "template_cells", "schema_pieces", "DEFAULT_SLOTS", "TemplateGuard", "OpenSlot",
           "slot_complete"]

SLOT = re.compile(r"<mask(?::(\d+))?>")

#: slot length in tokens per JSON type when neither ``slot_length`` nor the schema says
DEFAULT_SLOTS = {"string": 5, "integer": 3, "number": 4, "boolean": 2, "null": 2, "array": 12, "object": 12}


class OpenSlot:
    """A value slot whose length the model decides (``slot_length="model"``). ``closer``: the JSON structure the
    slot holds after its value (``,`` before the next property, ``}`` / ``},`` / ``}}`` where objects close)."""

    def __init__(self, closer: str = ""):
        self.closer = closer

    def __eq__(self, other) -> bool:
        return isinstance(other, OpenSlot) and other.closer == self.closer

    def __repr__(self) -> str:
        return f"OpenSlot({self.closer!r})"


def slot_complete(text: bytes, closer: str) -> bool:
    """Is ``text`` (an open slot's bytes so far) a whole JSON value followed by ``closer`` (whitespace allowed
    around its characters)? A closer inside a string does not count: ``"a,`` is not complete, ``"a",`` is."""
    if not closer:
        return False
    end = len(text)
    for ch in reversed(closer.encode()):
        end = len(text[:end].rstrip())
        if end == 0 or text[end - 1] != ch:
            return False
        end -= 1
    value = text[:end].strip()
    if not value:
        return False
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def parse_template(text: str) -> list[str | int]:
    """Template text -> pieces: fixed strings and slot lengths (ints), adjacent fixed text merged."""
    if not isinstance(text, str) or not text:
        raise ValueError("template must be non-empty text with <mask:N> slots")
    pieces: list[str | int] = []
    pos = 0
    for m in SLOT.finditer(text):
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        n = int(m.group(1)) if m.group(1) is not None else 1
        if n < 1:
            raise ValueError(f"template slot {m.group(0)!r} at character {m.start()}: a slot needs at least 1 cell")
        pieces.append(n)
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return _merge(pieces)


def _merge(pieces: list) -> list:
    out: list = []
    for p in pieces:
        if out and isinstance(p, str) and isinstance(out[-1], str):
            out[-1] += p
        elif p != "":
            out.append(p)
    return out


def template_cells(pieces: list[str | int], tokenizer, mask_id: int) -> list[int]:
    """Token ids of a template: fixed pieces tokenized (no special tokens), ``mask_id`` in the slots."""
    cells: list[int] = []
    for p in pieces:
        if isinstance(p, OpenSlot):
            raise ValueError("an open slot (slot_length='model') has no length: lay only the first piece, the "
                             "scaffold filter writes the rest")
        if isinstance(p, int):
            cells.extend([mask_id] * p)
        else:
            cells.extend(tokenizer.encode(p, add_special_tokens=False))
    return cells


# ---------------------------------------------------------------------------------------------------
def schema_pieces(schema, slot_length: int | dict | str | None = "schema") -> list:
    """The template pieces of a JSON Schema's skeleton (see the module docstring): fixed strings and slots
    (ints, or :class:`OpenSlot` with ``slot_length="model"``)."""
    if slot_length is None:
        slot_length = "schema"
    named = isinstance(slot_length, str) and slot_length in ("model", "schema")
    if isinstance(slot_length, bool) or not (named or isinstance(slot_length, (int, dict))):
        raise ValueError(f"slot_length must be 'model', 'schema', an int or a dict by property / type name "
                         f"(got {slot_length!r})")
    if isinstance(slot_length, int) and slot_length < 1:
        raise ValueError(f"slot_length must be >= 1 (got {slot_length})")
    root = schema if isinstance(schema, dict) else {}
    return _merge(_skeleton(schema, root, slot_length, None, 0))


def _resolve(s, root):
    seen = 0
    while isinstance(s, dict) and "$ref" in s and seen < 32:
        parts = s["$ref"].split("/")
        if len(parts) != 3 or parts[0] != "#":
            raise ValueError(f"JSON Schema: unsupported $ref {s['$ref']!r} (only #/definitions/... and #/$defs/...)")
        s = (root.get(parts[1]) or {}).get(parts[2], {})
        seen += 1
    return s


def _skeleton(s, root, slot_length, name: str | None, depth: int) -> list:
    s = _resolve(s, root)
    if isinstance(s, dict) and "const" in s:
        return [json.dumps(s["const"], ensure_ascii=False, separators=(",", ":"))]
    if isinstance(s, dict) and s.get("properties") and s.get("type", "object") == "object" and depth < 16:
        # open slots follow ordinary ``json.dumps`` text (``"a": {"b":``), what the model read in training
        out: list = [" {" if depth and slot_length == "model" else "{"]
        for i, (key, sub) in enumerate(s["properties"].items()):
            if i:  # after a slot, the slot holds the comma itself
                out.append(_absorb(out, ",") + " ")
            out.append(json.dumps(key, ensure_ascii=False) + ":")
            out.extend(_skeleton(sub, root, slot_length, key, depth + 1))
        out.append(_absorb(out, "}"))
        return _merge(out)
    if slot_length == "model":
        return [OpenSlot()]
    return [_slot(s, slot_length, name)]


def _absorb(out: list, text: str) -> str:
    """Structure text after ``out``: a slot at its end holds it (an open slot records it as its closer)."""
    last = out[-1]
    if isinstance(last, OpenSlot):
        last.closer += text
        return ""
    return "" if isinstance(last, int) else text


def _slot(s, slot_length, name: str | None) -> int:
    kind = _kind(s)
    if isinstance(slot_length, int):
        return slot_length
    if isinstance(slot_length, dict):
        for key in (name, kind):
            if key is not None and key in slot_length:
                value = slot_length[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"slot_length[{key!r}] must be an int >= 1 (got {value!r})")
                return value
    if isinstance(s, dict):
        if "enum" in s and s["enum"]:  # about one token per 3 characters, plus the leading space
            return 1 + max(math.ceil(len(json.dumps(v)) / 3) for v in s["enum"])
        if kind == "string" and isinstance(s.get("maxLength"), int):
            return 3 + math.ceil(s["maxLength"] / 3)  # space + quotes, about 3 characters per token
        if kind == "integer":
            bounds = [s[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
                      if isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)]
            if bounds and len(bounds) >= 2:
                return 1 + max(len(str(int(abs(b)))) + (b < 0) for b in bounds)
    return DEFAULT_SLOTS.get(kind, DEFAULT_SLOTS["object"])


def _kind(s) -> str:
    if not isinstance(s, dict):
        return "object"
    t = s.get("type")
    if isinstance(t, list):
        t = t[0] if len(t) == 1 else None
    if isinstance(t, str):
        return t
    if "enum" in s:
        return "string" if all(isinstance(v, str) for v in s["enum"]) else "object"
    return "object"


# ---------------------------------------------------------------------------------------------------
class TemplateGuard:
    """Logit processor: no EOS at a column before the last fixed template token of its row (an EOS there
    would cut the template off). ``last_fixed[row]``: that canvas column per caller row (-1: none)."""

    def __init__(self, last_fixed: torch.Tensor, eos_ids):
        self.last_fixed = last_fixed.cpu()
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long)

    def __call__(self, logits: torch.Tensor, context) -> torch.Tensor:
        if self.eos.numel() == 0:
            return logits
        start, end = context.span
        limit = self.last_fixed[context.rows.cpu()].to(logits.device)
        cols = torch.arange(start, end, device=logits.device)
        forbid = (cols[None, :] < limit[:, None])[..., None]
        eos = self.eos.to(logits.device)
        logits[:, :, eos] = logits[:, :, eos].masked_fill(forbid, float("-inf"))
        return logits
