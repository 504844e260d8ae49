"""Redis URLs for every cluster process, including Redis Sentinel.

Plain ``redis://`` / ``rediss://`` URLs go to redis-py and Celery unchanged. For high
availability name the Sentinels and the monitored service instead of one server:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB]

Every process then asks the Sentinels
for the current primary and follows a failover on its own: the job store (redis-py's
``Sentinel.master_for``) and the Celery broker (kombu's Sentinel transport) alike. The password
is the Redis servers' (AUTH / ACL), not the Sentinels'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import unquote

SCHEMES = ("redis+sentinel://",)
EXAMPLE = "redis+sentinel://:PASSWORD@sentinel1:26379,sentinel2:26379/gpuqueue/0"


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None


def parse_sentinel(url: str) -> Optional[SentinelURL]:
    """The Sentinel parts of ``url``, or None for a plain Redis URL. Raises ValueError naming
    the fix for a malformed one."""
    scheme = next((s for s in SCHEMES if url.startswith(s)), None)
    if scheme is None:
        return None
    rest = url[len(scheme):]
    auth, _, hostpart = rest.rpartition("@")
    username = password = None
    if auth:
        user, sep, pw = auth.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if sep else None)
    hosts, _, path = hostpart.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts or len(parts) > 2:
        raise ValueError(f"Sentinel URL {url!r}: write {EXAMPLE} (hosts, then the service name, then an optional db)")
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Sentinel URL {url!r}: {h!r} is not host:port (e.g. sentinel1:26379)")
        sentinels.append((host, int(port)))
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"Sentinel URL {url!r}: the database {parts[1]!r} is not a number")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelURL(tuple(sentinels), unquote(parts[0]), db, username, password)


def check(url: str) -> Optional[str]:
    """None if ``url`` is a Redis or Sentinel URL the cluster can use, else what to fix."""
    if url.startswith("rediss+sentinel://"):
        return "TLS through Sentinel is not supported yet: use redis+sentinel:// on a trusted network, or rediss:// to a TLS proxy that follows the primary"
    if not url.startswith(("redis://", "rediss://", "unix://") + SCHEMES):
        return f"--redis {url!r}: use redis://host:6379/0, rediss://… or {EXAMPLE}"
    try:
        parse_sentinel(url)
    except ValueError as e:
        return str(e)
    return None


def _server_kwargs(s: SentinelURL, kw: dict[str, Any]) -> dict[str, Any]:
    return dict(kw, db=s.db, username=s.username, password=s.password)


def client(url: str, **kw: Any) -> Any:
    """A redis-py client for ``url`` (``kw`` as for ``redis.Redis``)."""
    import redis

    s = parse_sentinel(url)
    if s is None:
        return redis.Redis.from_url(url, **kw)
    from redis.sentinel import Sentinel

    timeouts = {k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw}
    return Sentinel(list(s.sentinels), sentinel_kwargs=timeouts).master_for(s.service, **_server_kwargs(s, kw))


def async_client(url: str, **kw: Any) -> Any:
    """A ``redis.asyncio`` client for ``url``."""
    import redis.asyncio as aioredis

    s = parse_sentinel(url)
    if s is None:
        return aioredis.Redis.from_url(url, **kw)
    from redis.asyncio.sentinel import Sentinel

    return Sentinel(list(s.sentinels)).master_for(s.service, **_server_kwargs(s, kw))


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """The Celery broker URL for ``url`` and the transport options it needs."""
    s = parse_sentinel(url)
    if s is None:
        return url, {}
    auth = ""
    if s.password is not None:
        auth = f"{s.username or ''}:{s.password}@"
    broker = ";".join(f"sentinel://{auth}{h}:{p}/{s.db}" for h, p in s.sentinels)
    return broker, {"master_name": s.service}
