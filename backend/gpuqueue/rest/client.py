"""A small synchronous client of the REST API, used by the CLI and the notebook magic.

Where the server is: ``GPUQUEUE_URL`` (the Jupyter server's base URL, e.g.
``http://127.0.0.1:8888/``, or the cluster API service) and ``GPUQUEUE_TOKEN`` (else
``JUPYTERHUB_API_TOKEN``: in a JupyterHub user server, the user's own). Inside a kernel
started by a Jupyter server with the extension, both are already set; ``discover()`` also finds
the server from ``JPY_PARENT_PID`` in the running-server files.
"""

from __future__ import annotations

import base64
import builtins  # "list" in Client's annotations after its list() is that method
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import quote

import requests

from ..queue.errors import GPUQueueError, NotFound, Unavailable, error_for_status
from .readretry import read_retry_pause

API = "gpuqueue/api/"


class NoServer(GPUQueueError):
    """No gpuqueue server could be found; the message says how to point at one."""


@dataclass
class ServerInfo:
    """Where the API is and how to authenticate."""

    url: str
    token: str = ""


def discover() -> ServerInfo:
    """Find the server: GPUQUEUE_URL/GPUQUEUE_TOKEN, else the Jupyter server that started us."""
    url = os.environ.get("GPUQUEUE_URL")
    if url:
        if not url.startswith(("http://", "https://")):
            raise NoServer(f"GPUQUEUE_URL={url[:200]!r} is not an http(s) URL: write it whole, "
                           f"e.g. GPUQUEUE_URL=http://gpuqueue-api:8780/")
        # in a JupyterHub user server (a terminal, a kernel) the user's own hub token serves
        token = os.environ.get("GPUQUEUE_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        return ServerInfo(url if url.endswith("/") else url + "/", token)
    parent = os.environ.get("JPY_PARENT_PID")
    if parent:
        try:
            from jupyter_server.serverapp import list_running_servers

            for info in list_running_servers():
                if str(info.get("pid")) == parent:
                    return ServerInfo(info["url"], info.get("token", ""))
        except ImportError:
            pass
    raise NoServer(
        "no gpuqueue server found: run this inside a notebook served by Jupyter with "
        "jupyter-gpuqueue installed, or set GPUQUEUE_URL (e.g. http://127.0.0.1:8888/) and "
        "GPUQUEUE_TOKEN"
    )


def _q(job_id: str) -> str:
    """A job id as one URL path segment (``/``, ``?`` and ``#`` quoted). Something that cannot
    be a job id is NotFound here, as the server would say."""
    if not re.fullmatch(r"j-[0-9a-f]+", str(job_id)):
        raise NotFound(f"no job {str(job_id)[:60]!r}: job ids look like j-3f9c2a71d0b4 (see `gpuqueue ls`)")
    return quote(str(job_id), safe="")


EVENTS_PAGE_CHECK = 1000  # a page of events this long may have more behind it (servers send 10,000)


class Client:
    """Verbs of the REST API. Errors come back as GPUQueueError subclasses with the server's
    message."""

    reconnect_attempts = 150  # ~5 minutes of retries while following a job's events

    def __init__(self, server: Optional[ServerInfo] = None, timeout: float = 30.0):
        self.server = server or discover()
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # never send a local server's token through a proxy
        if self.server.token:
            self.session.headers["Authorization"] = f"token {self.server.token}"

    def _url(self, path: str) -> str:
        return self.server.url + API + path

    def _check(self, r: requests.Response) -> requests.Response:
        if r.status_code < 400:
            return r
        message = ""
        if "json" in r.headers.get("Content-Type", ""):
            try:
                message = str(r.json().get("message") or "")
            except (ValueError, AttributeError):
                pass
        if not message and r.status_code == 404:  # a server without the API (not the API's JSON)
            message = (f"{self.server.url} has no gpuqueue API (it answered 404): is jupyter-gpuqueue "
                       "installed and enabled in that server (`jupyter server extension list`; its log says "
                       "why an extension did not load), and is GPUQUEUE_URL that server?")
        elif not message:  # an HTML error page of a proxy or another server
            message = (f"{self.server.url} answered {r.status_code} {r.reason or ''}".rstrip()
                       + " (is GPUQUEUE_URL the gpuqueue server?)")
        if r.status_code == 401:
            message = f"not authenticated ({message}): check GPUQUEUE_TOKEN"
        raise error_for_status(r.status_code, message, retry_after=r.headers.get("Retry-After"))

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """``method path``, its error raised. A read the cluster API refused at this user's read
        bound (429) is asked again at its ``Retry-After``, for up to ``READ_RETRY_S`` in all
        (:mod:`gpuqueue.rest.readretry`), as a user's Jupyter server does; a write never is."""
        timeout = kw.pop("timeout", self.timeout)
        waited = 0.0
        while True:
            try:
                r = self.session.request(method, self._url(path), timeout=timeout, **kw)
            except requests.ConnectionError:
                raise NoServer(
                    f"cannot reach the gpuqueue server at {self.server.url}: is it running? "
                    f"(GPUQUEUE_URL sets where to look)"
                ) from None
            pause = read_retry_pause(method, r.status_code, r.headers.get("Retry-After"), waited)
            if pause is None:
                return self._check(r)
            r.close()
            time.sleep(pause)
            waited += pause

    def submit(self, spec: dict[str, Any], payload: Optional[bytes] = None, new: bool = False) -> dict[str, Any]:
        """Submit a job; returns the job record (with ``attached`` when it joined an active one)."""
        body: dict[str, Any] = {"spec": spec, "new": new}
        if payload is not None:
            body["payload_b64"] = base64.b64encode(payload).decode()
        return self._request("POST", "jobs", data=json.dumps(body), timeout=max(self.timeout, 300)).json()

    def list(self, all_users: bool = False) -> list[dict[str, Any]]:
        """Job summaries, newest first."""
        return self._request("GET", "jobs", params={"all": "1" if all_users else "0"}).json()["jobs"]

    def get(self, job_id: str) -> dict[str, Any]:
        """A job record in full."""
        return self._request("GET", f"jobs/{_q(job_id)}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel; returns the job record."""
        return self._request("POST", f"jobs/{_q(job_id)}/cancel").json()

    def delete_job(self, job_id: str) -> dict[str, Any]:
        """Delete a finished job and everything kept for it (``DELETE /jobs/ID``); returns what
        was deleted (``id``, ``deleted``, and in a cluster a ``note`` on its checkpoints)."""
        return self._request("DELETE", f"jobs/{_q(job_id)}").json()

    def delete_jobs(self, job_ids: Sequence[str]) -> builtins.list[tuple[str, Optional[dict[str, Any]], Optional[GPUQueueError]]]:
        """:meth:`delete_job` for each id in turn: (id, the answer, None) for each one deleted, (id,
        None, the error) for each one that was not (the others are deleted all the same)."""
        out: builtins.list[tuple[str, Optional[dict[str, Any]], Optional[GPUQueueError]]] = []
        for job_id in job_ids:
            try:
                out.append((job_id, self.delete_job(job_id), None))
            except GPUQueueError as e:
                out.append((job_id, None, e))
        return out

    def preempt(self, job_id: str) -> dict[str, Any]:
        """Admin: preempt a running job."""
        return self._request("POST", f"jobs/{_q(job_id)}/preempt").json()

    def result(self, job_id: str) -> bytes:
        """The pickled results of a succeeded cell job."""
        return self._request("GET", f"jobs/{_q(job_id)}/result", timeout=max(self.timeout, 300)).content

    def queue(self) -> dict[str, Any]:
        """The queue summary."""
        return self._request("GET", "queue").json()

    def release_name(self, name: str) -> dict[str, Any]:
        """A queue admin's release of a hub user name (the cluster API as a JupyterHub service:
        ``gpuqueue.cluster.hub_names``): what was released, how many finished jobs of the earlier
        account were deleted, and the name's dynamic uid that was retired (``retired_uid``; None
        where workers never gave it one)."""
        return self._request("POST", f"hub-names/{quote(name, safe='')}/release").json()

    def events(self, job_id: str, after: int = 0) -> builtins.list[dict[str, Any]]:
        """All events with seq > after, without waiting. The server answers a page at a time
        (10,000 events): a page of ``EVENTS_PAGE_CHECK`` or more is followed by a request for
        what comes after it, so a long job's output is never cut at the first page; so is a page
        whose answer names where the ``next`` starts (a job whose dropped output is still being
        deleted: the server reads a bounded number of stored records per request)."""
        out: builtins.list[dict[str, Any]] = []
        while True:
            body = self._request("GET", f"jobs/{_q(job_id)}/events", params={"after": after}).json()
            page = body["events"]
            out += page
            if isinstance(body.get("next"), int):  # the server stopped this page before the end
                after = body["next"]
                continue
            if len(page) < EVENTS_PAGE_CHECK:
                return out
            after = page[-1]["seq"]

    def follow(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Events after ``after``, live, until the job ends (SSE: its ``end`` event). Resumes
        from the last seq seen after a dropped connection: refused or reset, a stream that
        closes before its end, or, once it had connected, the server's 503 (a Jupyter server
        whose cluster API service restarts), for about ``reconnect_attempts`` tries."""
        failures = 0
        connected = False
        while True:
            try:
                r = self._request(
                    "GET",
                    f"jobs/{_q(job_id)}/events",
                    params={"after": after, "follow": "1"},
                    stream=True,
                    timeout=(10, 60),
                )
                connected = True
                with r:
                    event_type = None
                    # SSE is UTF-8 whatever the Content-Type says (``text/event-stream`` with
                    # no charset, which requests alone would decode as ISO-8859-1)
                    for line in r.iter_lines():
                        raw = line.decode("utf-8", errors="replace")
                        if raw.startswith("event:"):
                            event_type = raw[6:].strip()
                        elif raw.startswith("data:"):
                            if event_type == "end":
                                return
                            ev = json.loads(raw[5:])
                            after = ev["seq"]
                            failures = 0
                            yield ev
                raise NoServer("the stream closed before the job's end")  # a drop: resume from `after`
            except Unavailable:
                if not connected:  # the first answer: the server's own words (the queue is off, ...)
                    raise
                failures += 1
                if failures > self.reconnect_attempts:
                    raise
                time.sleep(min(2.0, 0.2 * failures))
            except (NoServer, requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout):
                # the server restarted or the network blipped: resume from `after`
                failures += 1
                if failures > self.reconnect_attempts:
                    raise NoServer(
                        f"lost the connection to {self.server.url} and could not reconnect; "
                        f"the job goes on: re-attach later"
                    ) from None
                time.sleep(min(2.0, 0.2 * failures))
