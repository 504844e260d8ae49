"""Finished jobs are deleted ``keep_finished`` after they end (embedded mode; the cluster's
scheduler does the same with ``--keep-finished``): record, events and folder (payload, logs,
results, checkpoints), never a live job's nor a recent one's. In process (the service and its
SQLite store, real runners), and through a real Jupyter server (its setting, a bad value)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.queue.durations import parse_retention
from gpuqueue.queue.errors import NotFound
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller
from helpers.servers import JupyterServer, wait_until

ALICE = Caller("alice")
SAVE = "import gpuqueue; gpuqueue.Checkpointer().save(1, writer=lambda d: open(d + '/w.bin', 'wb').write(b'w' * 100000))"


def test_a_finished_job_goes_with_its_folder_once_kept_long_enough(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 2})}, warm_imports=[])
        svc = QueueService(tmp_path / "state", cfg, keep_finished=2.0)
        await svc.start()
        try:
            async def submit(*cmd: str) -> str:
                job, _ = await svc.submit(ALICE, SubmitRequest(spec=JobSpec(kind="command", gpus=1, command=list(cmd))))
                return job.id

            live = await submit(sys.executable, "-c", "import time; time.sleep(60)")
            done = await submit(sys.executable, "-c", SAVE)
            folder = svc.state_dir / "jobs" / done
            t0 = time.monotonic()
            while svc.get_job(ALICE, done).state.value != "succeeded":
                assert time.monotonic() - t0 < 30, "the short job never ended"
                await asyncio.sleep(0.05)
            ended = svc.get_job(ALICE, done).updated_at  # the record's end, not when this loop saw it
            assert list(folder.glob("checkpoints/*/step-*/w.bin")), "the job saved no checkpoint"
            assert svc.events(ALICE, done)
            # kept for 2 s after its end, then gone: record, events, folder
            while True:
                try:
                    svc.get_job(ALICE, done)
                except NotFound:
                    break
                assert folder.exists(), "the folder went before the record"
                assert time.monotonic() - t0 < 30, "the finished job was never deleted"
                await asyncio.sleep(0.05)
            assert time.time() - ended >= 2.0
            while folder.exists():  # deleted right after the record, off the event loop
                assert time.monotonic() - t0 < 30, "the finished job's folder stayed"
                await asyncio.sleep(0.05)
            assert svc.store is not None and svc.store.read_events(done) == []
            assert done not in [j.id for j in svc.list_jobs(ALICE)]
            # the running job, older than 2 s by now, stays with its folder
            assert svc.get_job(ALICE, live).state.value == "running"
            assert (svc.state_dir / "jobs" / live).is_dir()
            svc.cancel(ALICE, live)
            while svc.get_job(ALICE, live).state.value != "cancelled":
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            assert svc.get_job(ALICE, live).state.value == "cancelled"  # just ended: kept
        finally:
            await svc.stop()

    asyncio.run(scenario())


def test_retention_values() -> None:
    assert parse_retention("30d") == 30 * 86400.0 and parse_retention("12h") == 43200.0
    for keep in ("forever", "never", "0", "none", "Forever"):
        assert parse_retention(keep) is None
    with pytest.raises(ValueError, match=r"cannot read duration 'a month'.*or 'forever'"):
        parse_retention("a month")


def test_the_servers_setting_and_a_bad_value(tmp_path: Path) -> None:
    bad = JupyterServer(tmp_path / "bad", args=["--GPUQueueApp.keep_finished=a month"]).start()
    bad.stop()
    log = bad.log_path.read_text()
    assert ("gpuqueue: GPUQueueApp.keep_finished: cannot read duration 'a month': write e.g. 90s, 15m, 2h, "
            "1h30m or 2d (or 'forever' to keep finished jobs); until it is fixed, finished jobs are kept") in log
    assert "Traceback" not in log
    server = JupyterServer(tmp_path / "ok", args=["--GPUQueueApp.keep_finished=1s"]).start()
    try:
        c = server.client()
        job = c.submit({"kind": "command", "command": [sys.executable, "-c", "print('hi')"], "gpus": 1})["id"]
        wait_until(lambda: c.get(job)["state"] == "succeeded", 30, 0.1, "the job to succeed")
        gone = wait_until(lambda: (x := server.api("GET", f"gpuqueue/api/jobs/{job}")).status_code == 404 and x.text,
                          30, 0.1, "the finished job deleted")
        assert f"no job '{job}'" in gone, gone
        wait_until(lambda: not (server.state_dir / "jobs" / job).exists()
                   and "deleted 1 job that finished over 1s ago" in server.log_path.read_text(),
                   10, 0.05, "the job's folder deleted and the deletion logged")
    finally:
        server.stop()
