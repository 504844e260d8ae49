"""REST handlers under ``<base_url>gpuqueue/api/``: a few lines each, delegating to the service.

The handler bodies are shared with the cluster's API service (``gpuqueue.rest.handlers``, tornado only);
these subclasses add what Jupyter brings: every handler is ``@authenticated`` and
``@authorized``, and the job owner is the server-side Jupyter identity, never a field of the
request body. The service is the embedded ``QueueService``, or in cluster mode
``jupyter_gpuqueue.remote.RemoteService``, which forwards each verb to the API service. Errors
are JSON ``{"message": ...}`` with a 4xx status for user mistakes; a 500 means a bug.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from gpuqueue.rest import handlers as rest
from gpuqueue.embedded.service import Caller

JOB = rest.JOB


class BaseHandler(APIHandler):
    """Shared plumbing: the service, the caller (Jupyter identity), JSON errors."""

    auth_resource = "gpuqueue"

    @property
    def service(self) -> Any:
        return self.settings["gpuqueue_service"]

    def get_caller(self) -> Caller:
        app = self.settings["gpuqueue_app"]
        name = app.owner_of(self.current_user)
        return Caller(name=name, admin=app.is_admin(name))

    @property
    def caller(self) -> Caller:
        return self.get_caller()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        rest.RestHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    def _handle_request_exception(self, e: BaseException) -> None:  # tornado hook
        from gpuqueue.queue.errors import GPUQueueError

        if isinstance(e, GPUQueueError):
            self.log.info("gpuqueue %s: %s", e.http_status, e)
        rest.RestHandler._handle_request_exception(self, e)  # type: ignore[arg-type]


class JobsHandler(BaseHandler, rest.JobsHandler):
    """``GET`` lists jobs (``?all=1`` for admins), ``POST`` submits one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await rest.JobsHandler.get(self)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await rest.JobsHandler.post(self)


class JobHandler(BaseHandler, rest.JobHandler):
    """``GET`` one job in full (attempts, pending reason, error)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        await rest.JobHandler.get(self, job_id)


class CancelHandler(BaseHandler, rest.CancelHandler):
    """``POST`` cancels a job."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        await rest.CancelHandler.post(self, job_id)


class PreemptHandler(BaseHandler, rest.PreemptHandler):
    """``POST`` preempts a running job (admins)."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        await rest.PreemptHandler.post(self, job_id)


class ResultHandler(BaseHandler, rest.ResultHandler):
    """``GET`` the pickled results of a succeeded cell job (opaque bytes for the kernel)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        blob = await rest.maybe_await(self.service.result(self.caller, self.job_id(job_id)))
        self.finish(blob, set_content_type="application/octet-stream")  # APIHandler would say JSON


class EventsHandler(BaseHandler, rest.EventsHandler):
    """``GET`` a job's events after ``?after=N``: JSON, or a live SSE stream with ``?follow=1``
    (or ``Accept: text/event-stream``). SSE ids are seqs, so ``Last-Event-ID`` resumes."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        await rest.EventsHandler.get(self, job_id)


class QueueHandler(BaseHandler, rest.QueueHandler):
    """``GET`` the queue summary: pools, GPUs used/free, the caller's jobs."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await rest.QueueHandler.get(self)


def handlers() -> list[tuple[str, type]]:
    """The routes, relative to the server's base URL."""
    api = "/gpuqueue/api"
    routes: list[tuple[str, type]] = []
    try:  # Prometheus metrics of the embedded queue (see docs/metrics.md)
        from .metrics_handler import MetricsHandler

        routes.append(("/gpuqueue/metrics", MetricsHandler))
    except ImportError:
        pass
    return routes + [
        (url_path_join(api, "jobs"), JobsHandler),
        (url_path_join(api, "jobs", JOB), JobHandler),
        (url_path_join(api, "jobs", JOB, "cancel"), CancelHandler),
        (url_path_join(api, "jobs", JOB, "preempt"), PreemptHandler),
        (url_path_join(api, "jobs", JOB, "result"), ResultHandler),
        (url_path_join(api, "jobs", JOB, "events"), EventsHandler),
        (url_path_join(api, "queue"), QueueHandler),
    ]
