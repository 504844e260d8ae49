"""Where a path a job controls leads, for root to look at without following the job's links
one at a time: :func:`resolve_path`. The runner uses it for the checkpoint paths a job names in
its events (``runner._inside``). (``launchfail`` follows a refused program's links itself, only
as far as the job's uid may: it reads no link in a folder that uid may not enter.)

Python 3.11's ``os.path.realpath`` follows any number of links one ``readlink`` at a time,
recursing once per link: a chain of some thousand links the job made raised RecursionError
(which ended root's runner), and a chain of 900 took it 4 ms, so that a job's own events.jsonl
full of such records held the runner's main loop, where it answers stop requests and kills the
job after the grace period, for minutes (``tests/backend/test_root_paths.py``)."""

from __future__ import annotations

import os
from typing import Optional

MAX_PATH = 4096  # bytes of a path that is resolved at all (PATH_MAX)
MAX_MISSING_PARTS = 64  # trailing components of it that may not exist yet


def resolve_path(path: str) -> Optional[str]:
    """Where ``path`` leads, as ``os.path.realpath`` says (the components that do not exist are
    kept as they are), resolved by the kernel: opened ``O_PATH`` (nothing is opened: not a FIFO,
    not a device), at most 40 links followed (the kernel's bound, as for an exec). None if it
    cannot be resolved: over 40 links, longer than :data:`MAX_PATH`, more than
    :data:`MAX_MISSING_PARTS` missing components, a NUL byte, a folder root may not search."""
    if len(path) > MAX_PATH or "\0" in path:
        return None
    head, rest = (path.rstrip("/") or "/"), []  # type: tuple[str, list[str]]
    for _ in range(MAX_MISSING_PARTS):  # each a missing component, or a link to a missing one
        try:
            fd = os.open(head or ".", os.O_PATH | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            try:  # a link to what does not exist: where it leads, as realpath says
                head = os.path.join(os.path.dirname(head), os.readlink(head)).rstrip("/") or "/"
                continue
            except OSError:
                pass
            head, tail = os.path.split(head)
            if not tail:
                return None
            rest.insert(0, tail)
            continue
        except OSError:  # ELOOP (over 40 links), EACCES, ...
            return None
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        return os.path.normpath(os.path.join(real, *rest))
    return None
