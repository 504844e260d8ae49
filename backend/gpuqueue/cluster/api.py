"""``gpuqueue api --redis URL --port P --users FILE``: the cluster's HTTP API service.

The same REST API as the Jupyter server extension (``gpuqueue.rest.handlers``), stateless (run several
behind a load balancer, or on one port with ``--processes``). It authenticates each request
with a token from the users file (``Authorization: token T``), stamps the job owner from it, and
is the only producer of submissions and cancels. As a JupyterHub service (``--auth hub``, the
default when the hub starts it), the hub authenticates each request instead and no users file
is read (``gpuqueue.cluster.hub``); the routes are then under the service's prefix
(``/services/gpuqueue/gpuqueue/api/...``).

Users file (TOML)::

    [[user]]
    name = "alice"
    token = "a-long-random-string"
    admin = false
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hmac
import logging
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import redis
from tornado import httpserver, netutil, web

from . import cliargs, redis_url
from ..rest import handlers as rest
from ..queue.config import read_toml
from ..queue.errors import BadRequest, NotFound, Unauthenticated, Unavailable
from ..queue.verbs import Caller
from .frontend import ClusterFrontend
from .reads import MAX_FOLLOWS_PER_USER, MAX_READS_PER_USER, READ_THREADS, ReadGate
from .redis_store import RedisStore

log = logging.getLogger("gpuqueue.api")
SWITCH_INTERVAL_S = 0.001  # sys.setswitchinterval of the API processes (cli_main)
RECENT_S = 1.0  # a users file changed this recently is read again at the next check (UsersFile._stat)


@dataclass(frozen=True)
class User:
    """One entry of the users file."""

    name: str
    token: str
    admin: bool = False


def load_users(path: str | Path) -> dict[str, User]:
    """token -> User. Raises BadRequest naming the file, the entry and the fix."""
    p = Path(path)
    try:
        doc = read_toml(p, "users file")
    except UnicodeDecodeError as bad:
        raise BadRequest(f"users file {p} is not UTF-8 text ({bad.reason} at byte {bad.start}): save it as UTF-8") from None
    entries = doc.get("user")
    if not isinstance(entries, list) or not entries:
        raise BadRequest(f"users file {p}: add one [[user]] table per user, with name, token and admin")
    other = sorted(set(doc) - {"user"})
    if other:
        raise BadRequest(f"users file {p}: unknown {', '.join(map(repr, other))}: the file holds only "
                         f"[[user]] tables, with name, token and admin")
    out: dict[str, User] = {}
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            raise BadRequest(f"users file {p}: user #{i} is {type(e).__name__} {e!r:.40}, not a table: write each "
                             f"user as a [[user]] table, with name, token and admin")
        name, token, admin = e.get("name"), e.get("token"), e.get("admin", False)
        if not isinstance(name, str) or not name:
            raise BadRequest(f"users file {p}: user #{i} needs a name")
        unknown = sorted(set(e) - {"name", "token", "admin"})
        if unknown:  # e.g. a misspelt admin: that user would not be an admin
            raise BadRequest(f"users file {p}: user {name!r}: unknown {', '.join(map(repr, unknown))}: "
                             f"a [[user]] has name, token and admin")
        if not isinstance(token, str) or len(token) < 8:
            raise BadRequest(f"users file {p}: user {name!r} needs a token of 8 characters or more")
        if not isinstance(admin, bool):
            raise BadRequest(f"users file {p}: user {name!r}: admin must be true or false")
        if token in out:
            raise BadRequest(f"users file {p}: users {out[token].name!r} and {name!r} share a token")
        out[token] = User(name, token, admin)
    return out


class UsersFile:
    """The users file as the API serves it: re-read when it changes (checked at most every
    ``check_s`` seconds, by its inode, ctime, mtime and size: :meth:`_stat`), so that an admin who adds a user or changes a
    token needs no restart. A change it cannot read keeps the users it had, logged once."""

    def __init__(self, path: str | Path, check_s: float = 2.0):
        self.path = Path(path)
        self.check_s = check_s
        self._stamp = self._stat()  # before the read: a change during it is read again
        self.users = load_users(self.path)
        self._failed = ""  # the last problem logged
        self._checked = time.monotonic()

    def _stat(self) -> Optional[tuple[int, ...]]:
        """What tells a changed file: its inode (a file put in its place, e.g. by rsync, cp -p or a
        deploy tool, which keep the old mtime), its ctime (any write or rename; no user sets it),
        mtime and size. None for a file changed in the last second: a write in the same clock
        tick as the read could change neither, so it is read again at the next check."""
        try:
            st = self.path.stat()
        except OSError:
            return (0, -1)
        if time.time() - st.st_ctime < RECENT_S:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)

    def current(self) -> dict[str, User]:
        """token -> User, as the file says now (or as it last said in a form the API could read)."""
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return self.users
        self._checked = now
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp:
            return self.users
        self._stamp = stamp
        before = self.users
        try:
            self.users = load_users(self.path)
        except (BadRequest, OSError) as e:
            if str(e) == self._failed:
                return self.users  # said once
            self._failed = str(e)
            log.error("%s; the API goes on with the %d users it had: fix the file (it is read again "
                      "when it changes)", e, len(self.users))
            return self.users
        if not self._failed and self.users == before:
            return self.users  # read again with nothing new (a recent change, a touch): nothing to say
        self._failed = ""
        log.info("users file %s read again: %d users", self.path, len(self.users))
        return self.users


class AuthMixin:
    """Token authentication against the users file: ``Authorization: token T`` (or
    ``Bearer T``, or ``?token=T``); any other scheme is refused."""

    def prepare(self) -> None:
        users: dict[str, User] | UsersFile = self.settings["gpuqueue_users"]  # type: ignore[attr-defined]
        if isinstance(users, UsersFile):
            users = users.current()
        h = self.request.headers.get("Authorization")  # type: ignore[attr-defined]
        if h is None:
            token = self.get_argument("token", "")  # type: ignore[attr-defined]
        else:
            scheme, _, token = h.strip().partition(" ")
            if scheme.lower() not in ("token", "bearer"):
                raise Unauthenticated("the Authorization header must be `token <TOKEN>` or `Bearer <TOKEN>`")
        user = _match(users, token.strip())
        if user is None:
            raise Unauthenticated("a valid token is needed: set GPUQUEUE_TOKEN to yours (ask your admin)")
        self._gq_user = user

    def get_caller(self) -> Caller:
        u: User = self._gq_user
        return Caller(name=u.name, admin=u.admin)


class StoreErrorsMixin:
    """A request that Redis failed answers what ``redis_failure`` says (503 naming the cause),
    whichever authentication (users file or hub) the service uses."""

    def _handle_request_exception(self, e: BaseException) -> None:  # tornado hook
        if isinstance(e, redis.RedisError):
            e = redis_failure(e) or e  # anything else: a 500, its details in this log only
        super()._handle_request_exception(e)  # type: ignore[misc]


def redis_failure(e: redis.RedisError) -> Optional[Unavailable]:
    """What a user is told when Redis fails a request: 503 with the cause where Redis is down,
    refuses us or cannot write; None for anything else (a bug: 500)."""
    E = redis.exceptions
    nothing = "nothing was changed"
    if isinstance(e, (E.AuthenticationError, E.AuthorizationError, E.AuthenticationWrongNumberOfArgsError,
                      E.NoPermissionError)):
        log.error("redis refused the API service's credentials: %s", e)
        return Unavailable(f"the queue's store (Redis) refused the API service's credentials ({e}); "
                           f"{nothing}: the admin must check the Redis password and ACL")
    if isinstance(e, E.ReadOnlyError):
        log.warning("redis is read-only: %s", e)
        return Unavailable(f"the queue's store (Redis) is a read-only replica right now (a failover may be "
                           f"under way); {nothing}: try again in a moment")
    if isinstance(e, E.OutOfMemoryError):
        log.error("redis is out of memory: %s", e)
        return Unavailable(f"the queue's store (Redis) is out of memory (maxmemory); {nothing}: "
                           f"the admin must free memory or raise the limit")
    if isinstance(e, E.BusyLoadingError):
        return Unavailable(f"the queue's store (Redis) is loading its data after a restart; {nothing}: "
                           f"try again in a moment")
    if isinstance(e, (E.ConnectionError, E.TimeoutError)):
        log.warning("redis unreachable: %s", e)
        return Unavailable(f"the queue's store (Redis) cannot be reached right now; {nothing}: "
                           f"try again in a moment")
    return None


def _match(users: dict[str, User], token: str) -> Optional[User]:
    if not token:
        return None
    user = users.get(token)
    # compare in constant time so a token cannot be guessed byte by byte
    if user is not None and hmac.compare_digest(user.token, token):
        return user
    return None


class HealthHandler(web.RequestHandler):
    """``GET /healthz``: 200 when Redis answers."""

    def get(self) -> None:
        try:
            self.settings["gpuqueue_service"].store.r.ping()
        except Exception as e:  # noqa: BLE001
            self.set_status(503)
            self.finish({"ok": False, "message": f"redis unavailable: {e}"})
            return
        self.finish({"ok": True})


class NoRouteHandler(rest.RestHandler):
    """Any other path: 404 in JSON, as every API error is."""

    def prepare(self) -> None:
        prefix = self.settings.get("gpuqueue_prefix", "/")
        where = f"the API is under {prefix}gpuqueue/api/ (docs/openapi.yaml)"
        if prefix != "/":  # a hub service: a user server's GPUQUEUE_API_URL must hold the prefix
            where += (f"; as the hub's service its prefix is {prefix} (with the hub's base_url): a user server's "
                      f"GPUQUEUE_API_URL is this service's URL + {prefix} (docs/deploy.md, JupyterHub)")
        elif "/services/" in self.request.path:  # the hub's proxy sends its service's requests here
            where += ("; this `gpuqueue api` reads a users file: it is not the JupyterHub service, whose own "
                      "`gpuqueue api` the hub could not start on this port while this one holds it: stop this one "
                      "(on the hub's host, `systemctl disable --now gpuqueue-api`; docs/deploy.md, JupyterHub)")
        raise NotFound(f"no API path {self.request.path!r}: {where}")


class MetricsHandler(web.RequestHandler):
    """``GET /metrics``: Prometheus metrics of the API service (request latency, process). With
    ``--processes N`` (``gpuqueue_metrics_dir`` set) those of all its processes, added up
    (``gpuqueue.observability.multiproc``); else those of this process."""

    def get(self) -> None:
        from ..observability import metrics, multiproc

        path = self.settings.get("gpuqueue_metrics_dir")
        accept = self.request.headers.get("Accept")
        if not path:
            body, ctype = metrics.render(self.settings["gpuqueue_metrics"].registry, accept)
        else:
            try:
                body, ctype = metrics.render(multiproc.scrape_registry(path), accept)
            except (OSError, ValueError, RuntimeError, struct.error) as e:  # removed under the service, or damaged
                log.error("cannot read the metrics directory %s: %s", path, e)
                self.set_status(503)
                self.finish({"message": f"the API's metrics directory {path} cannot be read ({e}): restart the "
                                        f"service (it empties the directory, or makes it again)"})
                return
        self.set_header("Content-Type", ctype)
        self.finish(body)


def make_app(store: RedisStore, users: dict[str, User] | UsersFile, hub_auth: Any = None, prefix: str = "/",
             admin_scope: str = "", cookie_secret: Optional[bytes] = None, metrics_dir: Optional[str] = None,
             **kw: Any) -> web.Application:
    """The tornado application (routes under ``<prefix>gpuqueue/api``, plus /healthz and
    /metrics). With ``hub_auth`` (a JupyterHub ``HubOAuth``) the hub authenticates requests
    (``gpuqueue.cluster.hub``) and ``users`` is not used; ``cookie_secret`` signs its login
    cookie (give every process of one service the same; default: a new random one).
    ``metrics_dir``: the multiprocess metrics directory (``multiproc.enable`` ran before the
    processes were forked), read by every scrape; None for one process."""
    from ..observability import metrics

    m = metrics.QueueMetrics(metrics.process_registry("api", nvml=False), mode="cluster")
    settings: dict[str, Any] = {}
    if hub_auth is not None:
        from . import hub

        from .hub_names import HubNames, ReleaseHandler

        mixin: type = hub.HubAuthMixin
        extra = hub.hub_routes(prefix)
        extra.append((hub.release_route(prefix), type("ReleaseHandler", (mixin, StoreErrorsMixin, ReleaseHandler), {})))
        names = HubNames(store, hub_auth, hub_auth.cache_max_age)
        settings = {"gpuqueue_hub_auth": hub_auth, "hub_auth": hub_auth, "gpuqueue_prefix": prefix,
                    "gpuqueue_hub_names": names,
                    "gpuqueue_admin_scope": admin_scope or hub.ADMIN_SCOPE,
                    "cookie_secret": cookie_secret or os.urandom(32)}
    else:
        mixin, extra = AuthMixin, []
    base = prefix.rstrip("/")
    routes: list[Any] = [(path, type(h.__name__, (mixin, StoreErrorsMixin, h), {}))
                         for path, h in rest.routes(base + "/gpuqueue/api")]
    routes += extra + [("/healthz", HealthHandler), ("/metrics", MetricsHandler)]
    if base:
        routes += [(base + "/healthz", HealthHandler), (base + "/metrics", MetricsHandler)]
    settings.setdefault("gpuqueue_prefix", prefix)
    return web.Application(routes, default_handler_class=NoRouteHandler,
                           gpuqueue_service=ClusterFrontend(store, **kw), gpuqueue_users=users,
                           gpuqueue_metrics=m, gpuqueue_metrics_dir=metrics_dir,
                           log_function=metrics.tornado_log_function(m, _quiet_log), **settings)


def _count_users(users: dict[str, User] | UsersFile, path: str) -> str:
    n = len(users.users if isinstance(users, UsersFile) else users)
    return f"{n} user{'s' if n != 1 else ''} in {path}"


def _quiet_log(handler: web.RequestHandler) -> None:
    if handler.get_status() >= 500:
        log.error("%s %s %s", handler.get_status(), handler.request.method, rest.scrub_uri(handler.request.uri or ""))


def build_parser() -> argparse.ArgumentParser:
    """``gpuqueue api`` options."""
    p = argparse.ArgumentParser(prog="gpuqueue api", description="Run the cluster's REST API service.")
    redis_url.add_arguments(p)
    p.add_argument("--port", type=cliargs.PORT, default=None,
                   help="port (default: that of the hub's JUPYTERHUB_SERVICE_URL as a hub service, else 8780)")
    p.add_argument("--address", default=None,
                   help="address to listen on (default: the host of the hub's JUPYTERHUB_SERVICE_URL as a hub "
                        "service, else 127.0.0.1)")
    p.add_argument("--users", required=False, help="users TOML file: [[user]] name, token, admin")
    p.add_argument("--auth", choices=("auto", "hub", "users"), default="auto",
                   help="who authenticates requests: 'hub' (JupyterHub, as a hub service), 'users' "
                        "(--users FILE), 'auto' (hub when started by a hub, else the users file)")
    p.add_argument("--admin-scope", default="",
                   help="with --auth hub: the hub scope that makes a user a gpuqueue admin "
                        "(default custom:gpuqueue:admin)")
    p.add_argument("--hub-cache-s", type=cliargs.number(int, 0), default=60,
                   help="with --auth hub: seconds the hub's answer for a token is reused (default 60)")
    p.add_argument("--processes", type=cliargs.COUNT, default=1, help="processes sharing the port (default 1)")
    p.add_argument("--metrics-dir", default=None,
                   help="with --processes 2 or more: a directory private to the API's user where the processes "
                        "keep their metrics for /metrics to add up; emptied at each start (default: "
                        "$PROMETHEUS_MULTIPROC_DIR, else gpuqueue-api-UID-PORT-metrics in the temporary folder, "
                        "removed when the API stops on SIGTERM or SIGINT)")
    p.add_argument("--max-payload-mb", type=cliargs.number(float, 0, low_open=True), default=64.0, help="largest cell payload, MB (default 64)")
    p.add_argument("--max-reads-per-user", type=cliargs.COUNT, default=MAX_READS_PER_USER,
                   help="reads (job lists, jobs, pages of events, results, the queue summary) one user may have in "
                        "flight at once in one API process; past it a read is answered 429 with Retry-After "
                        f"(default {MAX_READS_PER_USER})")
    p.add_argument("--read-threads", type=cliargs.COUNT, default=READ_THREADS,
                   help=f"threads of one API process that read the store, for all users (default {READ_THREADS})")
    p.add_argument("--max-follows-per-user", type=cliargs.COUNT, default=MAX_FOLLOWS_PER_USER,
                   help="live event streams (`gpuqueue logs -f`, notebook cells) one API process serves one user "
                        f"at once; past it a follow is answered 429 (default {MAX_FOLLOWS_PER_USER})")
    p.add_argument("--prefix", default="gq")
    p.add_argument("--log-level", default="INFO",
                   help="log level (default INFO: the address it serves, Redis trouble, 5xx answers; requests "
                        "are not logged); the format is JSON unless on a terminal ($GPUQUEUE_LOG_FORMAT)")
    return p


def cli_main(argv: list[str]) -> int:
    """Entry point of ``gpuqueue api``."""
    args = build_parser().parse_args(argv)
    from .envcheck import start_process

    if not start_process("api", log, args.log_level, component="api"):
        return 2
    try:
        url = redis_url.from_args(args)
    except ValueError as e:
        print(f"gpuqueue api: {e}", file=sys.stderr)
        return 2
    from . import hub

    use_hub = args.auth == "hub" or (args.auth == "auto" and not args.users and hub.in_hub())
    users: dict[str, User] | UsersFile = {}
    hub_auth, prefix = None, "/"
    if use_hub:
        try:
            hub_auth = hub.make_hub_auth(args.hub_cache_s)
        except ValueError as e:
            print(f"gpuqueue api: {e}", file=sys.stderr)
            return 2
        prefix = hub.service_prefix()
    elif not args.users:
        print("gpuqueue api: --users FILE is required (TOML: [[user]] name, token, admin), "
              "or run it as a JupyterHub service (--auth hub)", file=sys.stderr)
        return 2
    else:
        try:
            users = UsersFile(args.users)
        except BadRequest as e:
            print(f"gpuqueue api: {e}", file=sys.stderr)
            return 2
        mode = os.stat(args.users).st_mode & 0o777
        if mode & 0o077:  # a warning, not a refusal: files made with the default umask worked so far
            log.warning("users file %s is mode %03o: other users of this host may read every user's token; "
                        "chmod 600 %s (owned by the user the API runs as)", args.users, mode, args.users)
    port = args.port or (hub.service_port() if use_hub else None) or 8780
    args.address = args.address or (hub.service_host() if use_hub else None) or "127.0.0.1"
    try:
        sockets = netutil.bind_sockets(port, args.address)
    except OSError as e:
        fix = ("stop what holds that port or choose another (--port; as a hub service, the port of the service's "
               "url)") if e.errno == errno.EADDRINUSE else ("listen on an address of this host (--address; as a hub "
                                                             "service, the host of the service's url)")
        print(f"gpuqueue api: cannot listen on {args.address}:{port} ({e.strerror}): {fix}", file=sys.stderr)
        return 1
    cookie_secret = os.urandom(32)  # the hub login cookie: one secret for every process forked below
    metrics_dir: Optional[str] = None
    if args.processes > 1:  # one /metrics for all processes: set up before any metric exists, then fork
        from ..observability import multiproc

        named = args.metrics_dir or multiproc.enabled()  # the admin's: kept; the default: removed at a clean stop
        try:
            metrics_dir = str(multiproc.prepare_dir(named or multiproc.default_dir("api", port)))
        except multiproc.MetricsDirError as e:
            print(f"gpuqueue api: {e}", file=sys.stderr)
            return 2
        multiproc.enable(metrics_dir)
        multiproc.fork(args.processes, remove=None if named else metrics_dir)
        from .forkserver import die_with_parent

        die_with_parent()  # a child must not outlive the parent systemd (or a test) stops
    # the read threads (cluster/reads.py) parse and write out pages of events, holding the GIL: the
    # event loop that serves every user takes it back after 1 ms of theirs, not Python's 5 ms
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    store = RedisStore(url, args.prefix)
    try:
        store.r.ping()
    except redis.RedisError as e:  # it may come up later: serve, and answer 503 naming it until then
        log.error("redis at %s cannot be used (%s): every request answers 503 until it can; check "
                  "$GPUQUEUE_REDIS_URL or the --redis-file (redis://gpuqueue-api:PASSWORD@host:6379/0 with "
                  "deploy/redis/users.acl)", redis_url.mask(url), redis_url.mask(str(e)))
    app = make_app(store, users, hub_auth=hub_auth, prefix=prefix, admin_scope=args.admin_scope,
                   cookie_secret=cookie_secret, metrics_dir=metrics_dir,
                   max_payload_bytes=int(args.max_payload_mb * 1e6),
                   reads=ReadGate(args.max_reads_per_user, args.read_threads, args.max_follows_per_user))

    async def serve() -> None:
        # room for the largest payload as base64 in JSON, plus the spec
        server = httpserver.HTTPServer(app, xheaders=True, max_body_size=int(args.max_payload_mb * 1e6 * 4 / 3) + 2**24)
        server.add_sockets(sockets)
        names = app.settings.get("gpuqueue_hub_names")
        if names is not None:  # its one warning, if any, at start (hub_names.py)
            app.settings["gpuqueue_hub_probe"] = asyncio.create_task(names.probe_at_start())  # held while serving
        log.info("gpuqueue api on %s:%s%s (%s)", args.address, port, prefix,
                 "JupyterHub auth" if use_hub else _count_users(users, args.users))
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
