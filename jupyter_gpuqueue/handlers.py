"""REST handlers under ``<base_url>gpuqueue/api/``: the routes of ``gpuqueue.rest.handlers`` with
Jupyter's authentication.

The handler bodies are shared with the cluster's API service (``gpuqueue.rest.handlers``, tornado
only); :class:`JupyterAuth` is the one mixin that adds what Jupyter brings: every verb is
``@authenticated`` and ``@authorized`` (resource ``gpuqueue``), and the job owner is the
server-side Jupyter identity, never a field of the request body. A submission through this
server is announced on Jupyter's event bus (:data:`JOB_EVENT`, no job data in it) so that the
JupyterLab extension knows to look. The service is the embedded
``QueueService``, or in cluster mode ``jupyter_gpuqueue.remote.RemoteService``, which forwards
each verb to the API service, or ``jupyter_gpuqueue.queue_off.QueueOff`` when a setting cannot be
used (every verb a 503 that names the fix). Errors are JSON ``{"message": ...}`` with a 4xx status for user
mistakes; a 500 means a bug.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from gpuqueue.queue.errors import GPUQueueError
from gpuqueue.queue.verbs import Caller
from gpuqueue.rest import handlers as rest

log = logging.getLogger("gpuqueue.jupyter")  # the extension's own lines (app.py)

API = "/gpuqueue/api"
_VERBS = ("get", "post", "delete")


class JupyterAuth(APIHandler):
    """Mixed in before a ``rest`` handler: the caller is the Jupyter identity, errors are the
    REST layer's JSON, and bytes go out as bytes (APIHandler would label them JSON)."""

    auth_resource = "gpuqueue"

    def get_caller(self) -> Caller:
        """The authenticated Jupyter user, as the app names owners (and whether an admin)."""
        app = self.settings["gpuqueue_app"]
        name = app.owner_of(self.current_user)
        return Caller(name=name, admin=app.is_admin(name))

    def send_bytes(self, blob: bytes) -> None:
        """Opaque bytes (APIHandler.finish would set a JSON content type)."""
        self.finish(blob, set_content_type="application/octet-stream")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The REST layer's ``{"message": ...}`` (not Jupyter's error page or traceback); a
        request with no valid token gets how to send one, not tornado's bare "Forbidden"."""
        if status_code == 403 and not self._authenticated():
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": not_authenticated_message()}))
            return
        rest.RestHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    def _authenticated(self) -> bool:
        try:
            return self.current_user is not None
        except Exception:  # noqa: BLE001 - an identity provider that fails: not authenticated
            return False

    def _handle_request_exception(self, e: BaseException) -> None:  # tornado hook
        if isinstance(e, GPUQueueError):
            self.log.info("gpuqueue %s: %s", e.http_status, e)
        rest.RestHandler._handle_request_exception(self, e)  # type: ignore[arg-type]


NOT_AUTHENTICATED = (
    "not authenticated: the request carried no valid token of this Jupyter server. From a "
    "terminal, set GPUQUEUE_TOKEN to the server's token (`jupyter server list` prints it after "
    "?token=; a JupyterLab terminal has it set already); in a browser, log in to JupyterLab again"
)
"""What a request to the API without a valid token is told (403, as Jupyter answers it)."""


def not_authenticated_message() -> str:
    """:data:`NOT_AUTHENTICATED`, or in a JupyterHub user server (the hub sets ``JUPYTERHUB_USER``)
    whose server it is: there a token of another hub user is refused too, and the fix is the
    caller's own server, not ``jupyter server list``."""
    import os

    owner = os.environ.get("JUPYTERHUB_USER")
    if not owner:
        return NOT_AUTHENTICATED
    prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/") or "/"
    return (f"not authenticated: this is hub user {owner!r}'s server, and the request carried no token that "
            f"may use it. Use your own server ({prefix}hub/home); in its terminals and kernels, "
            f"JUPYTERHUB_API_TOKEN is set already; in a browser, log in to the hub again")

JOB_EVENT = "https://github.com/jupyter-gpuqueue/events/job-submitted/v1"
"""Emitted on Jupyter's event bus (``/api/events/subscribe``) when a job is queued through this
server: only ``{"action": "submitted"}``, since every event socket of the server receives it; the
frontend then asks the REST API, which shows each user only their own jobs."""

JOB_EVENT_SCHEMA: dict[str, Any] = {
    "$id": JOB_EVENT,
    "version": "1",
    "title": "gpuqueue job submitted",
    "description": "A job was queued through this Jupyter server (the sidebar's watcher looks).",
    "type": "object",
    "required": ["action"],
    "properties": {"action": {"enum": ["submitted"], "description": "What happened."}},
}


class AnnouncingJobsHandler(rest.JobsHandler):
    """``rest.JobsHandler`` that announces a new job (201) on Jupyter's event bus."""

    async def post(self) -> None:
        await super().post()
        logger = self.settings.get("event_logger")
        if self.get_status() == 201 and logger is not None:
            try:
                logger.emit(schema_id=JOB_EVENT, data={"action": "submitted"})
            except Exception:  # noqa: BLE001 - a missing announcement must not fail the submit
                log.warning("cannot announce the new job on Jupyter's event bus", exc_info=True)


def register_job_event(event_logger: Any) -> None:
    """Register :data:`JOB_EVENT_SCHEMA` with the server's event logger (if it has one)."""
    if event_logger is not None:
        event_logger.register_event_schema(JOB_EVENT_SCHEMA)


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    return web.authenticated(authorized(method))


def with_jupyter_auth(cls: type[rest.RestHandler], name: str = "") -> type:
    """``cls`` with :class:`JupyterAuth` first and each of its verbs authenticated+authorized,
    named ``name`` (default: as ``cls``; the name is the ``handler`` label of the API metrics)."""
    verbs = {v: _guarded(getattr(cls, v)) for v in _VERBS  # its own or inherited (not tornado's 405)
             if getattr(cls, v) is not getattr(web.RequestHandler, v)}
    return type(name or cls.__name__, (JupyterAuth, cls), {"__doc__": cls.__doc__, "__module__": __name__, **verbs})


def handlers() -> list[tuple[str, type]]:
    """The routes, relative to the server's base URL."""
    routes: list[tuple[str, type]] = []
    try:  # Prometheus metrics of the embedded queue (see docs/metrics.md)
        from .metrics_handler import MetricsHandler

        routes.append(("/gpuqueue/metrics", MetricsHandler))
    except ImportError:
        pass
    own: dict[type, type] = {rest.JobsHandler: AnnouncingJobsHandler}  # named as the REST one
    return routes + [(path, with_jupyter_auth(own.get(h, h), h.__name__)) for path, h in rest.routes(API)]
