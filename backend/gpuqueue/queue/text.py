"""Control characters: refused in names by the request models, escaped in what a terminal shows."""

from __future__ import annotations

import re
from typing import Any

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""C0 controls (NUL, BEL, BS, TAB, LF, CR, ESC, ...), DEL and the C1 controls (CSI, ...); the
Unicode line and paragraph separators (U+2028, U+2029: line breaks to ``str.splitlines``, to
JavaScript before ES2019 and to many log viewers); and the bidirectional formatting characters
(U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), with which a name would show the rest of its
line reversed in an admin's listing (another owner, another state)."""


def printable(text: Any) -> str:
    """``text`` safe to print in a terminal: each control character (ESC, CR, BEL, ...) shown as
    a ``\\x1b``-style escape, so that a job name cannot rewrite an admin's screen."""
    return CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], str(text))


_IN_OUTPUT = re.compile(r"(\x1b\[[0-9;:]*m)|(?![\t\n])" + CONTROL_CHARS.pattern)


def terminal_output(text: Any) -> str:
    """A job's output (a log line, a traceback) safe to print in a terminal that may be another
    user's (an admin's ``gpuqueue logs ID``): colours (SGR, ``ESC[...m``), tabs and newlines are
    kept, every other control character is escaped as :func:`printable` does, so that no line
    sets the terminal's clipboard (OSC 52) or title, or moves the cursor over what was shown."""
    return _IN_OUTPUT.sub(lambda m: m.group(1) or repr(m.group())[1:-1], str(text))
