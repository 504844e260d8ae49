"""Embedded mode: the submit-time check of ``--resume-from JOB_ID`` lists the source job's
checkpoint folders (``gpuqueue.attempt.resume.local_checkpoints``). A job that saved very many
held the Jupyter server's event loop, which serves every user, for as long as that took: the
check now lists them in a thread, and the loop goes on serving meanwhile."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from gpuqueue.attempt.jobdir import job_dir
from gpuqueue.attempt.resume import local_checkpoints
from gpuqueue.embedded.service import QueueService
from gpuqueue.job.checkpoint import MARKER
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.states import JobState
from gpuqueue.queue.verbs import Caller

ALICE = Caller("alice")
RUNS, STEPS = 100, 500  # 50,000 checkpoint folders: about half a second to list on a quiet machine


def test_a_resume_check_of_a_job_with_very_many_checkpoints_does_not_stall_the_server(tmp_path: Path) -> None:
    async def scenario() -> tuple[float, float, JobState]:
        cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 1})}, warm_imports=[])
        svc = QueueService(tmp_path / "state", cfg)
        await svc.start()
        try:
            src, _ = await svc.submit(ALICE, SubmitRequest(spec=JobSpec(kind="command", gpus=0, command=["true"])))
            t0 = time.monotonic()
            while not svc.get_job(ALICE, src.id).state.is_terminal:
                assert time.monotonic() - t0 < 60, "the source job never ended"
                await asyncio.sleep(0.05)
            root = job_dir(svc.state_dir, src.id) / "checkpoints"  # what a job that saved this many leaves
            for n in range(RUNS):
                for s in range(STEPS):
                    os.makedirs(root / f"run{n}" / f"step-{s:09d}")
            (root / "run7" / f"step-{42:09d}" / MARKER).write_text("")
            t0 = time.monotonic()
            assert len(local_checkpoints(job_dir(svc.state_dir, src.id))) == 1
            listing_s = time.monotonic() - t0

            stalls: list[float] = []
            done = asyncio.Event()

            async def other_users() -> None:  # the loop's turns while the submit is checked
                last = time.monotonic()
                while not done.is_set():
                    await asyncio.sleep(0.002)
                    now = time.monotonic()
                    stalls.append(now - last)
                    last = now

            ticker = asyncio.ensure_future(other_users())
            await asyncio.sleep(0.01)
            spec = JobSpec(kind="command", gpus=0, command=["true"], resume_from=f"{src.id}/step-42")
            job, _ = await svc.submit(ALICE, SubmitRequest(spec=spec))  # accepted: its checkpoint is there
            done.set()
            await ticker
            return listing_s, max(stalls), svc.get_job(ALICE, job.id).state
        finally:
            await svc.stop()

    listing_s, longest_stall, state = asyncio.run(scenario())
    assert state in (JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED), state
    # was: the loop stalled for the whole listing (longest_stall about listing_s)
    assert longest_stall < max(0.1, listing_s / 3), (longest_stall, listing_s)
