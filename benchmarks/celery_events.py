"""Dispatch latency of the cluster with Celery task events and remote control off and on
(``--celery-events``, what Flower needs).

    python benchmarks/celery_events.py [--jobs 30]

For each setting it starts a real cluster (redis-server with the AOF, the scheduler daemon,
one Celery worker, the API service; the test suite's ``Cluster``), then submits ``--jobs``
jobs one at a time over HTTP and times each from the submit call to its ``running`` event (the
daemon placed it, sent the launch over the broker, the worker claimed it and its process
started). Prints JSON: p50/p90/max per setting and the difference of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster.conftest import Cluster  # noqa: E402
from helpers.servers import RedisServer, wait_until  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run(root: Path, events: bool, jobs: int) -> dict[str, float]:
    """Dispatch latencies (ms) of ``jobs`` jobs on a fresh cluster."""
    redis = RedisServer(root / "redis", appendonly=True).start()
    flag = ("--celery-events",) if events else ()
    c = Cluster(root / "cluster", redis, {"n1": 1}, daemon_args=flag, worker_args=("--identities", "none", *flag))
    try:
        c.start()
        client = c.client("alice")
        lat: list[float] = []
        for i in range(jobs + 3):  # the first three warm up
            t0 = time.time()
            job = c.submit("alice", ticks=0)
            run_t = wait_until(lambda: next((e["time"] for e in client.events(job)
                                             if e["type"] == "state" and e["data"].get("state") == "running"), None),
                               30, 0.005, "the job to run")
            c.wait_done([job])
            if i >= 3:
                lat.append((run_t - t0) * 1000)
        return {"p50_ms": round(statistics.median(lat), 1), "p90_ms": round(pct(lat, 90), 1),
                "max_ms": round(max(lat), 1), "jobs": len(lat)}
    finally:
        c.close()
        redis.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30)
    args = ap.parse_args()
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gq-events-") as tmp:
        for name, events in (("events_off", False), ("events_on", True)):
            out[name] = run(Path(tmp) / name, events, args.jobs)
    out["p50_difference_ms"] = round(out["events_on"]["p50_ms"] - out["events_off"]["p50_ms"], 1)  # type: ignore[assignment]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
