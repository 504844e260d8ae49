"""A server whose user never submits starts no warm runner (no interpreter importing torch for
nothing); after the first submit one is kept ready for the next job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller


def _runner_children() -> list[int]:
    """This process's children that are queue runners."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in kids:
            try:
                if b"gpuqueue.attempt.runner" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


def test_no_warm_runner_until_the_first_submit(tmp_path: Path) -> None:
    cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 1})}, warm_imports=[])

    async def scenario() -> tuple[list[int], list[int]]:
        svc = QueueService(tmp_path / "state", cfg)
        await svc.start()
        try:
            await asyncio.sleep(2.5)  # a few scheduling passes
            idle = _runner_children()
            job, _ = await svc.submit(Caller("alice"), SubmitRequest(spec=JobSpec(kind="command", gpus=0, command=["true"])))
            for _ in range(100):
                if svc.get_job(Caller("alice"), job.id).state.is_terminal:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # the next pass starts a runner for the next job
            used = _runner_children()
            return idle, used
        finally:
            await svc.stop()

    idle, used = asyncio.run(scenario())
    assert idle == []
    assert len(used) == 1  # the one warm runner, waiting for the next job
