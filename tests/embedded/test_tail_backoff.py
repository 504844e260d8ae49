"""The embedded server's tail loop (copying attempts' events.jsonl into SQLite every 10 ms) when a
round keeps failing: it backs off as a cluster worker's does and logs each error once, then goes
on where it stopped. In process: the service, its SQLite store and a real runner; the fault is a
real one (the store's database swapped for one without its tables, then given back)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller

ALICE = Caller("alice")


def test_a_failing_tail_round_backs_off_and_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A tail round that raised was logged with its traceback and tried again 10 ms later, for as
    long as it failed: a store that stayed broken wrote a traceback to the server's log ten
    times a second or more (22 in these 2 s). Now each failure in a row doubles the wait (0.1 s up to
    10 s), one error is logged once, and once the store answers again the job's output is all
    there."""

    async def scenario() -> None:
        cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 1})}, warm_imports=[])
        svc = QueueService(tmp_path / "state", cfg)
        await svc.start()
        try:
            code = "import time\nfor i in range(40):\n    print('line', i, flush=True)\n    time.sleep(0.1)"
            job = (await svc.submit(ALICE, SubmitRequest(spec=JobSpec(kind="command", gpus=0, retries=0,
                                                                      command=[sys.executable, "-c", code]))))[0].id
            t0 = time.monotonic()
            while svc.get_job(ALICE, job).state.value != "running":
                assert time.monotonic() - t0 < 30, svc.get_job(ALICE, job)
                await asyncio.sleep(0.05)
            assert svc.store is not None
            db, svc.store.db = svc.store.db, sqlite3.connect(":memory:")  # no tables: every round raises
            caplog.clear()
            await asyncio.sleep(2.0)
            svc.store.db = db
            failed = [r for r in caplog.records if "reading job events failed" in r.getMessage()]
            assert len(failed) == 1 and "no such table" in failed[0].getMessage(), [r.getMessage() for r in failed]
            t0 = time.monotonic()
            while not svc.get_job(ALICE, job).state.is_terminal:
                assert time.monotonic() - t0 < 30, svc.get_job(ALICE, job)
                await asyncio.sleep(0.05)
            again = [r.getMessage() for r in caplog.records if "job events are read again" in r.getMessage()]
            assert len(again) == 1, again
            rounds = int(again[0].split("after ")[1].split(" failed")[0])
            assert rounds <= 8, again  # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s: 5 or 6 rounds in 2 s
            lines = [e.data["line"] for e in svc.events(ALICE, job) if e.type == "log"]
            assert lines == [f"line {i}" for i in range(40)], lines
            assert svc.get_job(ALICE, job).state.value == "succeeded"
        finally:
            await svc.stop()

    with caplog.at_level(logging.INFO, logger="gpuqueue.service"):
        asyncio.run(scenario())
