"""When a client of the API asks again for a read the API refused at its user's read bound.

The cluster API answers a read past ``gpuqueue api --max-reads-per-user`` with 429 and
``Retry-After`` (``gpuqueue.cluster.reads``). Its own clients — a user's Jupyter server
(``jupyter_gpuqueue.remote``) and the synchronous client of the CLI and the kernel
(``gpuqueue.rest.client``) — do not pass that 429 on at once: they ask again at its
``Retry-After``, for up to :data:`READ_RETRY_S` in all. Only reads: a write (submit, cancel,
preempt) refused is never sent again by itself. The one place for that rule; each client only
sleeps (``time.sleep`` or ``asyncio.sleep``) the pause this module returns.
"""

from __future__ import annotations

import math
from typing import Optional

READ_RETRY_S = 10.0
"""How long a read the API service answered 429 (this user's reads in flight at its bound) is
tried again, at its ``Retry-After``, before the 429 reaches the user."""
MAX_PAUSE_S = 2.0
"""The longest single pause, whatever ``Retry-After`` asks (a live follow's bound asks 10 s)."""


def read_retry_pause(method: str, status: int, retry_after: Optional[str], waited: float) -> Optional[float]:
    """The pause before asking again for a refused request, or None to give up: only a GET
    answered 429, while less than :data:`READ_RETRY_S` was spent waiting (``waited``); as long
    as ``Retry-After`` asks (1 s when it is missing or not a number of seconds), from 0.1 s to
    :data:`MAX_PAUSE_S`, and never past the total."""
    if method.upper() != "GET" or status != 429 or waited >= READ_RETRY_S:
        return None
    try:
        asked = float(retry_after) if retry_after else 1.0
    except ValueError:  # an HTTP date, from some proxy
        asked = 1.0
    if not math.isfinite(asked):
        asked = 1.0
    return min(max(asked, 0.1), MAX_PAUSE_S, READ_RETRY_S - waited)
