"""What a job's end costs the scheduler daemon to keep its owner's stored results and output within
``max_results_mb`` / ``max_logs_mb``, at 10 and at 10,000 kept jobs for that user.

Starts its own redis-server on a free port (no persistence), leads it with a real ``Daemon``
(no workers: nothing is scheduled), and fills one user's kept sets with N finished jobs (records,
1 kB results, a small event stream each), written as the version before the ZSET/total index
wrote them (the hashes alone): the first measured end indexes them, and is reported apart. Then
it times ``Daemon._keep_results_within`` + ``_keep_logs_within`` and the guarded write of their
ops for each of ENDS new job ends, at the steady state where each end drops that user's oldest.

The same script measures the code before the change: run it with that checkout first on
PYTHONPATH (the two methods have the same signature there)::

    PYTHONPATH=/work/main/backend python benchmarks/store_bounds.py        # before
    PYTHONPATH=backend python benchmarks/store_bounds.py                   # after

``--embedded`` also times what the embedded mode reads of the kept sets at a job end (SQLite, both
versions); ``--embedded-lines 1000000`` also times the embedded mode's drop of a job's million log lines
from SQLite (after the change only: it calls the chunked delete).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis

from gpuqueue.cluster import daemon as daemon_mod
from gpuqueue.cluster.daemon import Daemon
from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.queue.config import GROWING, QueueConfig
from gpuqueue.queue.models import JobRecord, JobSpec
from gpuqueue.queue.states import JobState

RESULT_BYTES = 1000


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finished_job(i: int, owner: str) -> JobRecord:
    """A succeeded job's record whose results are stored."""
    job = JobRecord(id=f"j{i:08d}", owner=owner, spec=JobSpec(kind="command", command=["true"]))
    job.state, job.result_bytes = JobState.SUCCEEDED, RESULT_BYTES
    return job


def fill(store: RedisStore, owner: str, n: int, log_bytes: int) -> None:
    """N finished jobs of ``owner`` whose results and output are kept, as the hashes alone."""
    r, now = store.r, time.time() - 10_000
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        job = finished_job(i, owner)
        pipe.set(store.k("job", job.id), job.model_dump_json())
        pipe.set(store.k("result", job.id), b"r" * RESULT_BYTES)
        pipe.xadd(store.k("ev", job.id), {"t": "0", "type": "log", "data": '{"line": "x"}'}, id="1-0")
        pipe.hset(store.k("results", owner), job.id, f"{RESULT_BYTES} {now + i!r}")
        pipe.hset(store.k("logs", owner), job.id, f"{log_bytes} {now + i!r}")
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def end_once(d: Daemon, job: JobRecord) -> float:
    """The bounds part of one job's end, as ``Daemon._attempt_settled`` does it; seconds."""
    t0 = time.perf_counter()
    older: dict[str, JobRecord] = {}
    ops: list[Any] = d._keep_results_within(job, older)
    ops += d._keep_logs_within(job, older)
    ops += [["SET", d.store.k("job", o.id), o.model_dump_json(exclude={"pending"})] for o in older.values()]
    d._exec(ops)
    return time.perf_counter() - t0


def measure(url: str, n: int, ends: int) -> tuple[float, float, float]:
    """(first end, median end, p95 end) in ms with ``n`` kept jobs."""
    store = RedisStore(url, prefix=f"b{n}")
    owner = "alice"
    store.r.xadd(store.k("ev", "probe"), {"t": "0", "type": "log", "data": '{"line": "x"}'}, id="1-0")
    log_bytes = int(store.r.memory_usage(store.k("ev", "probe"), samples=0))
    fill(store, owner, n, log_bytes)
    # limits that hold exactly N jobs: each new end drops the oldest one
    cfg = QueueConfig.model_validate({"pools": {"default": {"nodes": {}}},
                                      "defaults": {"max_results_mb": n * RESULT_BYTES / 1e6,
                                                   "max_logs_mb": n * log_bytes / 1e6}}, context=GROWING)
    d = Daemon(store, cfg, name=f"bench-{n}")
    d.token = store.try_lead(d.name, 60_000)
    assert d.token, "could not take the leader lock"
    times = []
    for k in range(ends + 1):
        job = finished_job(n + k, owner)
        store.r.xadd(store.k("ev", job.id), {"t": "0", "type": "log", "data": '{"line": "x"}'}, id="1-0")
        times.append(end_once(d, job))
    kept = store.r.hlen(store.k("results", owner))
    assert kept == n, f"{kept} results kept, expected {n}"
    assert not store.r.exists(store.k("result", "j00000000")), "the oldest result was not dropped"
    store.r.delete(store.k("leader"))
    store.close()
    steady = sorted(times[1:])
    return times[0] * 1e3, statistics.median(steady) * 1e3, steady[int(len(steady) * 0.95)] * 1e3


def embedded_drop(lines: int) -> None:
    """The embedded mode's drop of one job's ``lines`` output records from SQLite: one DELETE
    (as before) against chunks of ``kept.PRUNE_CHUNK`` (the event loop runs between them)."""
    from gpuqueue.embedded import kept
    from gpuqueue.embedded.store import SqliteStore
    from gpuqueue.queue.bounds import DROPPED_LOG_TYPES

    work = tempfile.mkdtemp(prefix="gq-bench-sqlite-")
    try:
        store = SqliteStore(f"{work}/q.sqlite")
        for job in ("one", "chunks"):
            for _ in range(lines // 10_000):
                store.append_events(job, [(time.time(), "log", {"stream": "stdout", "line": "x" * 200})] * 10_000)
        kinds = sorted(DROPPED_LOG_TYPES)
        t0 = time.perf_counter()
        store.db.execute(f"DELETE FROM events WHERE job_id=? AND type IN ({','.join('?' * len(kinds))})", ("one", *kinds))
        one = time.perf_counter() - t0
        chunks, t0 = [], time.perf_counter()
        while True:
            t1 = time.perf_counter()
            n = store.delete_events_chunk("chunks", DROPPED_LOG_TYPES, kept.PRUNE_CHUNK)
            chunks.append(time.perf_counter() - t1)
            if n < kept.PRUNE_CHUNK:
                break
        print(f"embedded, dropping {lines:,} log lines: one DELETE holds the loop {one * 1e3:.0f} ms; "
              f"{len(chunks)} chunks of {kept.PRUNE_CHUNK}: longest {max(chunks) * 1e3:.1f} ms, "
              f"median {statistics.median(chunks) * 1e3:.1f} ms, {(time.perf_counter() - t0) * 1e3:.0f} ms in all")
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def embedded_reads(sizes: list[int]) -> None:
    """What the embedded mode reads of a user's kept sets at a job's end (both bounds), with N
    finished jobs: before the change ``stored_results`` + ``stored_logs`` (every kept row), after
    it ``kept_results`` + ``kept_logs`` (the total and the oldest page, from partial indexes)."""
    from gpuqueue.embedded.store import SqliteStore

    for n in sizes:
        work = tempfile.mkdtemp(prefix="gq-bench-sqlite-")
        try:
            store = SqliteStore(f"{work}/q.sqlite")
            store.db.execute("BEGIN")
            for i in range(n):
                job = finished_job(i, "alice")
                job.log_bytes = 1000
                store.put(job)
            store.db.execute("COMMIT")
            times = []
            for _ in range(50):
                t0 = time.perf_counter()
                if hasattr(store, "kept_results"):
                    for kept in (store.kept_results, store.kept_logs):
                        next(kept("alice", "new")[1])
                else:  # the code before the change
                    store.stored_results("alice"), store.stored_logs("alice")  # type: ignore[attr-defined]
                times.append(time.perf_counter() - t0)
            print(f"embedded, {n:>6} kept jobs: a job end reads its kept sets in {statistics.median(times) * 1e3:.2f} ms "
                  f"(median of 50)")
            store.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """Print the cost of a job end at each size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,10000", help="kept jobs per user (default %(default)s)")
    ap.add_argument("--ends", type=int, default=200, help="job ends timed per size (default %(default)s)")
    ap.add_argument("--embedded-lines", type=int, default=0,
                    help="also time the embedded mode's drop of one job's output of this many lines, e.g. 1000000")
    ap.add_argument("--embedded", action="store_true", help="also time the embedded mode's reads at a job end")
    args = ap.parse_args()
    if args.embedded_lines:
        embedded_drop(args.embedded_lines)
    if args.embedded:
        embedded_reads([int(x) for x in args.sizes.split(",")])
    port, work = free_port(), tempfile.mkdtemp(prefix="gq-bench-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        print(f"code: {daemon_mod.__file__}")
        print(f"{'kept jobs':>10} {'first end ms':>13} {'median ms':>10} {'p95 ms':>8}")
        for n in (int(x) for x in args.sizes.split(",")):
            first, med, p95 = measure(url, n, args.ends)
            print(f"{n:>10} {first:>13.2f} {med:>10.2f} {p95:>8.2f}", flush=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
