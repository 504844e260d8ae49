"""The embedded queue (``gpuqueue.embedded.service``) without HTTP: a real ``QueueService`` with
real runner processes, driven through its verbs (the REST layer only forwards to them), each
test on an event loop of its own (``asyncio.run``), as the server runs it. Covers
the shell it shares with the cluster daemon (``gpuqueue.queue.shell``): a Start becomes a
running attempt, state changes are stored, streamed and told to listeners, a cancel settles it."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.errors import Forbidden, NotFound
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.states import JobState
from gpuqueue.queue.verbs import Caller

ANA, BO, ADMIN = Caller("ana"), Caller("bo"), Caller("root", admin=True)


def command(*code: str, **spec: object) -> SubmitRequest:
    return SubmitRequest(spec=JobSpec(kind="command", command=[sys.executable, "-c", "\n".join(code)], **spec))


async def until(service: QueueService, job_id: str, states: set[JobState], timeout: float = 30.0) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = service.get_job(ANA, job_id).state
        if state in states:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} stayed {service.get_job(ANA, job_id).state.value}: "
                         f"{[(e.type, e.data) for e in service.events(ANA, job_id)]}")


def test_a_command_runs_its_events_are_streamed_and_state_changes_are_told(tmp_path: Path) -> None:
    asyncio.run(_a_command_runs_its_events_are_streamed_and_state_changes_are_told(tmp_path))


async def _a_command_runs_its_events_are_streamed_and_state_changes_are_told(tmp_path: Path) -> None:
    service = QueueService(tmp_path / "state", gpus=1)
    seen: list[tuple[str, str]] = []
    service.listeners.append(lambda what, data: seen.append((what, data["new"])) if what == "state" else None)
    await service.start()
    try:
        job, attached = await service.submit(ANA, command("print('hello from the job')"))
        assert not attached and job.state == JobState.QUEUED and job.owner == "ana"
        assert await until(service, job.id, {JobState.SUCCEEDED, JobState.FAILED}) == JobState.SUCCEEDED
        lines = [e.data["line"] for e in service.events(ANA, job.id) if e.type == "log" and e.data["stream"] == "stdout"]
        assert "hello from the job" in lines
        states = [e.data["state"] for e in service.events(ANA, job.id) if e.type == "state"]
        assert states == ["queued", "starting", "running", "succeeded"]
        assert [new for _, new in seen] == ["starting", "running", "succeeded"][-len(seen):]
        assert service.summary(ANA)["me"]["jobs"] == {}
        with pytest.raises(NotFound, match="no stored results"):
            service.result(ANA, job.id)  # a command job has none
    finally:
        await service.stop()


def test_only_the_owner_sees_a_job_and_only_admins_preempt(tmp_path: Path) -> None:
    asyncio.run(_only_the_owner_sees_a_job_and_only_admins_preempt(tmp_path))


async def _only_the_owner_sees_a_job_and_only_admins_preempt(tmp_path: Path) -> None:
    service = QueueService(tmp_path / "state", gpus=1)
    await service.start()
    try:
        job, _ = await service.submit(ANA, command("import time", "time.sleep(60)"))
        with pytest.raises(NotFound):
            service.get_job(BO, job.id)
        assert [j.id for j in service.list_jobs(BO, all_users=True)] == []  # not an admin
        assert [j.id for j in service.list_jobs(ADMIN, all_users=True)] == [job.id]
        with pytest.raises(Forbidden):
            service.preempt(ANA, job.id)
        await until(service, job.id, {JobState.RUNNING})
        service.cancel(ANA, job.id)
        assert await until(service, job.id, {JobState.CANCELLED}) == JobState.CANCELLED
        assert service.cancel(ANA, job.id).state == JobState.CANCELLED  # again: nothing changes
    finally:
        await service.stop()
