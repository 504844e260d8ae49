"""Parsing of human durations such as ``90s``, ``15m``, ``2h``, ``1h30m``, ``2d``."""

from __future__ import annotations

import math
import re

MAX_DURATION_S = 3660 * 86400.0  # ten years: anything longer is a typo (or an attack)
MAX_TIMEOUT_S = 366 * 86400.0  # the longest time limit a job may ask for: a year (and a day)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str | int | float, max_s: float = MAX_DURATION_S) -> float:
    """Seconds in ``text``, above 0 and at most ``max_s``. A bare number means seconds.
    Raises ValueError naming the fix (never returns inf or nan)."""
    if isinstance(text, bool):
        raise ValueError(f"duration must be a number of seconds or e.g. 90s, 15m, 2h; got {text}")
    if isinstance(text, (int, float)):
        value = float(text) if not isinstance(text, int) or abs(text) < 10**18 else math.inf
        shown = _shown(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        shown = _shown(text)
        if len(s) > 40:
            raise ValueError(f"duration {shown} is too long: write at most {format_duration(max_s)}, "
                             f"e.g. 90s, 15m, 2h, 1h30m or 2d")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            value = float(s)
        else:
            parts = _PART.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise ValueError(f"cannot read duration {shown}: write e.g. 90s, 15m, 2h, 1h30m or 2d")
            value = sum(float(n) * _UNITS[u] for n, u in parts)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"duration must be positive, got {shown}")
    if value > max_s:
        raise ValueError(f"duration {shown} is too long: at most {format_duration(max_s)}")
    return value


KEEP_FINISHED = "30d"  # how long a finished job is kept by default, in both modes
FOREVER = ("forever", "never", "0", "none")


def parse_retention(text: str) -> float | None:
    """How long to keep finished jobs: seconds (as :func:`parse_duration`), or None for
    ``forever`` (also ``never``, ``0``, ``none``). Raises ValueError naming the fix."""
    if str(text).strip().lower() in FOREVER:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise ValueError(f"{e} (or 'forever' to keep finished jobs)") from None


def _shown(text: object) -> str:
    """``text`` for an error message, cut short."""
    if not isinstance(text, str):
        r = str(text)
        return r if len(r) <= 40 else f"a {len(r)}-digit number"
    return repr(text) if len(text) <= 40 else repr(text[:40])[:-1] + "...'"


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
