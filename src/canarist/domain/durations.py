"""Durations as users write them: 30, "30s", "5m", "1h", "250ms"."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

from canarist.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "30s", "5m", "1h", "250ms"."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise ConfigError(f"not a duration: {value!r} (use e.g. 30, '30s', '5m', '1h')")


def _duration_field(value: object) -> float:
    # A ValueError, so that pydantic's one-line error names the field (services.web.…).
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


Seconds = Annotated[float, BeforeValidator(_duration_field)]
"""A duration field of a spec or of a judge's settings: 60, "60s", "1m"."""


def format_duration(seconds: float) -> str:
    """A short human form: 45s, 5m, 1m30s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes and secs:
        return f"{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"
