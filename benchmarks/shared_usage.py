"""What counting a user's checkpoints on the shared root (``max_shared_gb``) costs a push.

Starts its own redis-server on a free port (no persistence), gives a user ``--jobs`` jobs with
checkpoints on the root (their entries in ``shared:used:<user>``), publishes a queue config,
and times ``UserShare.take`` (the config's GET and the Lua script: what each checkpoint copied
to the root waits for, and what Redis is busy with for every user meanwhile), within the bound
and refused, then ``give``. Prints the median and p99 in ms for each count of jobs::

    PYTHONPATH=backend python benchmarks/shared_usage.py --jobs 10,1000,10000

On the 2-core development VM (busy with other work): take p50 0.26-0.33 ms, p99 0.5-0.9 ms, give
p50 0.13-0.17 ms, for 10 to 10,000 jobs (the total is kept in the hash, not summed).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import redis

from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.cluster.shared_usage import SharedUsage
from gpuqueue.queue.config import QueueConfig


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(store: RedisStore, jobs: int, rounds: int) -> dict[str, list[float]]:
    """Times (ms) of takes within the bound, refused takes and gives, the user holding ``jobs``."""
    usage = SharedUsage(store)
    p = store.r.pipeline(transaction=False)
    for i in range(jobs):
        p.hset(store.k("shared", "used", "alice"), f"j-{i:012x}", 1000)
    p.hset(store.k("shared", "used", "alice"), "total", 1000 * jobs)
    p.execute()
    share = usage.for_job("j-bench", "alice")
    out: dict[str, list[float]] = {"take": [], "refused": [], "give": []}
    for i in range(rounds):
        step = f"t/step-{i:09d}"
        t = time.perf_counter()
        assert share.take(step, 100, [step]) is None
        out["take"].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        assert share.take("u/step-000000001", 10**12, [step]) is not None
        out["refused"].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        share.give([step])
        out["give"].append((time.perf_counter() - t) * 1e3)
    store.r.delete(store.k("shared", "used", "alice"), store.k("shared", "job", "j-bench"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default="10,1000,10000", help="counts of the user's jobs on the root")
    ap.add_argument("--rounds", type=int, default=500)
    args = ap.parse_args()
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
        store = RedisStore(url, "gq")
        cfg = QueueConfig.model_validate({"pools": {"gpu": {"nodes": {"n1": 1}}},
                                          "users": {"alice": {"max_shared_gb": 100}}})
        store.r.set(store.k("config"), cfg.model_dump_json())
        print(f"{'jobs':>7} {'take p50':>9} {'p99':>7} {'refused p50':>12} {'p99':>7} {'give p50':>9} {'p99':>7}  (ms)")
        for n in (int(x) for x in args.jobs.split(",")):
            m = measure(store, n, args.rounds)
            cells = []
            for k in ("take", "refused", "give"):
                xs = sorted(m[k])
                cells += [statistics.median(xs), xs[int(len(xs) * 0.99) - 1]]
            print(f"{n:>7} {cells[0]:>9.3f} {cells[1]:>7.3f} {cells[2]:>12.3f} {cells[3]:>7.3f} {cells[4]:>9.3f} "
                  f"{cells[5]:>7.3f}", flush=True)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
