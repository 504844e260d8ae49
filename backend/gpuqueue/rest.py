"""The REST API's handlers, framework-neutral (tornado only): routes under ``gpuqueue/api/``.

Each handler is a few lines that delegate to a *service*: any object with the verbs of
``QueueService`` (submit, list_jobs, get_job, cancel, preempt, events, follow, result,
summary); a verb may return its value or an awaitable. Subclasses say who is calling
(:meth:`RestHandler.get_caller`) and how requests are authenticated: the cluster's API service
(``gpuqueue.cluster.api``) with tokens from its users file.

Errors are JSON ``{"message": ...}`` with a 4xx status for user mistakes; a 500 means a bug.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Optional

from pydantic import ValidationError
from tornado import web
from tornado.iostream import StreamClosedError

from .config import format_validation_error
from .errors import GPUQueueError
from .models import SubmitRequest

JOB = r"(?P<job_id>j-[0-9a-f]+)"


async def maybe_await(value: Any) -> Any:
    """``await value`` if it is awaitable, else the value."""
    if inspect.isawaitable(value):
        return await value
    return value


class RestHandler(web.RequestHandler):
    """Shared plumbing: the service, the caller, JSON in and out, errors."""

    @property
    def service(self) -> Any:
        """The queue service every verb goes to."""
        return self.settings["gpuqueue_service"]

    def get_caller(self) -> Any:
        """Who is asking (a ``Caller``); subclasses decide from their authentication."""
        raise NotImplementedError

    @property
    def caller(self) -> Any:
        return self.get_caller()

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
            if not self._finished:
                self.set_status(e.http_status)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"message": str(e)}))
            return
        super()._handle_request_exception(e)


class JobsHandler(RestHandler):
    """``GET`` lists jobs (``?all=1`` for admins), ``POST`` submits one."""

    async def get(self) -> None:
        everyone = self.get_argument("all", "0") in ("1", "true")
        jobs = await maybe_await(self.service.list_jobs(self.caller, all_users=everyone))
        self.send({"jobs": [j.summary() for j in jobs]})

    async def post(self) -> None:
        try:
            req = SubmitRequest.model_validate(self.body_json())
        except ValidationError as e:
            raise web.HTTPError(400, reason=format_validation_error(e)) from None
        job, attached = await maybe_await(self.service.submit(self.caller, req))
        out = job.model_dump(mode="json")
        out["attached"] = attached
        self.send(out, status=200 if attached else 201)


class JobHandler(RestHandler):
    """``GET`` one job in full (attempts, pending reason, error)."""

    async def get(self, job_id: str) -> None:
        job = await maybe_await(self.service.get_job(self.caller, job_id))
        self.send(job.model_dump(mode="json"))


class CancelHandler(RestHandler):
    """``POST`` cancels a job."""

    async def post(self, job_id: str) -> None:
        job = await maybe_await(self.service.cancel(self.caller, job_id))
        self.send(job.model_dump(mode="json"))


class PreemptHandler(RestHandler):
    """``POST`` preempts a running job (admins)."""

    async def post(self, job_id: str) -> None:
        job = await maybe_await(self.service.preempt(self.caller, job_id))
        self.send(job.model_dump(mode="json"))


class ResultHandler(RestHandler):
    """``GET`` the pickled results of a succeeded cell job (opaque bytes for the kernel)."""

    async def get(self, job_id: str) -> None:
        blob = await maybe_await(self.service.result(self.caller, job_id))
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(blob)


class EventsHandler(RestHandler):
    """``GET`` a job's events after ``?after=N``: JSON, or a live SSE stream with ``?follow=1``
    (or ``Accept: text/event-stream``). SSE ids are seqs, so ``Last-Event-ID`` resumes."""

    async def get(self, job_id: str) -> None:
        after = self._after()
        follow = self.get_argument("follow", "0") in ("1", "true") or "text/event-stream" in (
            self.request.headers.get("Accept", "")
        )
        if not follow:
            events = await maybe_await(self.service.events(self.caller, job_id, after))
            self.send({"events": [e.model_dump(mode="json") for e in events]})
            return
        await maybe_await(self.service.get_job(self.caller, job_id))  # 404 before the stream starts
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


class QueueHandler(RestHandler):
    """``GET`` the queue summary: pools, GPUs used/free, the caller's jobs."""

    async def get(self) -> None:
        self.send(await maybe_await(self.service.summary(self.caller)))


def routes(prefix: str = "/gpuqueue/api") -> list[tuple[str, type]]:
    """(path pattern, handler class) for every route, under ``prefix``."""
    return [
        (f"{prefix}/jobs", JobsHandler),
        (f"{prefix}/jobs/{JOB}", JobHandler),
        (f"{prefix}/jobs/{JOB}/cancel", CancelHandler),
        (f"{prefix}/jobs/{JOB}/preempt", PreemptHandler),
        (f"{prefix}/jobs/{JOB}/result", ResultHandler),
        (f"{prefix}/jobs/{JOB}/events", EventsHandler),
        (f"{prefix}/queue", QueueHandler),
    ]
