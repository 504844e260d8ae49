"""The REST API's handlers, framework-neutral (tornado only): routes under ``gpuqueue/api/``.

Each handler is a few lines that delegate to a *service*: a
:class:`gpuqueue.queue.verbs.QueueVerbs` (the embedded ``QueueService``, the cluster's
``ClusterFrontend`` or the Jupyter server's ``RemoteService``). A subclass says who is calling
(:meth:`RestHandler.get_caller`) and how requests are authenticated: the cluster's API service
(``gpuqueue.cluster.api``) with tokens from its users file, the Jupyter server extension
(``jupyter_gpuqueue.handlers``) with Jupyter's identity; both build their routes from
:func:`routes` with one mixin.

Errors are JSON ``{"message": ...}`` with a 4xx status for user mistakes; a 500 means a bug.
Answers are standard JSON (a non-finite number is sent as ``null``). The submit body is read,
parsed and decoded off the event loop (``gpuqueue.rest.jsonbody``), so a large payload never holds
up other requests. Where the service bounds its reads (the cluster's API:
``gpuqueue.cluster.reads``), each read request holds one of the caller's slots while it is
served, and a page of events is written out as JSON off the event loop. No log line holds a token: request URIs are logged with query tokens masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections import Counter
from typing import Any, AsyncIterator, Callable, Optional, Sequence

from tornado import web
from tornado.iostream import StreamClosedError
from tornado.log import app_log, gen_log

from ..queue import bounds
from ..queue.errors import BadRequest, GPUQueueError, NotFound, RateLimited
from ..queue.states import STATE_GROUPS
from ..queue.text import count
from ..queue.verbs import Caller, QueueVerbs, maybe_await
from .jsonbody import read_submit_chunks, release

JOB = r"(?P<job_id>[^/]+)"  # any segment: one that is not a job id is a 404 in JSON, not a page
_JOB_ID = re.compile(r"j-[0-9a-f]{1,64}")
MAX_AFTER = 2**63 - 1  # event seqs are 64-bit (SQLite INTEGER, Redis stream ids)
MAX_STREAMS_PER_USER = 32
"""Live event streams one process serves one user at once: each holds a connection (to Redis,
in a cluster, from a pool every user shares) and wakes on every event of its job. The cluster's
API sets its own (``gpuqueue api --max-follows-per-user``: ``ReadGate.follows_per_user``)."""
_streams: Counter[str] = Counter()  # user -> live streams this process serves now
_SECRET_PARAM = re.compile(r"(?i)([^&=]*(?:token|auth|key|secret|password|xsrf)[^&=]*=)[^&]*")


def scrub_uri(uri: str) -> str:
    """``uri`` with the value of every query parameter that may hold a credential masked,
    as Jupyter does: ``/x?token=abc`` -> ``/x?token=[secret]``."""
    path, sep, query = uri.partition("?")
    return path + sep + _SECRET_PARAM.sub(r"\1[secret]", query) if sep else uri


def standard_json(data: Any) -> str:
    """``json.dumps`` that never writes ``NaN`` or ``Infinity`` (they become ``null``)."""
    try:
        return json.dumps(data, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), default=str, allow_nan=False)


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


class RestHandler(web.RequestHandler):
    """Shared plumbing: the service, the caller, JSON in and out, errors."""

    @property
    def service(self) -> QueueVerbs:
        """The queue service every verb goes to."""
        service: QueueVerbs = self.settings["gpuqueue_service"]
        return service

    def get_caller(self) -> Caller:
        """Who is asking; subclasses decide from their authentication."""
        raise NotImplementedError

    @property
    def caller(self) -> Caller:
        """Who is asking (:meth:`get_caller`)."""
        return self.get_caller()

    def job_id(self, raw: str) -> str:
        """``raw`` if it can be a job id; NotFound (the same answer as an unknown job) if not."""
        if not _JOB_ID.fullmatch(raw):
            raise NotFound(f"no job {raw[:60]!r}: job ids look like j-3f9c2a71d0b4 (see `gpuqueue ls`)")
        return raw

    def send(self, data: Any, status: int = 200) -> None:
        """Answer with ``data`` as standard JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(standard_json(data))

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Serve a read as one of the caller's bounded reads where the service bounds them
        (``service.reads``, a ``gpuqueue.cluster.reads.ReadGate``: 429 past the bound); else as is."""
        gate = getattr(self.service, "reads", None)
        if gate is None:
            yield
            return
        async with gate.admit(self.caller.name):
            yield

    async def off_loop(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a thread: the service's read threads where it has them, else asyncio's."""
        gate = getattr(self.service, "reads", None)
        return await (gate.run(fn) if gate is not None else asyncio.to_thread(fn))

    def send_bytes(self, blob: bytes) -> None:
        """Answer with opaque bytes (``application/octet-stream``)."""
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(blob)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:  # tornado hook
        """tornado's, with the URI's tokens masked (tornado logs ``request.uri`` as is)."""
        where = f"{self.request.method} {scrub_uri(self.request.uri or '')}"
        if isinstance(value, web.HTTPError):
            if value.log_message:
                gen_log.warning("%d %s: %s", value.status_code, where,
                                value.log_message % value.args if value.args else value.log_message)
        else:
            app_log.error("uncaught exception in %s", where, exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError):
            detail = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            message = exc.reason or detail or self._reason
        elif status_code >= 500:
            message = "internal error in gpuqueue (see the server log)"
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json")
        self._close_if_body_unread()
        self.finish(json.dumps({"message": message}))

    def _handle_request_exception(self, e: BaseException) -> None:  # tornado hook
        if isinstance(e, GPUQueueError):
            if not self._finished:
                self.set_status(e.http_status)
                self.set_header("Content-Type", "application/json")
                retry_after = getattr(e, "retry_after", None)
                if retry_after is not None:  # whole seconds, rounded up (RFC 9110)
                    self.set_header("Retry-After", str(max(1, math.ceil(retry_after))))
                self._close_if_body_unread()
                self.finish(json.dumps({"message": str(e)}))
            return
        super()._handle_request_exception(e)

    _body_read = False

    def _close_if_body_unread(self) -> None:
        """A streamed body refused before it was read (not logged in, bad token, XSRF): tornado
        closes the connection rather than read it (even a GET's empty one), so tell the client
        (or a keep-alive proxy, such as JupyterHub's) not to reuse it."""
        if getattr(self, "_stream_request_body", False) and not self._body_read:
            self.set_header("Connection", "close")


@web.stream_request_body
class JobsHandler(RestHandler):
    """``GET`` lists jobs (``?all=1`` for admins), ``POST`` submits one. The body arrives in
    chunks (after authentication), and is joined, parsed and decoded in a thread."""

    _chunks: Optional[list[bytes]] = None

    def data_received(self, chunk: bytes) -> None:  # tornado hook (stream_request_body)
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(chunk)

    async def get(self) -> None:
        self._body_read = True
        everyone = self.get_argument("all", "0") in ("1", "true")
        async with self.reading():
            jobs = await maybe_await(self.service.list_jobs(self.caller, all_users=everyone))
            self.send({"jobs": [j.summary() for j in jobs]})

    async def post(self) -> None:
        self._body_read = True
        chunks, self._chunks = self._chunks or [], None
        req = await asyncio.to_thread(read_submit_chunks, chunks)
        try:
            job, attached = await self.service.submit(self.caller, req)
        finally:
            await asyncio.to_thread(release, req)  # a large body is unmapped off the event loop
        out = job.model_dump(mode="json")
        out["attached"] = attached
        self.send(out, status=200 if attached else 201)


class JobHandler(RestHandler):
    """``GET`` one job in full (attempts, pending reason, error); ``DELETE`` a finished one and
    everything kept for it (``gpuqueue rm``)."""

    async def get(self, job_id: str) -> None:
        async with self.reading():
            job = await maybe_await(self.service.get_job(self.caller, self.job_id(job_id)))
            self.send(job.model_dump(mode="json"))

    async def delete(self, job_id: str) -> None:
        self.send(await maybe_await(self.service.delete_job(self.caller, self.job_id(job_id))))


class CancelHandler(RestHandler):
    """``POST`` cancels a job."""

    async def post(self, job_id: str) -> None:
        job = await maybe_await(self.service.cancel(self.caller, self.job_id(job_id)))
        self.send(job.model_dump(mode="json"))


class PreemptHandler(RestHandler):
    """``POST`` preempts a running job (admins)."""

    async def post(self, job_id: str) -> None:
        job = await maybe_await(self.service.preempt(self.caller, self.job_id(job_id)))
        self.send(job.model_dump(mode="json"))


class ResultHandler(RestHandler):
    """``GET`` the pickled results of a succeeded cell job (opaque bytes for the kernel)."""

    async def get(self, job_id: str) -> None:
        async with self.reading():
            self.send_bytes(await maybe_await(self.service.result(self.caller, self.job_id(job_id))))


class EventsHandler(RestHandler):
    """``GET`` a job's events after ``?after=N``: JSON, or a live SSE stream with ``?follow=1``
    (or ``Accept: text/event-stream``). SSE ids are seqs, so ``Last-Event-ID`` resumes."""

    async def get(self, job_id: str) -> None:
        after = self._after()
        follow = self.get_argument("follow", "0") in ("1", "true") or "text/event-stream" in (
            self.request.headers.get("Accept", "")
        )
        if not follow:
            async with self.reading():
                await self._page(self.job_id(job_id), after)
            return
        caller = self.caller
        await maybe_await(self.service.get_job(caller, self.job_id(job_id)))  # 404 before the stream starts
        gate = getattr(self.service, "reads", None)
        most = gate.follows_per_user if gate is not None else MAX_STREAMS_PER_USER
        if _streams[caller.name] >= most:
            knob = " (the admin sets it: `gpuqueue api --max-follows-per-user`)" if gate is not None else ""
            raise RateLimited(f"you follow {count(_streams[caller.name], 'job')} live through this server already, the "
                              f"most it serves one user{knob}: close some (notebook tabs, `gpuqueue logs -f`), or "
                              f"read events without following (?after=N)", retry_after=10)
        _streams[caller.name] += 1
        try:
            await self._stream(caller, job_id, after)
        finally:
            _streams[caller.name] -= 1
            if not _streams[caller.name]:
                del _streams[caller.name]

    async def _page(self, jid: str, after: int) -> None:
        """Answer a page of the job's events (and ``next`` where it stopped short of the end),
        written out as JSON off the event loop (10,000 events are tens of milliseconds)."""
        events: Sequence[Any]
        next_after: Optional[int] = None
        paged = getattr(self.service, "events_page", None)
        store = getattr(self.service, "store", None)
        if paged is not None:  # the cluster's API: read in its read threads
            events, next_after = await paged(self.caller, jid, after)
        else:
            job = await maybe_await(self.service.get_job(self.caller, jid))
            if job.logs_dropped and store is not None:  # its output rows may still be stored: walk past them
                page = bounds.dropped_page(lambda a, n: store.read_events(jid, a, n), job, after)
                events, next_after = page.events, page.next_after
            elif job.logs_dropped:  # a relay to a cluster's API, which bounds its own pages
                events = await bounds.dropped_page_of(self.service.follow(self.caller, jid, after))
            else:
                events = await maybe_await(self.service.events(self.caller, jid, after))
        more = {} if next_after is None else {"next": next_after}  # stopped before the end: the client goes on
        body = await self.off_loop(lambda: standard_json({"events": [e.model_dump(mode="json") for e in events], **more}))
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    async def _stream(self, caller: Caller, job_id: str, after: int) -> None:
        """Send the job's events as SSE until it ends or the client goes."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        # each event goes out when flushed: with Nagle's algorithm on (tornado's default while a
        # response streams) an event waits for the client's delayed ACK of the one before (~40 ms)
        stream = getattr(getattr(self.request, "connection", None), "stream", None)
        if stream is not None and hasattr(stream, "set_nodelay"):
            stream.set_nodelay(True)
        try:
            async for ev in self.service.follow(caller, job_id, after):
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
        text = (raw or "0").strip()
        if not (text.isdigit() and text.isascii()) or len(text) > 19 or int(text) > MAX_AFTER:
            shown = repr(text) if len(text) <= 30 else repr(text[:30])[:-1] + "...'"
            raise BadRequest(f"after must be a whole number from 0 to {MAX_AFTER} (the last event "
                             f"seq seen), got {shown}")
        return int(text)


class QueueHandler(RestHandler):
    """``GET`` the queue summary: pools, GPUs used/free, the caller's jobs, and the groups of
    job states (``state_groups``: waiting, active, live, terminal) the sidebar sorts jobs by."""

    async def get(self) -> None:
        async with self.reading():
            summary = await maybe_await(self.service.summary(self.caller))
            self.send({**summary, "state_groups": STATE_GROUPS})


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
