"""Named plug-ins and their options, handled once for every registry (samplers, caches, modifiers, filters,
the lm-eval model args, ``dllm eval``'s specs).

* :func:`did_you_mean` / :func:`unknown` — the one "unknown X 'y' (did you mean 'z'?); available: ..." message.
* :func:`add` — put a name into a registry table; an existing name is refused unless ``override=True``.
* :func:`coerce_options` — option values checked and converted from a dataclass's field types, so
  ``threshold="0.9"`` (from a command line) becomes 0.9 and ``threshold="abc"`` fails in one line that
  names the option, whichever way it came in (Python, ``-o``, ``--samplers``, lm-eval ``model_args``).
* :func:`parse_literal` — the one parser for ``KEY=VALUE`` text (CLI ``-o``, ``--samplers`` entries).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any, Iterable

# --------------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------------


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ''."""
    hint = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


def unknown(kind: str, name: object, choices: Iterable[str], where: str = "", listing: str = "available") -> ValueError:
    """The one-line error for a name that is not registered: ``unknown sampler 'x' (did you mean ...)``."""
    choices = list(choices)
    shown = ", ".join(choices) if choices else "none"
    return ValueError(f"unknown {kind} '{name}'{where}{did_you_mean(name, choices)}; {listing}: {shown}")


def lookup(table: dict, kind: str, name: object, where: str = ""):
    """``table[name]``, or the one-line :func:`unknown` error."""
    if not isinstance(name, str) or name not in table:
        raise unknown(kind, name, list(table), where)
    return table[name]


_TABLES: dict[str, dict] = {}  # kind -> its registry table, for check_options


def add(table: dict, kind: str, name: str, obj, override: bool = False) -> None:
    """Register ``obj`` as ``name``. Re-registering the same object (a module imported twice) is a no-op;
    another object under a taken name is refused unless ``override=True`` — otherwise a plug-in could
    silently replace a built-in for the whole process."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty string (got {name!r})")
    old = table.get(name)
    if old is not None and not override and not _same(old, obj):
        raise ValueError(f"{kind} '{name}' is already registered ({_qualname(old)}): pick another name, or pass "
                         f"override=True to replace it")
    table[name] = obj
    _TABLES.setdefault(kind, table)


def check_options(kind: str, name: str, options: dict, where: str = "") -> dict:
    """``options`` of the registered ``kind`` ``name`` (e.g. ``"cache", "dual"``), typed by its fields,
    without building it (for settings checked before the model is known)."""
    cls = lookup(_TABLES.get(kind, {}), kind, name, where)
    return coerce_options(cls, dict(options), f"{kind} '{name}'")


def _same(a, b) -> bool:
    return a is b or (_qualname(a) == _qualname(b))


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


# --------------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------------


def parse_literal(text: object):
    """A value typed as text: ``true``/``false`` (any case) as booleans, ``None`` as None, numbers and other
    Python literals as themselves, anything else as the (stripped) string. Non-strings pass through.

    ``none`` in lower case stays the string ``"none"`` (the cache named none); an option whose type allows
    None reads it as None (see :func:`coerce_value`)."""
    if not isinstance(text, str):
        return text
    value = text.strip()
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, :func:`parse_literal` value); a ValueError naming the form otherwise."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"option '{text}' must look like KEY=VALUE (e.g. threshold=0.9)")
    return key, parse_literal(value)


def parse_spec(entry: str, flag: str, example: str = "dual:refresh_every=2") -> tuple[str, list[tuple[str, object]]]:
    """``name[:key=value...]`` (a ``--samplers`` / ``--caches`` / ``--cache`` entry) -> (name, options)."""
    import re

    form = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    name, *pairs = str(entry).strip().split(":")
    if not form.match(name):
        raise ValueError(f"malformed {flag} entry '{entry}': expected name[:key=value...], e.g. {example}")
    options = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not form.match(key) or value == "":
            raise ValueError(f"malformed {flag} entry '{entry}' at '{pair}': expected name[:key=value...], e.g. {example}")
        options.append((key, parse_literal(value)))
    return name, options


def split_names(value, what: str = "modifiers") -> list[str]:
    """Plug-in names from text ``"a+b"`` or ``"a,b"`` (``+`` where a comma cannot separate list items: lm-eval
    ``model_args``, ``--samplers`` entries) or from a list; None, ``""``, ``"none"`` and False give []."""
    if value is None or value is False:
        return []
    if isinstance(value, str):
        items = value.replace("+", ",").split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"{what}={value!r} must be names joined by '+' (e.g. eoser+other) or a list of names")
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: {item!r} is not a name (give names joined by '+', e.g. eoser+other)")
        item = item.strip()
        if item and item.lower() != "none" and item not in names:
            names.append(item)
    return names


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}
_NONE_WORDS = ("none", "null")


class OptionError(ValueError):
    """A value that does not fit an option's type (a ValueError, so every command prints it in one line)."""


def coerce_value(value, annotation, option: str, owner: str = ""):
    """``value`` as the type ``annotation`` declares (int, float, bool, str, Literal, X | None, tuple/list
    of those); other annotations pass the value through. Floats must be finite; ``True`` is not an int."""
    prefix = f"{owner}: " if owner else ""
    allows_none, kinds = _unpack(annotation)
    if isinstance(value, str) and allows_none and value.strip().lower() in _NONE_WORDS:
        return None
    if value is None:
        if allows_none:
            return None
        if str in kinds:  # lm-eval's model_args read "none" as None; for a text option it is the text
            return "none"
    if not kinds:
        return value
    errors = []
    for kind in kinds:
        try:
            return _convert(value, kind)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    wanted = " or ".join(dict.fromkeys(errors)) + (" or None" if allows_none else "")
    raise OptionError(f"{prefix}option {option} must be {wanted} (got {value!r})")


def _unpack(annotation) -> tuple[bool, list]:
    """(None allowed, the concrete kinds) of an annotation; kinds empty = unchecked."""
    if annotation is None or annotation is Any or annotation is object:
        return True, []
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(annotation)
        allows_none = type(None) in args
        kinds = []
        for arg in args:
            if arg is type(None):
                continue
            sub_none, sub = _unpack(arg)
            if not sub:
                return True, []  # an unchecked member: leave the whole value alone
            kinds += sub
            allows_none |= sub_none
        return allows_none, kinds
    if origin is typing.Literal:
        return None in typing.get_args(annotation), [annotation]
    if annotation in (bool, int, float, str) or origin in (tuple, list):
        return False, [annotation]
    return True, []


def _convert(value, kind):
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        allowed = [a for a in typing.get_args(kind) if a is not None]
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        raise ValueError("one of " + ", ".join(repr(a) for a in allowed))
    if origin in (tuple, list):
        items = parse_literal(value) if isinstance(value, str) else value
        if isinstance(items, str) or not isinstance(items, (list, tuple)):
            items = [items] if not isinstance(items, str) else [s for s in items.split(",") if s.strip()]
        args = typing.get_args(kind)
        member = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        out = [item if member is None else _convert(item, member) for item in items]
        return origin(out)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ValueError("true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("an integer")
    if kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ValueError("a finite number" if number is not None else "a number")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("text")
    return value


def field_types(cls) -> dict[str, object]:
    """Option name -> annotation for a dataclass (string annotations resolved; unresolvable ones unchecked).

    Resolved once per class: ``typing.get_type_hints`` compiles every string annotation, about 2 ms a call —
    more than a whole decoding step of a small model."""
    return dict(_field_types(cls))


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> tuple[tuple[str, object], ...]:
    if not dataclasses.is_dataclass(cls):
        return ()
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a third-party annotation that does not resolve: check what resolves, one by one
        hints = {}
        for f in dataclasses.fields(cls):
            try:
                hints[f.name] = typing.get_type_hints(type("_", (), {"__annotations__": {f.name: f.type},
                                                                     "__module__": cls.__module__}))[f.name]
            except Exception:
                hints[f.name] = None
    return tuple((f.name, hints.get(f.name)) for f in dataclasses.fields(cls) if f.init)


def coerce_options(cls, options: dict, owner: str) -> dict:
    """``options`` checked against ``cls``'s fields: unknown names get a "did you mean" error, values are
    converted to the field types (``owner`` names who is asking, e.g. ``sampler 'threshold'``)."""
    fields = field_types(cls)
    out = {}
    for key, value in options.items():
        if key not in fields:
            listing = ", ".join(fields) if fields else "none"
            raise ValueError(f"unknown option '{key}' for {owner}{did_you_mean(key, fields)}; its options are: {listing}")
        out[key] = coerce_value(value, fields[key], key, owner)
    return out


def coerce_fields(obj, owner: str) -> None:
    """Check (and convert in place) the option fields of a ready dataclass object."""
    if not dataclasses.is_dataclass(obj):
        return
    fields = field_types(type(obj))
    for name, annotation in fields.items():
        value = getattr(obj, name)
        fixed = coerce_value(value, annotation, name, owner)
        if fixed is not value:
            object.__setattr__(obj, name, fixed)


def coerce_arguments(func, kwargs: dict, owner: str) -> dict:
    """``kwargs`` for ``func`` with the values of its annotated parameters converted to their types (other
    keys — e.g. sampler and cache options on their way to :func:`coerce_options` — unchanged)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        return dict(kwargs)
    return {key: coerce_value(value, hints[key], key, owner) if key in hints else value
            for key, value in kwargs.items()}
