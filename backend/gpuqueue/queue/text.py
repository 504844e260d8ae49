"""Control characters: refused in names by the request models, escaped in what a terminal shows."""

from __future__ import annotations

import re
from typing import Any

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 controls (NUL, BEL, BS, TAB, LF, CR, ESC, ...), DEL and the C1 controls (CSI, ...)."""


def printable(text: Any) -> str:
    """``text`` safe to print in a terminal: each control character (ESC, CR, BEL, ...) shown as
    a ``\\x1b``-style escape, so that a job name cannot rewrite an admin's screen."""
    return CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], str(text))
