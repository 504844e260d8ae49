"""Cluster mode for the server extension: forward every verb to the cluster's API service.

With ``c.GPUQueueApp.api_url`` (and ``api_token``) set, the handlers talk to a
:class:`RemoteService` instead of the embedded ``QueueService``. It has the same verbs, over
HTTP (tornado's async client, so the Jupyter server never blocks), and raises the same errors
with the API service's message, so users see the same codes and messages in both modes.

The API service knows the user by ``api_token`` (one token per user, from its users file; on
JupyterHub, give each user's server its own). The user's server never holds Redis credentials.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, AsyncIterator, Optional
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gpuqueue.queue.errors import GPUQueueError, Unavailable, error_for_status
from gpuqueue.queue.models import Buffer, Event, JobRecord, SubmitRequest
from gpuqueue.queue.verbs import Caller
from gpuqueue.rest.readretry import read_retry_pause


class RemoteService:
    """The queue verbs of ``QueueService``, forwarded to ``gpuqueue api`` at ``url``."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.timeout = timeout
        self.listeners: list[Any] = []  # nothing happens here: the cluster has its own metrics
        self.scheduler = None

    async def start(self) -> None:
        """Nothing to start: the cluster runs elsewhere."""

    async def stop(self) -> None:
        """Nothing to stop."""

    # -- HTTP -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Optional[Buffer] = None, **params: Any) -> HTTPRequest:
        url = self.url + "gpuqueue/api/" + path + (("?" + urlencode(params)) if params else "")
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        if method == "POST" and body is None:
            body = b""
        if body is None or isinstance(body, bytes):
            return HTTPRequest(url, method=method, body=body, request_timeout=self.timeout, headers=headers)
        mapped = body  # a large body as it came (a memory map): sent a slice at a time

        async def produce(write: Any) -> None:
            for i in range(0, len(mapped), 1 << 20):
                await write(mapped[i:i + (1 << 20)])

        headers["Content-Length"] = str(len(mapped))
        # tornado annotates body_producer as taking a write that returns None and returning a
        # Future; its docs and HTTP1Connection.write return a Future from write, and
        # simple_httpclient awaits whatever body_producer returns (this coroutine)
        return HTTPRequest(url, method=method, body_producer=produce,  # type: ignore[arg-type]
                           request_timeout=self.timeout, headers=headers)

    async def _call(self, method: str, path: str, body: Optional[Buffer] = None, **params: Any) -> Any:
        waited = 0.0
        while True:
            try:
                r = await AsyncHTTPClient().fetch(self._request(method, path, body, **params))
                break
            except HTTPClientError as e:
                asked = e.response.headers.get("Retry-After") if e.response is not None else None
                pause = read_retry_pause(method, e.code, asked, waited)
                if pause is None:
                    raise self._error(e) from None
                # the API bounds each user's reads in flight (docs/deploy.md, "Reads per user"):
                # the sidebar and a few cells may ask at once; this user's server waits its turn
                await asyncio.sleep(pause)
                waited += pause
            except OSError as e:
                raise Unavailable(f"cannot reach the gpuqueue API service at {self.url} ({e}): "
                                  f"is it running? (c.GPUQueueApp.api_url)") from None
        if r.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(r.body)
        return r.body

    def _error(self, e: HTTPClientError) -> GPUQueueError:
        message = f"{e.code} {e.message}"
        if e.response is not None and e.response.body:
            try:
                message = str(json.loads(e.response.body).get("message") or message)
            except (ValueError, AttributeError):
                pass  # not our JSON (e.g. a proxy's HTML page): the status line says enough
        if e.code == 401:
            return Unavailable(f"the gpuqueue API service refused this server's token ({message}): "
                               f"check c.GPUQueueApp.api_token")
        if e.code == 599:
            return Unavailable(f"cannot reach the gpuqueue API service at {self.url}: is it running?")
        retry_after = e.response.headers.get("Retry-After") if e.response is not None else None
        return error_for_status(e.code, message, retry_after=retry_after)

    # -- verbs ----------------------------------------------------------------------------
    async def submit(self, caller: Caller, req: SubmitRequest) -> tuple[JobRecord, bool]:
        """Submit through the API service (it stamps the owner from the token, and checks the
        request again). The body goes on as it came; a request built here is encoded in a
        thread (a large payload would hold up the event loop)."""
        body = req._raw if req._raw is not None else await asyncio.to_thread(_encode, req)
        out = await self._call("POST", "jobs", body)
        attached = bool(out.pop("attached", False))
        return JobRecord.model_validate(out), attached

    async def list_jobs(self, caller: Caller, all_users: bool = False, limit: int = 500) -> list[_Summary]:
        out = await self._call("GET", "jobs", all="1" if all_users else "0")
        return [_Summary(j) for j in out["jobs"]]

    async def get_job(self, caller: Caller, job_id: str) -> JobRecord:
        return JobRecord.model_validate(await self._call("GET", f"jobs/{job_id}"))

    async def cancel(self, caller: Caller, job_id: str) -> JobRecord:
        return JobRecord.model_validate(await self._call("POST", f"jobs/{job_id}/cancel"))

    async def delete_job(self, caller: Caller, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("DELETE", f"jobs/{job_id}")
        return out

    async def preempt(self, caller: Caller, job_id: str) -> JobRecord:
        return JobRecord.model_validate(await self._call("POST", f"jobs/{job_id}/preempt"))

    async def events(self, caller: Caller, job_id: str, after: int = 0, limit: int = 10_000) -> list[Event]:
        out = await self._call("GET", f"jobs/{job_id}/events", after=after)
        return [Event.model_validate(e) for e in out["events"]]

    async def result(self, caller: Caller, job_id: str) -> bytes:
        return await self._call("GET", f"jobs/{job_id}/result")

    async def summary(self, caller: Caller) -> dict[str, Any]:
        return await self._call("GET", "queue")

    async def follow(self, caller: Caller, job_id: str, after: int = 0, keepalive_s: float = 15.0) -> AsyncIterator[Optional[Event]]:
        """The API service's SSE stream, relayed; reconnects from the last seq on a drop (the
        service restarted, the network blipped: a refused or reset connection, a 5xx), for
        about 5 minutes."""
        q: "asyncio.Queue[Any]" = asyncio.Queue()
        buf = b""

        def on_chunk(chunk: bytes) -> None:
            nonlocal buf
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                q.put_nowait(block.decode("utf-8", "replace"))

        failures = 0
        while True:
            buf = b""  # a stream cut mid-event leaves a part: the next one starts on a boundary
            while not q.empty():
                q.get_nowait()  # (all parsed before the cut was seen: nothing left to relay)
            req = self._request("GET", f"jobs/{job_id}/events", after=after, follow=1)
            req.streaming_callback = on_chunk
            req.request_timeout = 0  # a stream lasts as long as the job
            fetch = asyncio.ensure_future(AsyncHTTPClient().fetch(req, raise_error=False))
            ended = False
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, fetch}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    while not q.empty():  # the last blocks may have come with the end
                        ev, ended = self._parse(q.get_nowait(), ended)
                        if ev is not None:
                            after = ev.seq
                            yield ev
                    break
                ev, ended = self._parse(getter.result(), ended)
                if ended:
                    fetch.cancel()
                    return
                if ev is None:
                    yield None
                else:
                    after = ev.seq
                    failures = 0
                    yield ev
            if ended:
                return
            try:
                r = fetch.result()
            except Exception:  # noqa: BLE001 - refused, reset: the API service restarts; ask again
                r = None
            if r is not None and r.code in (400, 401, 403, 404, 409):
                raise self._error(HTTPClientError(r.code, response=r))
            failures += 1
            if failures > 150:
                raise Unavailable(f"lost the event stream from {self.url} and could not reconnect")
            await asyncio.sleep(min(2.0, 0.2 * failures))

    @staticmethod
    def _parse(block: str, ended: bool) -> tuple[Optional[Event], bool]:
        kind = data = None
        for line in block.splitlines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        if kind == "end":
            return None, True
        if data is None:
            return None, ended  # a keep-alive comment
        return Event.model_validate_json(data), ended


def _encode(req: SubmitRequest) -> bytes:
    data = req.model_dump(mode="json", exclude_none=True)
    if req._payload is not None:
        data["payload_b64"] = base64.b64encode(req._payload).decode()
    return json.dumps(data).encode()


class _Summary:
    """A listing row as the API service returned it (``summary()`` gives it back as is)."""

    def __init__(self, row: dict[str, Any]):
        self.row = row

    def summary(self) -> dict[str, Any]:
        return self.row
