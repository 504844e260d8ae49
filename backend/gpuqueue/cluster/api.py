"""``gpuqueue api --redis URL --port P --users FILE``: the cluster's HTTP API service.

The same REST API as the Jupyter server extension (``gpuqueue.rest``), stateless (run several
behind a load balancer, or on one port with ``--processes``). It authenticates each request
with a token from the users file (``Authorization: token T``), stamps the job owner from it, and
is the only producer of submissions and cancels.

Users file (TOML)::

    [[user]]
    name = "alice"
    token = "a-long-random-string"
    admin = false
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import redis
from tornado import httpserver, netutil, process, web

from . import redis_url
from .. import rest
from ..config import read_toml
from ..errors import BadRequest, Unavailable
from ..service import Caller
from .frontend import ClusterFrontend
from .redis_store import RedisStore

log = logging.getLogger("gpuqueue.api")


@dataclass(frozen=True)
class User:
    """One entry of the users file."""

    name: str
    token: str
    admin: bool = False


def load_users(path: str | Path) -> dict[str, User]:
    """token -> User. Raises BadRequest naming the file, the entry and the fix."""
    p = Path(path)
    entries = read_toml(p, "users file").get("user")
    if not isinstance(entries, list) or not entries:
        raise BadRequest(f"users file {p}: add one [[user]] table per user, with name, token and admin")
    out: dict[str, User] = {}
    for i, e in enumerate(entries, 1):
        name, token, admin = e.get("name"), e.get("token"), e.get("admin", False)
        if not isinstance(name, str) or not name:
            raise BadRequest(f"users file {p}: user #{i} needs a name")
        if not isinstance(token, str) or len(token) < 8:
            raise BadRequest(f"users file {p}: user {name!r} needs a token of 8 characters or more")
        if not isinstance(admin, bool):
            raise BadRequest(f"users file {p}: user {name!r}: admin must be true or false")
        if token in out:
            raise BadRequest(f"users file {p}: users {out[token].name!r} and {name!r} share a token")
        out[token] = User(name, token, admin)
    return out


class AuthMixin:
    """Token authentication against the users file: ``Authorization: token T`` (or
    ``Bearer T``, or ``?token=T``)."""

    def prepare(self) -> None:
        users: dict[str, User] = self.settings["gpuqueue_users"]  # type: ignore[attr-defined]
        h = self.request.headers.get("Authorization", "")  # type: ignore[attr-defined]
        token = h.split(None, 1)[1].strip() if " " in h else self.get_argument("token", "")  # type: ignore[attr-defined]
        user = _match(users, token)
        if user is None:
            raise web.HTTPError(401, reason="a valid token is needed: set GPUQUEUE_TOKEN to yours (ask your admin)")
        self._gq_user = user

    def get_caller(self) -> Caller:
        u: User = self._gq_user
        return Caller(name=u.name, admin=u.admin)

    def _handle_request_exception(self, e: BaseException) -> None:  # tornado hook
        if isinstance(e, redis.RedisError):
            log.warning("redis unavailable: %s", e)
            e = Unavailable("the queue's store (Redis) is unavailable right now; nothing was changed: try again in a moment")
        super()._handle_request_exception(e)  # type: ignore[misc]


def _match(users: dict[str, User], token: str) -> Optional[User]:
    if not token:
        return None
    user = users.get(token)
    # compare in constant time so a token cannot be guessed byte by byte
    if user is not None and hmac.compare_digest(user.token, token):
        return user
    return None


def _authed(cls: type) -> type:
    return type(cls.__name__, (AuthMixin, cls), {})


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


class MetricsHandler(web.RequestHandler):
    """``GET /metrics``: Prometheus metrics of this API process (request latency, process)."""

    def get(self) -> None:
        from .. import metrics

        body, ctype = metrics.render(self.settings["gpuqueue_metrics"].registry, self.request.headers.get("Accept"))
        self.set_header("Content-Type", ctype)
        self.finish(body)


def make_app(store: RedisStore, users: dict[str, User], **kw: Any) -> web.Application:
    """The tornado application (routes under ``/gpuqueue/api``, plus /healthz and /metrics)."""
    from .. import metrics

    m = metrics.QueueMetrics(metrics.process_registry("api", nvml=False), mode="cluster")
    routes: list[Any] = [(path, _authed(h)) for path, h in rest.routes()]
    routes += [("/healthz", HealthHandler), ("/metrics", MetricsHandler)]
    return web.Application(routes, gpuqueue_service=ClusterFrontend(store, **kw), gpuqueue_users=users,
                           gpuqueue_metrics=m, log_function=metrics.tornado_log_function(m, _quiet_log))


def _quiet_log(handler: web.RequestHandler) -> None:
    if handler.get_status() >= 500:
        log.error("%s %s %s", handler.get_status(), handler.request.method, handler.request.uri)


def build_parser() -> argparse.ArgumentParser:
    """``gpuqueue api`` options."""
    p = argparse.ArgumentParser(prog="gpuqueue api", description="Run the cluster's REST API service.")
    redis_url.add_arguments(p)
    p.add_argument("--port", type=int, default=8780)
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--users", required=False, help="users TOML file: [[user]] name, token, admin")
    p.add_argument("--processes", type=int, default=1, help="processes sharing the port (default 1)")
    p.add_argument("--max-payload-mb", type=float, default=64.0, help="largest cell payload, MB (default 64)")
    p.add_argument("--prefix", default="gq")
    p.add_argument("--log-level", default="WARNING")
    return p


def cli_main(argv: list[str]) -> int:
    """Entry point of ``gpuqueue api``."""
    args = build_parser().parse_args(argv)
    from ..logs import setup_logging

    setup_logging(level=args.log_level.upper(), component="api")
    try:
        url = redis_url.from_args(args)
    except ValueError as e:
        print(f"gpuqueue api: {e}", file=sys.stderr)
        return 2
    if not args.users:
        print("gpuqueue api: --users FILE is required (TOML: [[user]] name, token, admin)", file=sys.stderr)
        return 2
    try:
        users = load_users(args.users)
    except BadRequest as e:
        print(f"gpuqueue api: {e}", file=sys.stderr)
        return 2
    sockets = netutil.bind_sockets(args.port, args.address)
    if args.processes > 1:
        process.fork_processes(args.processes)
        from .forkserver import die_with_parent

        die_with_parent()  # a child must not outlive the parent systemd (or a test) stops
    store = RedisStore(url, args.prefix)
    app = make_app(store, users, max_payload_bytes=int(args.max_payload_mb * 1e6))

    async def serve() -> None:
        server = httpserver.HTTPServer(app, xheaders=True)
        server.add_sockets(sockets)
        log.info("gpuqueue api on %s:%s (%d users)", args.address, args.port, len(users))
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
