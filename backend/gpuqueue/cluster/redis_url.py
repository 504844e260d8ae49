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

import os
import re
import stat
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


# user:password@ in any URL (the user part may be empty); the password is what gets masked
_AUTH = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^\s/]*)@", re.I)
_QUERY_PW = re.compile(r"(?P<key>[?&;](?:password|pass|pwd)=)[^&#\s]*", re.I)
MASK = "***"


def mask(text: str) -> str:
    """``text`` with the password of every URL in it masked, for logs and messages:
    ``redis://:s3cret@h:6379/0`` -> ``redis://:***@h:6379/0``. Use it wherever a URL, or an error
    that may quote one, is shown."""
    text = _AUTH.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", str(text))
    return _QUERY_PW.sub(lambda m: m["key"] + MASK, text)


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (in its authority or its query)."""
    return mask(url) != url


def check(url: str) -> Optional[str]:
    """None if ``url`` is a Redis or Sentinel URL the cluster can use, else what to fix
    (the URL quoted with its password masked)."""
    if url.startswith("rediss+sentinel://"):
        return "TLS through Sentinel is not supported yet: use redis+sentinel:// on a trusted network, or rediss:// to a TLS proxy that follows the primary"
    if not url.startswith(("redis://", "rediss://", "unix://") + SCHEMES):
        return f"the Redis URL {mask(url)!r}: use redis://host:6379/0, rediss://… or {EXAMPLE}"
    try:
        parse_sentinel(url)
    except ValueError as e:
        return mask(str(e))
    return None


ENV = "GPUQUEUE_REDIS_URL"
CLI_HELP = (f"redis://host:6379/0 or redis+sentinel://host:26379[,host:port...]/SERVICE[/DB]; a URL with a "
            f"password goes in ${ENV} or --redis-file, never on the command line")
FILE_HELP = f"a file (mode 600) holding the Redis URL, password included (instead of ${ENV})"


def wrong_user(client: Any, url: str, role: str, keys: list[str]) -> Optional[str]:
    """Why the Redis user of ``url`` cannot do ``role``'s work (``scheduler``, ``worker``: e.g.
    the API's user of deploy/redis/users.acl, which may not touch ``keys``), else None; None too
    where Redis cannot be asked now (the process waits for it, and says so)."""
    import redis

    try:
        client.exists(*keys)
    except redis.exceptions.NoPermissionError as e:
        return (f"Redis refuses the user of {mask(url)} the {role}'s keys ({e}): give the {role} its own "
                f"user, gpuqueue-{role} in deploy/redis/users.acl (redis://gpuqueue-{role}:PASSWORD@host:6379/0)")
    except redis.RedisError:
        pass
    return None


def add_arguments(parser: Any) -> None:
    """The ``--redis`` / ``--redis-file`` options every cluster process takes."""
    parser.add_argument("--redis", default=None, help=CLI_HELP)
    parser.add_argument("--redis-file", default=None, metavar="PATH", help=FILE_HELP)


def from_args(args: Any, environ: Optional[dict[str, str]] = None) -> str:
    """The store URL of a cluster process: ``--redis`` (refused if it holds a password: every
    user can read a process's command line in ``/proc``), else ``--redis-file``, else
    ``$GPUQUEUE_REDIS_URL``. Raises ValueError with the fix; its message never holds a password."""
    env = os.environ if environ is None else environ
    if args.redis and args.redis_file:
        raise ValueError("give --redis or --redis-file, not both")
    if args.redis:
        if has_password(args.redis):
            raise ValueError(f"--redis {mask(args.redis)!r} holds a password, and every user of this machine can read "
                             f"a command line (/proc/PID/cmdline): put the URL in ${ENV} (e.g. a systemd EnvironmentFile "
                             f"of mode 600) or in a file of mode 600 named by --redis-file")
        url = args.redis
    elif args.redis_file:
        url = read_url_file(args.redis_file)
    else:
        url = env.get(ENV, "")
    if not url:
        raise ValueError(f"--redis URL is required: set ${ENV} (a URL with a password goes there or in "
                         f"--redis-file PATH), or --redis redis://127.0.0.1:6379/0")
    bad = check(url)
    if bad:
        raise ValueError(bad)
    return url


def read_url_file(path: str) -> str:
    """The URL in ``path`` (first non-empty, non-comment line; ``GPUQUEUE_REDIS_URL=`` may prefix
    it, so a systemd EnvironmentFile works too). Refused if others may read the file."""
    try:
        st = os.stat(path)
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"--redis-file {path}: {e.strerror or e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"--redis-file {path} is mode {stat.S_IMODE(st.st_mode):03o}: others may read the "
                         f"password in it; chmod 600 {path}")
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            if line.startswith(ENV + "="):
                line = line[len(ENV) + 1:].strip().strip("'\"")
            return line
    raise ValueError(f"--redis-file {path} holds no URL (one line: redis://[user]:PASSWORD@host:6379/0)")


def _server_kwargs(s: SentinelURL, kw: dict[str, Any]) -> dict[str, Any]:
    return dict(kw, db=s.db, username=s.username, password=s.password)


def client(url: str, **kw: Any) -> Any:
    """A redis-py client for ``url`` (``kw`` as for ``redis.Redis``)."""
    import redis

    s = parse_sentinel(url)
    if s is None:
        return redis.Redis.from_url(url, **kw)
    from redis.sentinel import Sentinel

    timeouts: dict[str, Any] = {k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw}
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
