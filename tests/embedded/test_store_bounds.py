"""What one user's finished jobs keep in the embedded queue's store (its SQLite file and state
folder, which every user of the server shares): results within ``max_results_mb``, at most
``max_finished`` finished jobs, and the default submit rate. In process: the service and its
SQLite store, real runners (tests/cluster/test_store_bounds.py does the same against Redis)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from gpuqueue.embedded.service import QueueService
from gpuqueue.job.payload import build_payload, unpack_results
from gpuqueue.queue.config import PoolConfig, QueueConfig, UserLimits
from gpuqueue.queue.errors import Gone, NotFound, RateLimited
from gpuqueue.queue.models import JobSpec, SubmitRequest
from gpuqueue.queue.verbs import Caller
from helpers.servers import wait_until

ALICE, BOB = Caller("alice"), Caller("bob")


async def _finished(svc: QueueService, who: Caller, job_id: str) -> str:
    t0 = time.monotonic()
    while not (state := svc.get_job(who, job_id).state).is_terminal:
        assert time.monotonic() - t0 < 60, f"job {job_id} never ended"
        await asyncio.sleep(0.05)
    return state.value


async def _cell(svc: QueueService, who: Caller, nbytes: int) -> str:
    payload, inputs, outputs = build_payload(f"x = b'r' * {nbytes}", {}, inputs=[], outputs=["x"])
    req = SubmitRequest(spec=JobSpec(kind="cell", gpus=0, retries=0, inputs=inputs, outputs=outputs))
    req._payload = payload
    job, _ = await svc.submit(who, req)
    assert await _finished(svc, who, job.id) == "succeeded", svc.get_job(who, job.id)
    return job.id


def _service(tmp_path: Path, **limits: object) -> QueueService:
    cfg = QueueConfig(pools={"default": PoolConfig(nodes={"local": 1})}, defaults=UserLimits(**limits), warm_imports=[])
    return QueueService(tmp_path / "state", cfg)


def test_results_are_kept_within_max_results_mb_oldest_dropped_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        svc = _service(tmp_path, max_results_mb=4)
        await svc.start()
        try:
            first = await _cell(svc, ALICE, 1_500_000)
            bobs = await _cell(svc, BOB, 1_500_000)
            second = await _cell(svc, ALICE, 1_500_000)
            third = await _cell(svc, ALICE, 1_500_000)  # 4.5 MB: the oldest goes
            with pytest.raises(Gone, match=r"max_results_mb.*") as e:
                svc.result(ALICE, first)
            assert e.value.http_status == 410 and "4 MB" in str(e.value)
            assert not list((svc.state_dir / "jobs" / first).rglob("result.pkl"))
            assert svc.get_job(ALICE, first).state.value == "succeeded"
            for who, job in ((ALICE, second), (ALICE, third), (BOB, bobs)):
                assert unpack_results(svc.result(who, job))[0] == {"x": b"r" * 1_500_000}
            big = await _cell(svc, ALICE, 5_000_000)  # over the whole allowance: not kept, nothing else goes
            with pytest.raises(Gone, match="were not kept: they are over the 4 MB"):
                svc.result(ALICE, big)
            assert unpack_results(svc.result(ALICE, second))[0] == {"x": b"r" * 1_500_000}
        finally:
            await svc.stop()

    asyncio.run(scenario())


def test_a_user_keeps_at_most_max_finished_jobs(tmp_path: Path) -> None:
    async def scenario() -> None:
        svc = _service(tmp_path, max_finished=3)
        await svc.start()
        try:
            async def submit(who: Caller) -> str:
                spec = JobSpec(kind="command", gpus=1, command=["sleep", "60"])
                return (await svc.submit(who, SubmitRequest(spec=spec)))[0].id

            running = await submit(ALICE)  # holds the one GPU: what follows waits
            bobs = await submit(BOB)
            ids = [await submit(ALICE) for _ in range(6)]
            svc.cancel(BOB, bobs)
            for i in ids:
                svc.cancel(ALICE, i)
            for i in ids[:3]:
                with pytest.raises(NotFound):
                    svc.get_job(ALICE, i)
                assert not (svc.state_dir / "jobs" / i).exists() or await _gone(svc.state_dir / "jobs" / i)
            assert sorted(j.id for j in svc.list_jobs(ALICE)) == sorted([running, *ids[3:]])
            assert svc.get_job(BOB, bobs).state.value == "cancelled"  # another user's stays
            svc.cancel(ALICE, running)
        finally:
            await svc.stop()

    asyncio.run(scenario())


async def _gone(folder: Path) -> bool:
    t0 = time.monotonic()
    while folder.exists():
        assert time.monotonic() - t0 < 10, f"{folder} stayed"
        await asyncio.sleep(0.05)
    return True


def test_the_default_submit_rate_holds_in_the_embedded_queue(tmp_path: Path) -> None:
    async def scenario() -> None:
        svc = _service(tmp_path, max_queued=1000)
        await svc.start()
        try:
            spec = JobSpec(kind="command", gpus=1, command=["true"])
            with pytest.raises(RateLimited, match=r"10/s \(bursts of 100\).*submit_rate"):
                for _ in range(200):
                    await svc.submit(ALICE, SubmitRequest(spec=spec))
        finally:
            await svc.stop()

    asyncio.run(scenario())


def test_logs_are_kept_within_max_logs_mb_and_a_dropped_jobs_logs_say_so(jupyter_server_factory, tmp_path: Path) -> None:
    """Each attempt may keep up to GPUQUEUE_MAX_OUTPUT_MB (256 MB) of output, twice (its
    events.jsonl and the SQLite rows), for every finished job the user keeps. Now the output of
    a user's finished jobs takes at most ``max_logs_mb``: a new job's drops the oldest first,
    and where a dropped job's logs are read (``%gpuqueue logs``, ``%gpuqueue attach``, the REST
    events) a line says why, naming the knob; its state records stay."""
    cfg = tmp_path / "queue.toml"
    cfg.write_text("[defaults]\nmax_logs_mb = 1.5\n[pools.default]\nnodes = { local = 1 }\n")
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    client = server.client()

    def printed(tag: str, lines: int) -> str:
        code = (f"import gpuqueue; from gpuqueue.job import jobapi; gpuqueue.log(step=1, loss=0.5); "
                f"jobapi.emit('checkpoint', {{'step': 1, 'path': '/ck/{tag}', 'name': 'default'}}); "
                f"[print('{tag} %d ' % i + 'x' * 200) for i in range({lines})]")
        job = client.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", code]})["id"]
        t0 = time.monotonic()
        while client.get(job)["state"] not in ("succeeded", "failed", "cancelled", "timed_out"):
            assert time.monotonic() - t0 < 60, client.get(job)
            time.sleep(0.05)
        assert client.get(job)["state"] == "succeeded", client.get(job)
        return job

    first = printed("first", 2500)  # about 0.7 MB of records each
    second = printed("second", 2500)
    assert not client.get(first)["logs_dropped"]
    third = printed("third", 2500)  # over 1.5 MB: the oldest goes
    rec = client.get(first)
    assert rec["state"] == "succeeded" and "max_logs_mb" in rec["logs_dropped"], rec
    assert not list((server.state_dir / "jobs" / first).rglob("events.jsonl"))

    def output_rows(job: str) -> int:  # the server deletes them from SQLite a chunk at a time
        db = sqlite3.connect(f"file:{server.state_dir / 'queue.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COUNT(*) FROM events WHERE job_id=? AND type IN ('log', 'progress', 'metrics')",
                              (job,)).fetchone()[0]
        finally:
            db.close()

    wait_until(lambda: output_rows(first) == 0, 10, 0.1, "the dropped job's output rows to go")
    assert output_rows(second) > 2500  # a kept job's stay

    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    shown = k.run(f"%gpuqueue logs {first}")
    assert "the logs of this job" in shown.stdout and "were dropped to keep your stored output within 1.5 MB " \
           "(max_logs_mb in the queue config)" in shown.stdout, shown.text
    assert "first 0 " not in shown.text
    attached = k.run(f"%gpuqueue attach {first}")  # the cell view: the line, then the job's end
    assert "max_logs_mb" in attached.text and "[gpuqueue] succeeded" in attached.text and "first 0 " not in attached.text, attached.text
    kept = k.run(f"%gpuqueue logs {second}")
    assert "second 0 " in kept.stdout and "second 2499 " in kept.stdout and "dropped" not in kept.text

    events = server.api("GET", f"gpuqueue/api/jobs/{first}/events")
    assert events.status_code == 200, events.text
    evs = events.json()["events"]
    assert evs[0]["type"] == "log" and "max_logs_mb" in evs[0]["data"]["line"], evs[:2]
    assert not [e for e in evs[1:] if e["type"] in ("log", "progress", "metrics")], evs
    assert [e["data"]["state"] for e in evs if e["type"] == "state"][-1] == "succeeded"
    assert [e["data"]["path"] for e in evs if e["type"] == "checkpoint"] == ["/ck/first"]  # kept: it is no output
    assert "    saved on node local: /ck/first" in k.run(f"%gpuqueue checkpoints {first}").stdout
    assert "third 2499 " in k.run(f"%gpuqueue logs {third}").stdout


def test_the_inputs_a_users_unfinished_cells_hold_are_bounded(jupyter_server_factory, tmp_path: Path) -> None:
    """The embedded queue keeps each cell's payload (up to the server's max_payload_mb, 200 MB)
    in its state folder until the job is deleted, and a user may have max_queued (1000) jobs
    waiting: the server's disk for one user's inputs. Now, as in a cluster, the inputs of a
    user's unfinished jobs take at most ``max_inputs_mb`` together: a submit past it is refused
    (400, nothing stored) with the cluster's message, naming the knob, and a job that ends frees
    its room."""
    from gpuqueue.queue.errors import GPUQueueError

    cfg = tmp_path / "queue.toml"
    cfg.write_text("[defaults]\nmax_inputs_mb = 10\n[pools.default]\nnodes = { local = 1 }\n")
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    client = server.client()
    blocker = client.submit({"kind": "command", "gpus": 1, "command": [sys.executable, "-c", "import time; time.sleep(60)"]})["id"]
    payload, inputs, outputs = build_payload("y = len(x)", {"x": b"p" * 4_000_000})
    spec = {"kind": "cell", "gpus": 1, "inputs": inputs, "outputs": outputs}
    ids = [client.submit(spec, payload, new=True)["id"] for _ in range(2)]  # 8 MB wait behind the blocker
    with pytest.raises(GPUQueueError) as e:
        client.submit(spec, payload, new=True)
    assert e.value.http_status == 400, (e.value.http_status, str(e.value))
    assert str(e.value).endswith(
        "the inputs of your unfinished cell jobs take 8.0 MB in the queue's store; this cell's (4.0 MB) would "
        "pass your limit of 10 MB (max_inputs_mb in the queue config): wait for some to end or cancel some, "
        "or pass big data as a file path on shared storage"), str(e.value)
    assert len(client.list()) == 3 and len(list((server.state_dir / "jobs").glob("*/payload.pkl"))) == 2
    client.cancel(ids[0])
    assert client.submit(spec, payload, new=True)["id"]  # a job that ended frees its room
    assert client.submit({"kind": "command", "gpus": 1, "command": ["true"]})["id"]  # a command holds no input
    client.cancel(blocker)
