"""Stop strings, handled once: validation of what a user passes and cutting a text at the first one."""

from __future__ import annotations

from typing import Sequence


def normalize_stops(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """``stop`` as a tuple of strings; an empty string (which would cut every output to '') is refused."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    for s in stops:
        if not isinstance(s, str):
            raise ValueError(f"stop strings must be text (got {s!r})")
        if s == "":
            raise ValueError("stop='' would end every output before its first character: give non-empty stop strings")
    return stops


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any of ``stops`` (empty ones ignored)."""
    cut = len(text)
    for stop in stops:
        if stop:
            index = text.find(stop)
            if 0 <= index < cut:
                cut = index
    return text[:cut]
