"""A submit the queue refuses (the user's queue is full: ``max_queued``) costs no token of the
user's submit bucket: once the queue drains, the rest of the burst is still there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import QueueConfig
from gpuqueue.queue.errors import RateLimited, Rejected
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller

ALICE = Caller("alice")


def test_refused_submits_leave_the_burst(tmp_path: Path) -> None:
    cfg = QueueConfig.model_validate({
        "pools": {"default": {"nodes": {"local": 1}}},
        "defaults": {"max_queued": 1, "submit_rate": "1/h", "submit_burst": 4},
        "warm_imports": [],
    })

    async def scenario() -> None:
        svc = QueueService(tmp_path / "state", cfg, gpus=1)
        await svc.start()
        try:
            def sub(cmd: str) -> SubmitRequest:
                return SubmitRequest(spec=JobSpec(kind="command", gpus=1, command=["sh", "-c", cmd]))

            async def until(job_id: str, *states: str) -> None:
                for _ in range(300):
                    if svc.get_job(ALICE, job_id).state.value in states:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"job {job_id} never got to {states}")

            first, _ = await svc.submit(ALICE, sub("sleep 60"))
            await until(first.id, "starting", "running")  # it holds the one GPU
            second, _ = await svc.submit(ALICE, sub("sleep 60"))  # queued: the queue is full now
            for _ in range(5):
                with pytest.raises(Rejected, match="you have 1 queued job, the limit"):
                    await svc.submit(ALICE, sub("true"))
            svc.cancel(ALICE, second.id)
            svc.cancel(ALICE, first.id)
            await until(first.id, "cancelled")
            # 2 of the burst of 4 were used by accepted jobs, none by the 5 refused ones
            third, _ = await svc.submit(ALICE, sub("sleep 60"))
            await until(third.id, "starting", "running")
            await svc.submit(ALICE, sub("true"))  # queued behind it
            with pytest.raises(RateLimited):
                await svc.submit(ALICE, sub("true"))
            svc.cancel(ALICE, third.id)
            await until(third.id, "cancelled")
        finally:
            await svc.stop()

    asyncio.run(scenario())
