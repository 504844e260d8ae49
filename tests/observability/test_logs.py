"""Structured logs: JSON records carry the job, user, attempt and node; a human format for terminals."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys

import pytest

from gpuqueue.observability.logs import bind, job_fields, log_context, resolve_format, setup_logging
from gpuqueue.queue.models import Attempt, JobRecord, JobSpec


@pytest.fixture
def logger():
    """A logger of our own, configured by setup_logging, restored afterwards."""
    name = "gpuqueue.test_logs"
    lg = logging.getLogger(name)
    yield name
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.propagate = True
    bind(component=None, node=None, pool=None)


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_records_carry_the_job(logger: str) -> None:
    buf = io.StringIO()
    setup_logging("json", "DEBUG", stream=buf, component="worker", node="gpu-07", logger=logger)
    log = logging.getLogger(logger + ".child")
    job = JobRecord(id="j-3f9c2a71d0b4", owner="ana", spec=JobSpec(kind="command", command=["true"]),
                    attempts=[Attempt(number=2, node="gpu-03", started_at=0.0)])
    log.info("launching %s", "now", extra=job_fields(job))
    with log_context(job_id="j-000000000001", user="bo", attempt=1):
        log.warning("inside a context", extra={"gpus": [0, 1]})
    log.debug("no job here")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed", extra={"job_id": "j-000000000002"})
    recs = lines(buf)
    assert len(recs) == 4
    first = recs[0]
    assert first["message"] == "launching now" and first["level"] == "info"
    assert first["logger"] == logger + ".child"
    assert (first["job_id"], first["user"], first["attempt"], first["node"]) == ("j-3f9c2a71d0b4", "ana", 2, "gpu-03")
    assert first["component"] == "worker" and isinstance(first["pid"], int)
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    second = recs[1]
    assert (second["job_id"], second["user"], second["attempt"]) == ("j-000000000001", "bo", 1)
    assert second["node"] == "gpu-07"  # the process-wide node
    assert second["gpus"] == [0, 1]
    assert "job_id" not in recs[2] and recs[2]["node"] == "gpu-07"
    assert recs[3]["job_id"] == "j-000000000002" and "ValueError: boom" in recs[3]["exc"]


def test_context_is_per_task(logger: str) -> None:
    buf = io.StringIO()
    setup_logging("json", "INFO", stream=buf, logger=logger)
    log = logging.getLogger(logger)

    async def one(jid: str) -> None:
        with log_context(job_id=jid):
            await asyncio.sleep(0.01)
            log.info("tick")

    async def main() -> None:
        await asyncio.gather(one("j-aaaaaaaaaaaa"), one("j-bbbbbbbbbbbb"))

    asyncio.run(main())
    assert sorted(r["job_id"] for r in lines(buf)) == ["j-aaaaaaaaaaaa", "j-bbbbbbbbbbbb"]


def test_human_format(logger: str) -> None:
    buf = io.StringIO()
    setup_logging("human", "INFO", stream=buf, logger=logger)
    logging.getLogger(logger).info("started", extra={"job_id": "j-3f9c2a71d0b4", "user": "ana", "attempt": 2, "node": "gpu-07"})
    line = buf.getvalue().strip()
    assert line.endswith(f"INFO  {logger} [j-3f9c2a71d0b4 ana #2 @gpu-07] started")
    assert not line.startswith("{")


def test_setup_twice_replaces_the_handler(logger: str) -> None:
    buf1, buf2 = io.StringIO(), io.StringIO()
    setup_logging("json", stream=buf1, logger=logger)
    setup_logging("json", stream=buf2, logger=logger)
    logging.getLogger(logger).warning("once")
    assert buf1.getvalue() == "" and len(lines(buf2)) == 1


def test_format_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUQUEUE_LOG_FORMAT", raising=False)
    assert resolve_format(None, io.StringIO()) == "json"  # not a terminal
    monkeypatch.setenv("GPUQUEUE_LOG_FORMAT", "human")
    assert resolve_format(None, io.StringIO()) == "human"
    with pytest.raises(ValueError, match="json, human, auto"):
        resolve_format("xml")
    with pytest.raises(ValueError, match="DEBUG, INFO"):
        setup_logging("json", "LOUD", stream=io.StringIO(), logger="gpuqueue.test_bad_level")


def test_a_process_logs_json_from_the_environment() -> None:
    code = ("import logging; from gpuqueue.observability.logs import setup_logging; setup_logging(component='scheduler'); "
            "logging.getLogger('gpuqueue.x').info('hello', extra={'job_id': 'j-1', 'user': 'u'})")
    env = {"GPUQUEUE_LOG_FORMAT": "json", "GPUQUEUE_LOG_LEVEL": "info", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    rec = json.loads(out.stderr.strip().splitlines()[-1])
    assert rec["message"] == "hello" and rec["component"] == "scheduler" and rec["job_id"] == "j-1"
