"""How much one hostile user slows every other user of the shared cluster API.

Starts its own ``redis-server`` (no persistence) on a free port and a real ``gpuqueue api``
process on it (a users file with two users, no scheduler: nothing runs), stores a job of the
hostile user with ``--rows`` events (a page of events reads at most 10,000 of them: the most
expensive plain read) and a small job of the victim. Then it times the victim's requests, one
after the other (list, show, events, queue summary, in turn), first alone, then while the hostile
user hammers the events page of its job with ``--hostile`` concurrent readers (a separate
process, so that its own work does not slow the victim's client), and prints the victim's p50
and p99 latency each time, and what the hostile readers got (statuses, pages a second).

The same script measures the code before a change: put that checkout first on PYTHONPATH::

    PYTHONPATH=/work/main/backend python benchmarks/api_fairness.py     # before
    PYTHONPATH=backend python benchmarks/api_fairness.py                # after

On the 2-core development VM, busy with other work (load 3 to 9), 20 hostile readers of a page of
12,000 events: before (blocking reads and the page's JSON on the event loop), the victim's p50
55 s, p99 93 s (``--requests 10``); after (``gpuqueue.cluster.reads``), p50 0.11 s, p99 0.54 s
(``--requests 60``), against 10 ms alone (docs/deploy.md, "Reads per user").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

API = "gpuqueue/api/"
TOKENS = {"victim": "victim-token-1", "hostile": "hostile-token-2"}


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 30) -> None:
    """Until ``url`` answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout} s")
        time.sleep(0.1)


def seed(redis_url: str, rows: int) -> dict[str, str]:
    """A job of each user (the hostile one's with ``rows`` events); user -> job id."""
    from gpuqueue.cluster.redis_store import RedisStore
    from gpuqueue.queue.models import JobRecord, JobSpec
    from gpuqueue.queue.states import JobState

    store = RedisStore(redis_url)
    ids = {}
    for user, n in (("hostile", rows), ("victim", 20)):
        job = JobRecord(id=f"j-{os.urandom(6).hex()}", owner=user, spec=JobSpec(kind="command", command=["true"]))
        job.state = JobState.SUCCEEDED
        store.r.set(store.k("job", job.id), job.model_dump_json())
        store.r.zadd(store.k("owner", user), {job.id: job.created_at})
        store.r.zadd(store.k("jobs"), {job.id: job.created_at})
        pipe = store.r.pipeline(transaction=False)
        line = json.dumps({"stream": "stdout", "line": "step 1234 loss 0.4321 " + "x" * 40})
        for i in range(1, n + 1):
            pipe.xadd(store.k("ev", job.id), {"t": "1", "type": "log", "data": line}, id=f"{i}-0")
            if i % 10_000 == 0:
                pipe.execute()
        pipe.execute()
        ids[user] = job.id
    store.close()
    return ids


def hostile(url: str, job: str, readers: int, stop: Any, out: Any) -> None:
    """``readers`` threads reading the events page of ``job`` until ``stop`` is set; puts
    (status counts, pages read) on ``out``."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def read() -> None:
        s = requests.Session()
        s.headers["Authorization"] = f"token {TOKENS['hostile']}"
        while not stop.is_set():
            try:
                r = s.get(f"{url}{API}jobs/{job}/events?after=0", timeout=120)
                code = r.status_code
            except requests.RequestException:
                code = -1
            with lock:
                statuses[code] += 1

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(statuses))


def victim(url: str, job: str, n: int, token: str = TOKENS["victim"], timeout: float = 120) -> list[float]:
    """Seconds each of ``n`` requests of the user of ``token`` took, one after the other (their
    jobs, ``job``, its events, the queue, in turn); RuntimeError at once where one is not
    answered 200, or not within ``timeout`` seconds. ``tests/cluster/test_reads.py`` times its
    victim with this too."""
    paths = [f"{API}jobs", f"{API}jobs/{job}", f"{API}jobs/{job}/events?after=0", f"{API}queue"]
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    took = []
    for i in range(n):
        path = paths[i % len(paths)]
        t0 = time.perf_counter()
        try:
            r = s.get(url + path, timeout=timeout)
        except requests.Timeout:
            raise RuntimeError(f"the victim's request {path} waited over {timeout:g} s for the API") from None
        took.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"the victim got {r.status_code} for {path}: {r.text[:200]}")
        time.sleep(0.02)
    return took


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def line(what: str, took: list[float]) -> str:
    ms = [t * 1000 for t in took]
    return (f"{what:<28} p50 {pct(ms, 0.5):7.1f} ms   p99 {pct(ms, 0.99):7.1f} ms   max {max(ms):7.1f} ms   "
            f"mean {statistics.mean(ms):6.1f} ms   ({len(ms)} requests)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=12_000, help="events stored for the hostile user's job (default 12000)")
    p.add_argument("--hostile", type=int, default=20, help="concurrent hostile readers (default 20)")
    p.add_argument("--requests", type=int, default=200, help="victim requests per measure (default 200)")
    p.add_argument("--api-args", default="", help="more `gpuqueue api` options, e.g. '--max-reads-per-user 4'")
    args = p.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed", file=sys.stderr, flush=True)
        return 2
    root = Path(tempfile.mkdtemp(prefix="gq-fairness-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        rport, aport = free_port(), free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(root)], stdout=subprocess.DEVNULL))
        redis_url = f"redis://127.0.0.1:{rport}/0"
        users = root / "users.toml"
        users.write_text("".join(f'[[user]]\nname = "{n}"\ntoken = "{t}"\n' for n, t in TOKENS.items()))
        users.chmod(0o600)
        deadline = time.monotonic() + 20
        while True:
            try:
                import redis

                redis.Redis.from_url(redis_url).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        ids = seed(redis_url, args.rows)
        log = open(root / "api.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "api", "--redis", redis_url, "--port",
                                       str(aport), "--users", str(users), "--log-level", "WARNING",
                                       *args.api_args.split()], stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{aport}/"
        wait_for(f"{url}healthz")
        import gpuqueue

        print(f"gpuqueue from {Path(gpuqueue.__file__).parent}; hostile job: {args.rows} events, "
              f"{args.hostile} concurrent readers of its events page")
        victim(url, ids["victim"], 20)  # warm up
        alone = victim(url, ids["victim"], args.requests)
        print(line("victim alone", alone), flush=True)

        ctx = multiprocessing.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        h = ctx.Process(target=hostile, args=(url, ids["hostile"], args.hostile, stop, out))
        t0 = time.monotonic()
        h.start()
        time.sleep(2.0)  # the hostile readers are all in
        loaded = victim(url, ids["victim"], args.requests)
        stop.set()
        statuses = out.get(timeout=300)
        h.join(60)
        spent = time.monotonic() - t0
        print(line(f"victim, {args.hostile} hostile readers", loaded), flush=True)
        ok = statuses.get(200, 0)
        print(f"hostile readers: {dict(sorted(statuses.items()))} in {spent:.1f} s ({ok / spent:.1f} pages/s served)", flush=True)
        tb = "Traceback" in (root / "api.log").read_text(errors="replace")
        print(f"API log: {'a Traceback' if tb else 'no Traceback'}", flush=True)
        return 0
    finally:
        for pr in reversed(procs):
            pr.kill()
            pr.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
