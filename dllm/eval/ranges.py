"""Sweep specs: value ranges ``a..b/step``, comma lists, and their expansion into sampler and grid points.

``--samplers`` takes comma-separated entries ``name[:key=value...]``; a value may be a range
(``threshold:threshold=0.5..0.95/0.05`` = 0.5, 0.55, …, 0.95) or a list that continues after commas
(``localleap:tau=0.6,0.7,0.8``), and after a comma ``key=value`` adds another option to the same entry
(``threshold:threshold=0.5..0.9/0.1,strict=true``). A bare piece after a comma starts a new entry when it
names a registered sampler (or the entry before it has no option to extend), else it is one more value of
the previous option, and may go on with ``:key=value`` options (``threshold:threshold=0.5,0.9:strict=true``).
Each entry expands into the product of its option values, in the order written.

Ranges are inclusive of ``b`` when it lies on the grid, computed in decimal so values come out as typed
(0.55, not 0.5500000000000001); integer endpoints and step give integers; ``a..b`` alone steps by 1.
Every mistake is a one-line ``ValueError``.
"""

from __future__ import annotations

import itertools
import re
from decimal import Decimal, InvalidOperation

from .. import registry
from .settings import DECODE_KEYS, modifier_option_names

MAX_VALUES = 1000
SPEC_DECODE_KEYS = tuple(k for k in DECODE_KEYS if k not in ("sampler", "cache"))
GRID_KEYS = ("cache",) + SPEC_DECODE_KEYS
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def parse_range(text: str) -> list:
    """``a..b/step`` (or ``a..b``, step 1) → the values a, a+step, … ≤ b."""
    parts = text.split("..")
    if len(parts) != 2:
        raise ValueError(f"malformed range '{text}': expected a..b/step, e.g. 0.5..0.95/0.05")
    start, _, step = parts[1].partition("/")
    low, high = parts[0], start
    step = step if _ else "1"
    numbers = [_decimal(part, text) for part in (low, high, step)]
    a, b, s = numbers
    if s <= 0:
        raise ValueError(f"range '{text}': step {step} must be > 0")
    if b < a:
        raise ValueError(f"range '{text}' runs downward: write it low..high/step ({high}..{low}/{step})")
    count = int((b - a) / s) + 1
    if count > MAX_VALUES:
        raise ValueError(f"range '{text}' has {count} values, more than {MAX_VALUES}: use a larger step")
    integer = all(_is_integer(part) for part in (low, high, step))
    values = [a + i * s for i in range(count)]
    return [int(v) if integer else float(v) for v in values]


def parse_values(text: str) -> list:
    """A comma list of scalars and ranges → its values (duplicates dropped, order kept)."""
    values = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            raise ValueError(f"'{text}' has an empty entry: give comma-separated values without blanks")
        values.extend(_piece_values(piece))
    return _unique(values)


def expand_samplers(text: str) -> list[tuple[str, dict]]:
    """The whole ``--samplers`` text → ``(name, options)`` points, one per value combination. Options must be
    the sampler's own (``dllm.samplers.option_names``; values converted to the option's type, as
    ``dllm.samplers.build`` does) or decoding args (``steps``, ``gen_length``, …)."""
    from dllm import samplers

    entries: list[list] = []  # [name, [[key, [values...]], ...]]
    for piece in _pieces(text, "--samplers"):
        head, *pairs = piece.split(":")
        if "=" in head:  # ",key=value": another option of the entry before
            if not entries:
                raise ValueError(f"--samplers '{text}' starts with an option '{piece}': put a sampler name first")
            pairs.insert(0, head)
        elif head in samplers.available() or not entries or not entries[-1][1]:
            if not _NAME.match(head):
                raise ValueError(f"malformed --samplers entry '{piece}': expected name[:key=value...]")
            entries.append([head, []])
        else:  # ",value": one more value of the previous option
            entries[-1][1][-1][1].extend(_piece_values(head))
        entries[-1][1].extend(_option(pair, entries[-1][0]) for pair in pairs)
    points = []
    for name, options in entries:
        valid = samplers.option_names(name)  # unknown sampler: one-line ValueError
        # options of the modifiers the entry names (static:modifiers=eoser:gamma_min=0.01) are decoding args too
        decoding = set(SPEC_DECODE_KEYS) | {k for key, values in options if key == "modifiers"
                                            for value in values for k in modifier_option_names(value)}
        for key, _ in options:
            if key not in valid and key not in decoding:
                hint = registry.did_you_mean(key, list(valid) + list(SPEC_DECODE_KEYS))
                raise ValueError(f"unknown option '{key}' for sampler '{name}'{hint}; its options are: "
                                 f"{', '.join(valid) or 'none'} (and the decoding args {', '.join(SPEC_DECODE_KEYS)})")
        merged: dict[str, list] = {}
        for key, values in options:
            merged.setdefault(key, []).extend(values)
        keys = list(merged)
        for combo in itertools.product(*(_unique(merged[k]) for k in keys)):
            options = dict(zip(keys, combo))
            own = {k: v for k, v in options.items() if k not in decoding}
            built = samplers.build(name, own)  # a value of the wrong type: one-line error naming the option
            point = (name, {k: getattr(built, k) if k in own else v for k, v in options.items()})
            if point not in points:
                points.append(point)
    return points


def expand_grid(text: str | None, keys: tuple[str, ...] = GRID_KEYS) -> list[dict]:
    """``--grid gen_length=32,64,block_length=8..16/8,cache=none,dual`` → one dict per combination
    (``[{}]`` without a grid). Cache values stay text (``dual:refresh_every=2`` is one ``--caches`` entry);
    their names are checked against the cache registry."""
    if text is None or not str(text).strip():
        return [{}]
    axes: dict[str, list] = {}
    last = None
    for piece in _pieces(text, "--grid"):
        key, eq, value = piece.partition("=")
        if eq and ":" not in key:  # (``dual:refresh_every=2`` is a cache value, not a key)
            key = key.strip()
            if key not in keys:
                raise ValueError(f"--grid cannot vary '{key}'; it varies: {', '.join(keys)}")
            if key in axes:
                raise ValueError(f"--grid names '{key}' twice: list its values once, comma-separated")
            axes[key], last = [], key
            value = value.strip()
        elif last is None:
            raise ValueError(f"--grid '{text}' starts with a value '{piece}': expected key=value[,value...]")
        else:
            value = piece
        if not value:
            raise ValueError(f"--grid '{piece}' has no value")
        axes[last].extend(_piece_values(value, keep_text=last == "cache"))
    if "cache" in axes:
        from dllm import caches

        for entry in axes["cache"]:
            registry.lookup(caches.base._REGISTRY, "cache", entry.split(":")[0], where=" in --grid")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(_unique(axes[k]) for k in names))]


def point_text(name: str, options: dict) -> str:
    """A sampler point as a ``--samplers`` entry: ``threshold:threshold=0.55:strict=true``."""
    return ":".join([name] + [f"{k}={format_value(v)}" for k, v in options.items()])


def format_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------------
def _option(pair: str, sampler: str) -> list:
    key, eq, value = pair.partition("=")
    key, value = key.strip(), value.strip()
    if not eq or not _NAME.match(key) or not value:
        raise ValueError(f"malformed option '{pair}' for sampler '{sampler}': expected key=value, key=a..b/step "
                         f"or key=v1,v2,...")
    return [key, _piece_values(value)]


def _piece_values(piece: str, keep_text: bool = False) -> list:
    if ".." in piece:
        return parse_range(piece)
    return [piece if keep_text else registry.parse_literal(piece)]


def _pieces(text: str, flag: str) -> list[str]:
    pieces = [p.strip() for p in str(text).split(",")]
    if any(not p for p in pieces):
        raise ValueError(f"{flag} '{text}' has an empty entry: give a comma-separated list without blanks")
    return pieces


def _decimal(text: str, whole: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"range '{whole}': '{text}' is not a number") from None
    if not value.is_finite():
        raise ValueError(f"range '{whole}': '{text}' is not a finite number")
    return value


def _is_integer(text: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", text) is not None


def _unique(values: list) -> list:
    out = []
    for v in values:
        if not any(v == o and type(v) is type(o) for o in out):
            out.append(v)
    return out
