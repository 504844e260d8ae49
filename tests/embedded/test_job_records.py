"""What a job writes in its attempt folder is the job's: in embedded mode it runs as the Jupyter
server's own user and may write any bytes to its ``error.json`` and ``result.json``, and lines of
any shape to the ``events.jsonl`` the server reads. A real service runs real jobs that do; each
must end with a clear message, with no traceback in the server's log and no job left running."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller

ALICE = Caller("alice")

WRITES = r'''
import os, sys
d = os.environ["GPUQUEUE_ATTEMPT_DIR"]
what = sys.argv[1]
if what == "error-bytes":
    open(d + "/error.json", "wb").write(b"\xff\x00{not json")
elif what == "error-shape":
    open(d + "/error.json", "w").write('{"kind": "no type nor message"}')
elif what == "error-list":
    open(d + "/error.json", "w").write('[1, 2, 3]')
elif what == "error-deep":
    open(d + "/error.json", "w").write('[' * 5000 + ']' * 5000)
elif what == "error-fifo":
    os.mkfifo(d + "/error.json")
elif what == "events":
    with open(d + "/events.jsonl", "a") as f:  # the runner's own file: the job's user may write it
        f.write('[1]\n"text"\n{"t": "soon", "type": "log", "data": {"stream": "stdout", "line": "forged"}}\n')
        f.write('{"type": "log", "data": [1]}\n{"type": 7, "data": {}}\n{"type": "exit", "data": 5}\n')
        f.write('{"type": "runner", "data": "x"}\n')
    print("after the odd lines", flush=True)
    sys.exit(0)
elif what == "result":
    open(d + "/result.json", "w").write('{"names": 5, "unreturnable": [1]}')
    sys.exit(0)
print("wrote", what, flush=True)
sys.exit(1)
'''


def _service(tmp_path: Path) -> QueueService:
    cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 1})}, warm_imports=[], retries=0)
    return QueueService(tmp_path / "state", cfg)


@pytest.mark.parametrize("what", ["error-bytes", "error-shape", "error-list", "error-deep", "error-fifo",
                                  "events", "result"])
def test_a_job_writing_malformed_records_ends_with_a_clear_message(tmp_path: Path, what: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "writes.py"
    script.write_text(WRITES)

    async def scenario() -> tuple[Any, list[Any]]:
        svc = _service(tmp_path)
        await svc.start()
        try:
            spec = JobSpec(kind="command", gpus=0, command=[sys.executable, str(script), what])
            job, _ = await svc.submit(ALICE, SubmitRequest(spec=spec))
            t0 = time.monotonic()
            while not svc.get_job(ALICE, job.id).state.is_terminal:
                assert time.monotonic() - t0 < 30, f"the job never ended: {svc.get_job(ALICE, job.id)}"
                await asyncio.sleep(0.05)
            return svc.get_job(ALICE, job.id), svc.events(ALICE, job.id)
        finally:
            await svc.stop()

    with caplog.at_level(logging.INFO, logger="gpuqueue"):
        job, events = asyncio.run(scenario())
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, f"the server logged: {[r.getMessage() for r in bad]}"
    if what == "events":  # the odd lines are skipped; the job's own output and its end come through
        assert job.state.value == "succeeded", job
        lines = [e.data.get("line") for e in events if e.type == "log"]
        assert "after the odd lines" in lines and "forged" in lines, lines
        return
    if what == "result":
        assert job.state.value == "succeeded", job
        assert job.result_names == [] and job.unreturnable == {}
        return
    assert job.state.value == "failed", job
    assert job.error is not None and job.error.startswith("the job process exited with code 1"), job.error
    if what == "error-fifo":  # not a regular file: not read (a FIFO would block the server)
        assert "malformed" not in job.error
    else:
        assert "error record (error.json in the attempt's folder) is malformed" in job.error, job.error
