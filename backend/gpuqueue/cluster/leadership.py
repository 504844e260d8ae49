"""The scheduler daemon's leader lock: one daemon leads (a lock in Redis with a fencing token:
every write it makes is refused once another has taken over, ``RedisStore.exec``'s guard);
the others wait as standbys. The lock is renewed from a thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

import redis

from . import redis_url
from ..observability.repeats import Repeats
from .redis_store import LostLeadership, RedisStore

log = logging.getLogger("gpuqueue.daemon")

REPEAT_FIRST_S = 10.0  # a refused password or an unreachable Redis: logged once, then counted after
# this long, then at doubling intervals (observability/repeats.py)


def refused(url: str, source: str, error: object) -> str:
    """What a daemon whose Redis user or password is refused logs: where the password comes from
    and what it must be."""
    return (f"redis at {redis_url.mask(url)} refused this daemon's user or password ({redis_url.mask(str(error))}). "
            f"Its URL came from {source} (under systemd: GPUQUEUE_REDIS_URL in /etc/gpuqueue/scheduler.env; a "
            f"--redis-file of mode 600 works too): give it the password of user gpuqueue-scheduler in Redis's ACL "
            f"file, redis://gpuqueue-scheduler:PASSWORD@host:6379/0 (deploy/redis/users.acl, docs/deploy.md), then "
            f"restart the daemon. It retries every second meanwhile; this is logged again only as a count")


class Leadership:
    """The daemon's part that takes, keeps and retakes the leader lock (a mixin of ``Daemon``,
    which sets the attributes below)."""

    store: RedisStore
    name: str
    url_source: str  # where the Redis URL came from (--redis-file PATH, $GPUQUEUE_REDIS_URL)
    leader_ttl_ms: int
    token: Optional[str]
    metrics: Any
    _stopping: bool
    _lost: bool
    _token_lock: threading.Lock

    def wait_for_lead(self) -> None:
        """Block (as a standby) until this daemon holds the leader lock."""
        said = False
        down = Repeats(log, every_s=REPEAT_FIRST_S)
        while not self._stopping:
            try:
                tok = self.store.try_lead(self.name, self.leader_ttl_ms)
            except redis.AuthenticationError as e:
                down.seen(refused(self.store.url, self.url_source, e), logging.ERROR)
                time.sleep(1.0)
                continue
            except redis.RedisError as e:
                down.seen(f"redis at {redis_url.mask(self.store.url)} unavailable ({redis_url.mask(str(e))}); retrying")
                time.sleep(1.0)
                continue
            down.over(f"redis at {redis_url.mask(self.store.url)} answers")
            if tok:
                self.token = tok
                log.info("leader now (token %s)", tok)
                if self.metrics is not None:
                    self.metrics.set_leader(True)
                return
            if not said:
                log.info("another scheduler daemon leads; standing by")
                said = True
            time.sleep(min(1.0, self.leader_ttl_ms / 4000))

    def _renew_loop(self) -> None:
        """Keep the lock from a thread of its own, so a long pass never lets it lapse."""
        while not self._stopping:
            time.sleep(self.leader_ttl_ms / 4000)
            if self._lost:
                continue
            token = self.token
            try:
                renewed = self.store.renew_lead(token or "", self.leader_ttl_ms)
            except redis.RedisError:
                continue  # an outage: the main loop notices too; the lock's TTL decides
            with self._token_lock:  # a refusal of a token the main loop has since replaced
                if not renewed and token == self.token:  # (_retake) is no lost lock
                    self._lost = True

    def _retake(self) -> bool:
        """After the lock lapsed (e.g. Redis was down longer than its TTL): take it again if no
        other daemon has. Its fencing token is new, so nothing written under the old one can
        slip in afterwards."""
        try:
            tok = self.store.try_lead(self.name, self.leader_ttl_ms)
        except redis.RedisError:
            return False
        if tok is None:
            return False
        with self._token_lock:
            self.token, self._lost = tok, False
        return True

    def _renew(self) -> None:
        if self._lost:
            raise LostLeadership("the leader lock lapsed or is held by another daemon")
