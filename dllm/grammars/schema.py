"""JSON Schema -> Lark grammar text (the common subset), so schema outputs go through the same oracle.

Design rule: **every string the grammar accepts validates against the schema** (soundness). Where the
schema allows more than the grammar generates, the grammar takes a documented subset; where the schema
uses a keyword we cannot honour soundly, a one-line ``ValueError`` names the keyword.

Supported
---------
* ``type``: ``object``, ``array``, ``string``, ``integer``, ``number``, ``boolean``, ``null``, or a list
  of them (alternatives); a schema without ``type`` (``{}`` / ``true``) means any JSON value.
* objects: ``properties`` + ``required``. Choice: properties appear **in declared order**; required ones
  always, optional ones may be left out (as in the reference's compiler, minus its repeated optional
  keys). ``additionalProperties``: ``false``/absent/``true`` — only declared properties are generated
  (sound either way); with no ``properties`` and a schema-valued ``additionalProperties`` the object is a
  map ``{STRING: value, ...}``. An object without ``properties`` is any JSON object.
* arrays: ``items`` (a schema; absent = any value), ``minItems`` / ``maxItems`` up to 16 (expanded).
* ``enum`` / ``const``: alternatives of the values' compact JSON text (``json.dumps``, no inner spaces).
* strings: ``minLength`` / ``maxLength`` up to 64 characters (counted as JSON string characters: one
  escape = one character).
* integers: ``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum`` (numbers), compiled
  to a digit-range regex — cheap (a few states per digit). Choice: integers are written without ``-0``,
  leading zeros, fractions or exponents.
* ``anyOf``: alternatives. ``$ref`` to ``#/definitions/...`` or ``#/$defs/...`` (recursion allowed).
* annotations are ignored: ``title``, ``description``, ``$schema``, ``$id``, ``$comment``, ``default``,
  ``examples``, ``deprecated``, ``readOnly``, ``writeOnly``, ``definitions``, ``$defs``.

Anything else (``pattern``, ``format``, ``oneOf``, ``allOf``, ``not``, ``minimum`` on numbers,
``multipleOf``, ``uniqueItems``, ``patternProperties``, ``if``, ...) raises ``ValueError`` naming it.
"""
from __future__ import annotations

import json

__all__ = ["schema_to_lark"]

_ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
                "readOnly", "writeOnly", "definitions", "$defs"}
_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": set(),
    "boolean": set(),
    "null": set(),
}
_GENERIC = {"type", "enum", "const", "anyOf", "$ref"}
_MAX_REPEAT = 16
_MAX_LENGTH = 64

_BASE = r"""
_value: _object | _array | STRING | NUMBER | "true" | "false" | "null"
_object: "{" [_pair ("," _pair)*] "}"
_pair: STRING ":" _value
_array: "[" [_value ("," _value)*] "]"
STRING: /"([^"\\\x00-\x1f]|\\(["\\\/bfnrt]|u[0-9a-fA-F]{4}))*"/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/
INTEGER: /-?(0|[1-9][0-9]*)/
%ignore /[ \t\n\r]+/
"""
_CHAR = r'([^"\\\x00-\x1f]|\\(["\\\/bfnrt]|u[0-9a-fA-F]{4}))'


def _lit(value) -> str:
    """A Lark string literal matching the compact JSON text of ``value``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _digits_range(lo: str, hi: str) -> str:
    """Regex for decimal strings of equal length between lo and hi (inclusive), digit by digit."""
    if not lo:
        return ""
    if lo == hi:
        return lo
    if lo[0] == hi[0]:
        return lo[0] + "(" + _digits_range(lo[1:], hi[1:]) + ")"
    rest = len(lo) - 1
    parts = []
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return f"[{lo[0]}-{hi[0]}]" + ("[0-9]" * rest)
    parts.append(lo[0] + "(" + _digits_range(lo[1:], "9" * rest) + ")" if rest else lo[0])
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + "[0-9]" * rest)
    parts.append(hi[0] + "(" + _digits_range("0" * rest, hi[1:]) + ")" if rest else hi[0])
    return "(" + "|".join(parts) + ")"


def _nonneg_range(lo: int, hi: int | None) -> str:
    """Regex for canonical non-negative integers in [lo, hi] (hi None = unbounded)."""
    parts = []
    top = hi if hi is not None else None
    length = len(str(lo))
    while True:
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = 10 ** length - 1
        if top is not None:
            b = min(b, top)
        if a <= b:
            parts.append(_digits_range(str(a), str(b)))
        if top is not None and b >= top:
            break
        if top is None and length >= len(str(lo)) + 1:
            parts.append(f"[1-9][0-9]{{{length},}}")
            break
        length += 1
    # longest alternatives first: lark's lexer takes Python ``re``'s leftmost-first match (and its
    # prefixes), so a short alternative listed first would hide longer numbers from the validator
    return "(" + "|".join(reversed(parts)) + ")"


def _int_regex(lo: int | None, hi: int | None) -> str:
    parts = []
    if hi is None or hi >= 0:
        parts.append(_nonneg_range(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:
        # negatives -x with x in [max(1, -hi), -lo]
        nlo = max(1, -hi) if hi is not None else 1
        nhi = -lo if lo is not None else None
        if nhi is None or nlo <= nhi:
            parts.append("-" + _nonneg_range(nlo, nhi))
    return "(" + "|".join(parts) + ")"


class _Compiler:
    def __init__(self, root):
        self.root = root
        self.rules: list[str] = []
        self.terms: list[str] = []
        self.count = 0
        self.refs: dict[str, str] = {}

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def rule(self, stem: str, body: str) -> str:
        name = self.fresh(stem)
        self.rules.append(f"{name}: {body}")
        return name

    def term(self, stem: str, regex: str) -> str:
        name = self.fresh(stem).upper()
        self.terms.append(f"{name}: /{regex}/")
        return name

    def ref(self, ref: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        parts = ref.split("/")
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("definitions", "$defs"):
            raise ValueError(f"JSON Schema: unsupported $ref {ref!r} (only #/definitions/... and #/$defs/...)")
        target = (self.root.get(parts[1]) or {}).get(parts[2])
        if target is None:
            raise ValueError(f"JSON Schema: $ref {ref!r} points nowhere")
        name = self.fresh("ref")
        self.refs[ref] = name
        self.rules.append(f"{name}: {self.value(target)}")
        return name

    def value(self, s) -> str:
        """An expansion (Lark EBNF text) for values valid under schema ``s``."""
        if s is True or s == {}:
            return "_value"
        if s is False:
            raise ValueError("JSON Schema: the schema `false` accepts nothing")
        if not isinstance(s, dict):
            raise ValueError(f"JSON Schema: a schema must be an object or a boolean, not {type(s).__name__}")
        types = s.get("type")
        tlist = [types] if isinstance(types, str) else list(types) if types is not None else None
        allowed = set(_GENERIC) | _ANNOTATIONS
        for t in tlist or []:
            if t not in _BY_TYPE:
                raise ValueError(f"JSON Schema: unsupported type {t!r}")
            allowed |= _BY_TYPE[t]
        if tlist is None:
            allowed |= {"properties", "required", "additionalProperties", "items"}
        for key in s:
            if key not in allowed:
                raise ValueError(f"JSON Schema: unsupported keyword {key!r}")
        if "$ref" in s:
            return self.ref(s["$ref"])
        if "const" in s:
            return _lit(s["const"])
        if "enum" in s:
            vals = s["enum"]
            if not vals:
                raise ValueError("JSON Schema: empty enum accepts nothing")
            return "(" + " | ".join(_lit(v) for v in vals) + ")"
        if "anyOf" in s:
            return "(" + " | ".join(self.value(sub) for sub in s["anyOf"]) + ")"
        if tlist is None:
            if "properties" in s or "additionalProperties" in s:
                tlist = ["object"]
            elif "items" in s:
                tlist = ["array"]
            else:
                return "_value"
        return "(" + " | ".join(self.typed(t, s) for t in tlist) + ")"

    def typed(self, t: str, s: dict) -> str:
        if t == "null":
            return '"null"'
        if t == "boolean":
            return '("true" | "false")'
        if t == "number":
            return "NUMBER"
        if t == "integer":
            lo, hi = s.get("minimum"), s.get("maximum")
            xlo, xhi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
            import math

            bounds_lo = [math.ceil(lo)] if lo is not None else []
            bounds_hi = [math.floor(hi)] if hi is not None else []
            if xlo is not None and not isinstance(xlo, bool):
                bounds_lo.append(math.floor(xlo) + 1)
            if xhi is not None and not isinstance(xhi, bool):
                bounds_hi.append(math.ceil(xhi) - 1)
            L = max(bounds_lo) if bounds_lo else None
            H = min(bounds_hi) if bounds_hi else None
            if L is None and H is None:
                return "INTEGER"
            if L is not None and H is not None and L > H:
                raise ValueError(f"JSON Schema: integer range [{L}, {H}] is empty")
            return self.term("int", _int_regex(L, H))
        if t == "string":
            lo, hi = s.get("minLength", 0), s.get("maxLength")
            if lo == 0 and hi is None:
                return "STRING"
            if (hi if hi is not None else lo) > _MAX_LENGTH:
                raise ValueError(f"JSON Schema: minLength/maxLength above {_MAX_LENGTH} are not supported")
            rep = f"{{{lo},{hi}}}" if hi is not None else f"{{{lo},}}"
            return self.term("str", '"' + _CHAR + rep + '"')
        if t == "array":
            item = self.value(s.get("items", True))
            lo, hi = int(s.get("minItems", 0)), s.get("maxItems")
            if lo > _MAX_REPEAT or (hi is not None and hi > _MAX_REPEAT):
                raise ValueError(f"JSON Schema: minItems/maxItems above {_MAX_REPEAT} are not supported")
            if hi is not None and hi < lo:
                raise ValueError("JSON Schema: maxItems < minItems accepts nothing")
            it = self.rule("item", item)
            if hi == 0:
                return '("[" "]")'
            first = lo if lo > 0 else 1
            tail = f'("," {it})'
            more = f"{tail}*" if hi is None else (f"{tail} ~ 0..{hi - first}" if hi > first else "")
            seq = " ".join([it] + [tail] * (first - 1) + ([more] if more else []))
            return f'("[" {seq} "]")' if lo > 0 else f'("[" [{seq}] "]")'
        # object
        props = s.get("properties")
        required = list(s.get("required", []))
        if props is None:
            extra = s.get("additionalProperties", True)
            if isinstance(extra, dict) and extra:
                v = self.rule("val", self.value(extra))
                pair = f"(STRING \":\" {v})"
                return f'("{{" [{pair} ("," {pair})*] "}}")'
            if required:
                raise ValueError("JSON Schema: 'required' without 'properties' is not supported")
            return "_object"
        for r in required:
            if r not in props:
                raise ValueError(f"JSON Schema: required property {r!r} is not in properties")
        names = list(props)
        pairs = [self.rule("prop", f"{_lit(k)} \":\" ({self.value(props[k])})") for k in names]
        req = [k in required for k in names]
        if not names:
            return '("{" "}")'

        def tail(i: int) -> str:
            return " ".join((f'"," {pairs[j]}' if req[j] else f'("," {pairs[j]})?') for j in range(i, len(names)))

        # R_i: members from property i on, the first printed one without a leading comma
        first_req = req.index(True) if True in req else len(names)
        alts = []
        for i in range(0, min(first_req, len(names) - 1) + 1):
            alts.append(f"{pairs[i]} {tail(i + 1)}".strip())
            if req[i]:
                break
        members = self.rule("members", " | ".join(f"({a})" for a in alts))
        return f'("{{" {members} "}}")' if first_req < len(names) else f'("{{" [{members}] "}}")'


def schema_to_lark(schema) -> str:
    """Lark grammar text whose language is a subset of the JSON texts valid under ``schema``."""
    if isinstance(schema, str):
        schema = json.loads(schema)
    c = _Compiler(schema if isinstance(schema, dict) else {})
    top = c.value(schema)
    lines = [f"start: {top}"] + c.rules + c.terms
    return "\n".join(lines) + "\n" + _BASE
