"""The queue's verbs: one typed seam for everything a user can ask of the queue.

Three objects implement :class:`QueueVerbs`: the embedded ``QueueService``
(``gpuqueue.embedded.service``), the cluster's ``ClusterFrontend`` (``gpuqueue.cluster.frontend``)
and the Jupyter server's ``RemoteService`` that forwards to the cluster's API service
(``jupyter_gpuqueue.remote``). The REST handlers (``gpuqueue.rest.handlers``) are typed on this
protocol only, and ``tests/backend/test_types.py`` has mypy check that all three conform.

A verb may answer at once or with an awaitable (the embedded service reads SQLite on the event
loop; the cluster waits on Redis; the remote one on HTTP): callers ``await maybe_await(...)``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Optional, Protocol, Sequence, TypeVar, Union, cast

from .models import Event, JobRecord, SubmitRequest

T = TypeVar("T")

MaybeAwaitable = Union[T, Awaitable[T]]
"""A verb's answer: the value, or an awaitable of it."""


@dataclass
class Caller:
    """Who is asking: the server-side identity, never a field of a request body."""

    name: str
    admin: bool = False
    # the user's JupyterHub groups (hub auth only; empty elsewhere): they may place the user
    # in a fair-share group (QueueConfig.group_of)
    hub_groups: tuple[str, ...] = ()
    # the creation time of the hub account the name was found bound to when the request was
    # checked (cluster API as a hub service, names bound: ``cluster.hub_names``); a job is stored
    # only while the name is still bound to it (None: names are not bound)
    hub_account: Optional[str] = None


class JobSummary(Protocol):
    """A row of a job listing: anything that gives the listing's JSON for one job."""

    def summary(self) -> dict[str, Any]:
        """The job's row as the API sends it in ``GET /jobs``."""
        ...


class QueueVerbs(Protocol):
    """What the queue does for a caller. Errors are ``gpuqueue.queue.errors`` classes, whose
    ``http_status`` the REST layer answers with."""

    def submit(self, caller: Caller, req: SubmitRequest) -> Awaitable[tuple[JobRecord, bool]]:
        """Queue a job (or attach to the caller's identical live cell job); (record, attached)."""
        ...

    def list_jobs(self, caller: Caller, all_users: bool = False,
                  limit: int = 500) -> MaybeAwaitable[Sequence[JobSummary]]:
        """The caller's jobs, newest first (everyone's for an admin with ``all_users``)."""
        ...

    def get_job(self, caller: Caller, job_id: str) -> MaybeAwaitable[JobRecord]:
        """One job in full; NotFound for a job the caller may not see."""
        ...

    def cancel(self, caller: Caller, job_id: str) -> MaybeAwaitable[JobRecord]:
        """Cancel a job (queued: at once; running: stop it)."""
        ...

    def delete_job(self, caller: Caller, job_id: str) -> MaybeAwaitable[dict[str, Any]]:
        """Delete a finished job and everything kept for it (its owner, or an admin): the answer
        says what went (``lifecycle.deleted_answer``). Conflict while it is queued or running, or
        while one of its owner's live jobs resumes from it; NotFound for a job the caller may not see."""
        ...

    def preempt(self, caller: Caller, job_id: str) -> MaybeAwaitable[JobRecord]:
        """Stop a running job and queue it again (admins)."""
        ...

    def events(self, caller: Caller, job_id: str, after: int = 0,
               limit: int = 10_000) -> MaybeAwaitable[Sequence[Event]]:
        """A job's events with seq > ``after``."""
        ...

    def follow(self, caller: Caller, job_id: str, after: int = 0,
               keepalive_s: float = 15.0) -> AsyncIterator[Optional[Event]]:
        """A job's events as they come, until it ends; None now and then as a keep-alive."""
        ...

    def result(self, caller: Caller, job_id: str) -> MaybeAwaitable[bytes]:
        """The pickled results of a succeeded cell job; Conflict before it has any; Forbidden
        to anyone but its owner, admins included (``lifecycle.results_for_owner_only``)."""
        ...

    def summary(self, caller: Caller) -> MaybeAwaitable[dict[str, Any]]:
        """The queue summary: pools, GPUs used/free, the caller's jobs, share standing."""
        ...


async def maybe_await(value: MaybeAwaitable[T]) -> T:
    """``await value`` if it is awaitable, else the value."""
    if inspect.isawaitable(value):
        return await value
    return cast(T, value)
