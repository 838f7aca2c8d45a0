"""Human durations ("90d", "12h", "30m", "45s", "1w") to timedelta, and timedelta to Go syntax."""

import re
from datetime import timedelta

from ..errors import BundleError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: object, what: str) -> timedelta:
    match = _PATTERN.match(str(text)) if isinstance(text, (str, int)) else None
    if match is None or isinstance(text, bool):
        raise BundleError(f"{what}: invalid duration {text!r} (use e.g. 30s, 15m, 12h, 90d, 2w)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise BundleError(f"{what}: duration must be positive, got {text!r}")
    return timedelta(seconds=seconds)


def go_duration(delta: timedelta) -> str:
    """Go's time.ParseDuration has no day unit, so days become hours."""
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def human_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{sign}{seconds // size}{unit}{(seconds % size) // _next(size)}{_next_unit(unit)}"
    return f"{sign}{seconds}s"


def _next(size: int) -> int:
    return {86400: 3600, 3600: 60, 60: 1}[size]


def _next_unit(unit: str) -> str:
    return {"d": "h", "h": "m", "m": "s"}[unit]
