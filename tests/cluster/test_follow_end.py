"""A live follow of a job's events (``ClusterFrontend.follow``: what `gpuqueue logs -f`, a
waiting cell and the sidebar read through the cluster's API) on a real redis-server, with the
job's end landing at the worst moment: right after the follow read the stream and found nothing
new, before it read the job's record. The follow stopped there, without the job's last ``state``
event: one CI run's `gpuqueue logs -f` printed all its lines but not `[gpuqueue] succeeded`."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Callable

from gpuqueue.cluster.frontend import ClusterFrontend
from gpuqueue.cluster.reads import ReadGate
from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.queue.models import JobRecord, JobSpec
from gpuqueue.queue.states import JobState
from gpuqueue.queue.verbs import Caller


def test_a_follow_gives_the_last_state_event_of_a_job_that_ends_between_its_two_reads(
        redis_factory: Callable[..., Any]) -> None:
    """The API's reads run in its read threads (``ReadGate``); with one thread, the test puts the
    job's end (record and ``state`` event in one atomic write, as the daemon does) in the queue
    right behind the follow's read of the stream, so it lands between that read and the next
    (the record's). The follow goes on to give the ``succeeded`` event, then ends."""
    store = RedisStore(redis_factory().url)
    gate = ReadGate(threads=1)
    front = ClusterFrontend(store, reads=gate)
    job = JobRecord(id=f"j-{os.urandom(6).hex()}", owner="alice", spec=JobSpec(kind="command", command=["true"]))
    assert store.submit_job(job, None, {"op": "submit", "job": job.id}) is None
    job.state = JobState.RUNNING
    store.exec(store.job_ops(job) + [store.event_op(job.id, "log", {"stream": "stdout", "line": "tick 24"})])

    def end() -> None:
        job.state = JobState.SUCCEEDED
        store.exec(store.job_ops(job) + [store.event_op(job.id, "state", {"state": "succeeded"})])

    async def follow() -> list[tuple[str, Any]]:
        agen = front.follow(Caller("alice"), job.id)
        seen = [await agen.__anext__(), await agen.__anext__()]  # queued, tick 24: all there is
        hold = threading.Event()
        busy = asyncio.ensure_future(gate.run(hold.wait))  # the only read thread is busy
        await asyncio.sleep(0.05)
        nxt = asyncio.ensure_future(agen.__anext__())  # the follow's next read of the stream waits
        await asyncio.sleep(0.05)
        ending = asyncio.ensure_future(gate.run(end))  # the job's end: right after that read
        await asyncio.sleep(0.05)
        hold.set()
        await busy
        try:
            seen.append(await nxt)
            async for ev in agen:
                seen.append(ev)
        except StopAsyncIteration:
            pass
        await ending
        return [(ev.type, ev.data.get("state") or ev.data.get("line")) for ev in seen if ev is not None]

    try:
        seen = asyncio.run(asyncio.wait_for(follow(), 30))
    finally:
        gate.close()
        store.close()
    assert seen == [("state", "queued"), ("log", "tick 24"), ("state", "succeeded")], seen
