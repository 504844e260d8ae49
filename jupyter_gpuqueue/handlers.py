"""REST handlers under ``<base_url>gpuqueue/api/``: a few lines each, delegating to the service.

Every handler is ``@authenticated`` and ``@authorized``; the job owner is the server-side
identity, never a field of the request body. Errors are JSON ``{"message": ...}`` with a 4xx
status for user mistakes; a 500 means a bug.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from pydantic import ValidationError
from tornado import web
from tornado.iostream import StreamClosedError

from gpuqueue.config import format_validation_error
from gpuqueue.errors import GPUQueueError
from gpuqueue.models import SubmitRequest
from gpuqueue.service import Caller, QueueService

JOB = r"(?P<job_id>j-[0-9a-f]+)"


class BaseHandler(APIHandler):
    """Shared plumbing: the service, the caller, JSON in and out, errors."""

    auth_resource = "gpuqueue"

    @property
    def service(self) -> QueueService:
        return self.settings["gpuqueue_service"]

    @property
    def caller(self) -> Caller:
        app = self.settings["gpuqueue_app"]
        name = app.owner_of(self.current_user)
        return Caller(name=name, admin=app.is_admin(name))

    def body_json(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except ValueError as e:
            raise web.HTTPError(400, reason=f"the body is not valid JSON: {e}") from None

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError):
            message = exc.reason or exc.log_message or str(status_code)
        elif status_code >= 500:
            message = "internal error in gpuqueue (see the server log)"
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))

    def _handle_request_exception(self, e: BaseException) -> None:  # tornado hook
        if isinstance(e, GPUQueueError):
            self.log.info("gpuqueue %s: %s", e.http_status, e)
            if not self._finished:
                self.set_status(e.http_status)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"message": str(e)}))
            return
        super()._handle_request_exception(e)


class JobsHandler(BaseHandler):
    """``GET`` lists jobs (``?all=1`` for admins), ``POST`` submits one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        everyone = self.get_argument("all", "0") in ("1", "true")
        jobs = self.service.list_jobs(self.caller, all_users=everyone)
        self.send({"jobs": [j.summary() for j in jobs]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            req = SubmitRequest.model_validate(self.body_json())
        except ValidationError as e:
            raise web.HTTPError(400, reason=format_validation_error(e)) from None
        job, attached = self.service.submit(self.caller, req)
        out = job.model_dump(mode="json")
        out["attached"] = attached
        self.send(out, status=200 if attached else 201)


class JobHandler(BaseHandler):
    """``GET`` one job in full (attempts, pending reason, error)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.send(self.service.get_job(self.caller, job_id).model_dump(mode="json"))


class CancelHandler(BaseHandler):
    """``POST`` cancels a job."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        self.send(self.service.cancel(self.caller, job_id).model_dump(mode="json"))


class PreemptHandler(BaseHandler):
    """``POST`` preempts a running job (admins)."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        self.send(self.service.preempt(self.caller, job_id).model_dump(mode="json"))


class ResultHandler(BaseHandler):
    """``GET`` the pickled results of a succeeded cell job (opaque bytes for the kernel)."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        blob = self.service.result(self.caller, job_id)
        self.finish(blob, set_content_type="application/octet-stream")


class EventsHandler(BaseHandler):
    """``GET`` a job's events after ``?after=N``: JSON, or a live SSE stream with ``?follow=1``
    (or ``Accept: text/event-stream``). SSE ids are seqs, so ``Last-Event-ID`` resumes."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        after = self._after()
        follow = self.get_argument("follow", "0") in ("1", "true") or "text/event-stream" in (
            self.request.headers.get("Accept", "")
        )
        if not follow:
            events = self.service.events(self.caller, job_id, after)
            self.send({"events": [e.model_dump(mode="json") for e in events]})
            return
        self.service.get_job(self.caller, job_id)  # 404 before the stream starts
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            async for ev in self.service.follow(self.caller, job_id, after):
                if ev is None:
                    self.write(": keep-alive\n\n")
                else:
                    self.write(f"id: {ev.seq}\nevent: {ev.type}\ndata: {ev.model_dump_json()}\n\n")
                await self.flush()
            self.write("event: end\ndata: {}\n\n")
            await self.flush()
        except StreamClosedError:
            return
        self.finish()

    def _after(self) -> int:
        raw: Optional[str] = self.get_argument("after", None) or self.request.headers.get("Last-Event-ID")
        try:
            return max(0, int(raw or 0))
        except ValueError:
            raise web.HTTPError(400, reason=f"after must be a whole number, got {raw!r}") from None


class QueueHandler(BaseHandler):
    """``GET`` the queue summary: pools, GPUs used/free, the caller's jobs."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send(self.service.summary(self.caller))


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
