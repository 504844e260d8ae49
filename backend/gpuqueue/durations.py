"""Parsing of human durations such as ``90s``, ``15m``, ``2h``, ``1h30m``, ``2d``."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``. A bare number means seconds. Raises ValueError naming the fix."""
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError(f"duration must be positive, got {text}")
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        value = float(s)
    else:
        parts = _PART.findall(s)
        if not parts or "".join(n + u for n, u in parts) != s:
            raise ValueError(
                f"cannot read duration {text!r}: write e.g. 90s, 15m, 2h, 1h30m or 2d"
            )
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """A short human form: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"
