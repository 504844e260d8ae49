"""Per-user submit rate limits: a token bucket per user, in memory (the embedded mode) or in
Redis (the cluster's API services, atomic across processes with WATCH/MULTI).

One bucket holds up to ``burst`` submits and refills at ``rate`` submits a second; a submit
takes one, and when none is left it is refused with the seconds until one is back
(``RateLimited``: HTTP 429 with ``Retry-After``). The bucket arithmetic (:func:`take`) is one
function; the two stores only keep its state, so both modes count the same way.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from .errors import RateLimited


@dataclass(frozen=True)
class SubmitLimit:
    """A user's bucket: ``rate`` submits a second refill it, up to ``burst``."""

    rate: float
    burst: int


def take(tokens: Optional[float], stamp: Optional[float], now: float, limit: SubmitLimit) -> tuple[float, float, Optional[float]]:
    """One submit against a bucket last left with ``tokens`` at ``stamp`` (None: never used,
    so full). Returns (tokens, stamp) to store and, when refused, the seconds to wait."""
    if tokens is None or stamp is None:
        tokens, stamp = float(limit.burst), now
    elapsed = max(0.0, now - stamp)  # a clock that stepped back adds nothing
    tokens = min(float(limit.burst), tokens + elapsed * limit.rate)
    if tokens >= 1.0:
        return tokens - 1.0, now, None
    return tokens, now, (1.0 - tokens) / limit.rate


def put_back(tokens: Optional[float], stamp: Optional[float], now: float, limit: SubmitLimit) -> tuple[float, float]:
    """A token given back (the submit that took it was refused): the bucket refilled to
    ``now``, plus one, never above ``burst``. Returns (tokens, stamp) to store."""
    if tokens is None or stamp is None:
        return float(limit.burst), now
    elapsed = max(0.0, now - stamp)
    return min(float(limit.burst), tokens + elapsed * limit.rate + 1.0), now


class BucketStore(Protocol):
    """Where the buckets' state lives; ``apply`` runs :func:`take` atomically for one key."""

    def apply(self, key: str, limit: SubmitLimit, now: float) -> Optional[float]:
        """Take one token from ``key``'s bucket: None when granted, else seconds to wait."""
        ...

    def give_back(self, key: str, limit: SubmitLimit, now: float) -> None:
        """Return one token to ``key``'s bucket (:func:`put_back`)."""
        ...


class MemoryBuckets:
    """Buckets of one process (the embedded mode: one Jupyter server)."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def apply(self, key: str, limit: SubmitLimit, now: float) -> Optional[float]:
        """See :class:`BucketStore`."""
        with self._lock:
            tokens, stamp = self._state.get(key, (None, None))
            tokens, stamp, wait = take(tokens, stamp, now, limit)
            if wait is None:
                self._state[key] = (tokens, stamp)
            return wait

    def give_back(self, key: str, limit: SubmitLimit, now: float) -> None:
        """See :class:`BucketStore`."""
        with self._lock:
            tokens, stamp = self._state.get(key, (None, None))
            self._state[key] = put_back(tokens, stamp, now, limit)


class RedisBuckets:
    """Buckets in Redis, shared by every API process: a hash ``<prefix>:<user>`` of tokens and
    stamp, changed in a WATCH/MULTI transaction (retried if another process changed it first),
    expiring once it would be full again."""

    def __init__(self, client: Any, prefix: str):
        self.r = client
        self.prefix = prefix

    def apply(self, key: str, limit: SubmitLimit, now: float) -> Optional[float]:
        """See :class:`BucketStore`."""
        return self._change(key, limit, lambda t, s: take(t, s, now, limit))

    def give_back(self, key: str, limit: SubmitLimit, now: float) -> None:
        """See :class:`BucketStore`."""
        self._change(key, limit, lambda t, s: (*put_back(t, s, now, limit), None))

    def _change(self, key: str, limit: SubmitLimit,
                change: Callable[[Optional[float], Optional[float]], tuple[float, float, Optional[float]]]) -> Optional[float]:
        """Apply ``change(tokens, stamp) -> (tokens, stamp, wait)`` to the bucket in one
        WATCH/MULTI transaction, again if another API process changed it meanwhile; a wait
        (a refusal) is returned and changes nothing (the state refills by time)."""
        import redis

        name = f"{self.prefix}:{key}"
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)
                    raw_t, raw_s = pipe.hmget(name, "t", "s")
                    tokens, stamp, wait = change(_float(raw_t), _float(raw_s))
                    if wait is not None:
                        pipe.unwatch()
                        return wait
                    pipe.multi()
                    pipe.hset(name, mapping={"t": repr(tokens), "s": repr(stamp)})
                    pipe.pexpire(name, int(math.ceil(limit.burst / limit.rate * 1000)) + 1000)
                    pipe.execute()
                    return None
                except redis.WatchError:
                    continue


def _float(raw: Any) -> Optional[float]:
    return float(raw) if raw is not None else None


class SubmitLimiter:
    """Checks a caller's submit against the queue config's ``submit_rate``/``submit_burst``."""

    def __init__(self, store: BucketStore, clock: Any = time.time):
        self.store = store
        self.clock = clock

    def check(self, user: str, admin: bool, config: Any, hub_groups: Sequence[str] = ()) -> None:
        """Take a token from ``user``'s bucket; RateLimited (429) when there is none
        (``hub_groups``: the user's JupyterHub groups, which may place it in a group)."""
        if config is None or (admin and config.exempt_admins_from_submit_rate):
            return
        limit = config.submit_limit_for(user, hub_groups)
        if limit is None:
            return
        wait = self.store.apply(user, limit, self.clock())
        if wait is not None:
            raise RateLimited(
                f"you are submitting faster than your limit of {format_rate(limit.rate)} "
                f"(bursts of {limit.burst}): try again in {wait:.1f} s (the admin sets this limit: "
                f"submit_rate and submit_burst in the queue config)",
                retry_after=wait,
            )

    def refund(self, user: str, admin: bool, config: Any, hub_groups: Sequence[str] = ()) -> None:
        """Give back the token :meth:`check` took for a submit that was then refused (a full
        queue, a quota): a refused submit costs no token."""
        if config is None or (admin and config.exempt_admins_from_submit_rate):
            return
        limit = config.submit_limit_for(user, hub_groups)
        if limit is not None:
            self.store.give_back(user, limit, self.clock())


def format_rate(rate: float) -> str:
    """``0.5`` -> ``"30/min"``: the unit that gives a readable number."""
    for per, unit in ((1, "s"), (60, "min"), (3600, "h")):
        n = rate * per
        if n >= 1 or per == 3600:
            return f"{n:g}/{unit}"
    return f"{rate:g}/s"


UNLIMITED = ("unlimited", "none")


def parse_rate(v: Any, unlimited: bool = False) -> Optional[float]:
    """Submits a second from ``2`` (a second), ``"2/s"``, ``"30/min"`` or ``"100/h"``; where
    ``unlimited`` (a user's own rate), ``"unlimited"`` is None: no limit."""
    if v is None:
        return None
    if isinstance(v, str) and v.strip().lower() in UNLIMITED:
        if unlimited:
            return None
        raise ValueError(f"rate {v!r}: a group cannot lift its members' limit; set submit_rate = "
                         "\"unlimited\" in [defaults] or in each member's [users.NAME]")
    if isinstance(v, bool):
        raise ValueError("a rate is a number of submits a second, or e.g. \"30/min\"")
    if isinstance(v, (int, float)):
        n, per = float(v), 1.0
    elif isinstance(v, str) and "/" in v:
        num, _, unit = v.partition("/")
        per_unit = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
                    "h": 3600.0, "hour": 3600.0}
        try:
            n, per = float(num.strip()), per_unit[unit.strip().lower()]
        except (ValueError, KeyError):
            raise ValueError(f"rate {v!r}: write e.g. \"2/s\", \"30/min\" or \"100/h\"") from None
    else:
        raise ValueError(f"rate {v!r}: write e.g. \"2/s\", \"30/min\" or \"100/h\"")
    if not math.isfinite(n) or n <= 0:
        raise ValueError(f"rate {v!r}: give more than 0 submits (\"unlimited\" for no limit)")
    return n / per
