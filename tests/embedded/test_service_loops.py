"""The embedded service's loops, in process: an idle queue does not poll its job files 100
times a second, a running job's output is still copied at once, and the scheduling passes
while a job runs do not query the store to learn that one is active."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.states import ACTIVE_STATES
from gpuqueue.queue.verbs import Caller

ALICE = Caller("alice")


def _service(tmp_path: Path) -> QueueService:
    cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 1})}, warm_imports=[])
    return QueueService(tmp_path / "state", cfg)


def _count_tail_passes(svc: QueueService) -> list[float]:
    """The times of the tail loop's passes (the loop calls ``self._tail_all``)."""
    passes: list[float] = []
    inner = svc._tail_all

    def counted() -> None:
        passes.append(time.monotonic())
        inner()

    svc._tail_all = counted  # type: ignore[method-assign]
    return passes


def test_an_idle_queue_sleeps_and_a_running_job_is_tailed_at_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, float, int]:
        svc = _service(tmp_path)
        passes = _count_tail_passes(svc)
        await svc.start()
        try:
            await asyncio.sleep(3.0)
            idle = len(passes)
            spec = JobSpec(kind="command", gpus=0, command=["sh", "-c", "echo hello; sleep 2; echo bye"])
            job, _ = await svc.submit(ALICE, SubmitRequest(spec=spec))
            t0 = time.monotonic()
            while not any(e.type == "log" and e.data.get("line") == "hello" for e in svc.events(ALICE, job.id)):
                assert time.monotonic() - t0 < 20, "the job's first line never came"
                await asyncio.sleep(0.005)
            seen_after = time.monotonic() - t0
            start = len(passes)
            await asyncio.sleep(1.0)
            busy = len(passes) - start
            return idle, seen_after, busy
        finally:
            await svc.stop()

    idle, seen_after, busy = asyncio.run(scenario())
    assert idle <= 5, f"{idle} tail passes in 3 idle seconds"  # was ~300 (every 10 ms)
    assert busy >= 10, f"only {busy} tail passes in a second while a job ran"  # live logs stay live
    assert seen_after < 5.0


def test_scheduling_passes_while_a_job_runs_do_not_query_the_store_for_active_jobs(tmp_path: Path) -> None:
    async def scenario() -> int:
        svc = _service(tmp_path)
        await svc.start()
        try:
            spec = JobSpec(kind="command", gpus=0, command=["sleep", "5"])
            job, _ = await svc.submit(ALICE, SubmitRequest(spec=spec))
            t0 = time.monotonic()
            while svc.get_job(ALICE, job.id).state.value != "running":
                assert time.monotonic() - t0 < 20
                await asyncio.sleep(0.05)
            assert svc.store is not None
            queries: list[Any] = []
            inner = svc.store.list

            def counted(*a: Any, **kw: Any) -> Any:
                if tuple(kw.get("states") or ()) == tuple(ACTIVE_STATES):
                    queries.append(kw)
                return inner(*a, **kw)

            svc.store.list = counted  # type: ignore[method-assign]
            for _ in range(20):
                svc.tick()  # synchronous: the tail loop does not run meanwhile
            svc.store.list = inner  # type: ignore[method-assign]
            svc.cancel(ALICE, job.id)
            return len(queries)
        finally:
            await svc.stop()

    assert asyncio.run(scenario()) == 0


def test_stop_ends_the_loops_even_when_they_are_woken_in_the_same_turn(tmp_path: Path) -> None:
    """A server stopping while a job is submitted or launched: its loops are woken and cancelled
    in the same loop turn. With ``asyncio.wait_for`` (Python 3.11) the wake-up won and the loop
    went on, so ``stop()`` never returned and the server hung on SIGTERM until killed."""
    async def scenario() -> list[bool]:
        ended = []
        for wake in ("_wake", "_tail_wake", "both"):
            svc = _service(tmp_path / wake)
            await svc.start()
            await asyncio.sleep(0.2)  # both loops asleep on their events
            for name in (("_wake", "_tail_wake") if wake == "both" else (wake,)):
                getattr(svc, name).set()
            stopping = asyncio.ensure_future(svc.stop())
            done, _ = await asyncio.wait({stopping}, timeout=10)
            ended.append(bool(done))
            if not done:
                return ended  # its loops run on: a further service would only add to them
        return ended

    loop = asyncio.new_event_loop()  # not asyncio.run: it would wait forever on loops that never end
    ended = loop.run_until_complete(scenario())
    if all(ended):
        loop.close()
    assert ended == [True, True, True], "stop() did not end the service's loops (woken by: _wake, _tail_wake, both)"
