"""Load test of cluster mode: many users submit short jobs through the API service.

    python benchmarks/cluster_load.py [--users 100 --jobs 2000 --workers 3 --gpus 4]

Starts its own redis-server (AOF on), the scheduler daemon, the Celery workers (each declaring
GPUs) and the API service, then ``--clients`` processes with ``--users / --clients`` threads
each submit the jobs over HTTP (one token per user). Every job appends ``start``/``end`` marks
to a shared file, which proves afterwards that

* every job completed exactly once,
* no GPU ever ran two jobs at once and no user ever held more GPUs than the quota,

and gives the dispatch latency: from a GPU going free (the previous job's process ending) to
the next job's process starting on it, counted when work was waiting. Prints submissions/s,
p50/p99 submit latency and p50/p99 dispatch latency. Exit status 0 only if the checks hold.

Jobs sleep 0.5 s by default. Everything here shares one machine, so the jobs' own processes
(a runner and a bash per job) compete with the service for its cores: 12 "GPUs" turning over
``--job-seconds 0.05`` jobs start 240 processes a second, which on 2 cores leaves too little
for the API and the daemon. On a real cluster the jobs run on the GPU nodes. Both figures are
in docs/performance.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests

PY = sys.executable
# The job: bash stamps its start and end with $EPOCHREALTIME (no `date` process to wait for, so
# the start mark is the moment the job's process runs its first command).
JOB = ('echo "start $GQ_USER $GPUQUEUE_JOB_ID $GPUQUEUE_ATTEMPT $GPUQUEUE_NODE $CUDA_VISIBLE_DEVICES $EPOCHREALTIME" >> {marks}; '
       'sleep {secs}; '
       'echo "end $GQ_USER $GPUQUEUE_JOB_ID $GPUQUEUE_ATTEMPT $GPUQUEUE_NODE $CUDA_VISIBLE_DEVICES $EPOCHREALTIME" >> {marks}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def client_proc(url: str, users: list[tuple[int, str, str]], n_users: int, jobs_per_user: int, marks: str,
                secs: float, start_at: float, rate: float, out: "mp.Queue[Any]") -> None:
    """One client process: a thread per user, each with its own keep-alive HTTP connection and
    token. Without ``rate`` each user submits its jobs back to back (a closed loop: the
    throughput test); with ``rate`` (submissions/s over all users) user ``i`` sends its k-th job
    at ``start_at + (k * n_users + i) / rate`` and its latency counts from that moment, so a
    slow answer also delays (and is charged to) the submissions queued behind it."""
    import http.client
    import json
    import threading
    from urllib.parse import urlsplit

    results: list[tuple[str, str, float, float, float]] = []  # (user, job, t_sent, t_answered, latency)
    lock = threading.Lock()
    errors: list[str] = []
    u = urlsplit(url)
    path = f"{u.path.rstrip('/')}/gpuqueue/api/jobs"

    def user_thread(index: int, name: str, token: str) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        cmd = ["/bin/bash", "--norc", "--noprofile", "-c", JOB.format(marks=marks, secs=secs)]
        body = json.dumps({"spec": {"kind": "command", "gpus": 1, "command": cmd, "env": {"GQ_USER": name}}}).encode()
        try:
            conn.connect()  # connected before the clock starts, as a keep-alive client is
        except OSError as e:
            errors.append(f"connect: {e}")
        while time.time() < start_at:
            time.sleep(0.001)
        for k in range(jobs_per_user):
            due = start_at + (k * n_users + index) / rate if rate else 0.0
            if due:
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
            ts = time.time()
            try:
                conn.request("POST", path, body, headers)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                continue
            done = time.time()
            if r.status != 201:
                errors.append(f"{r.status} {data[:200]!r}")
                continue
            with lock:
                results.append((name, json.loads(data)["id"], ts, done, done - (due or ts)))
        conn.close()

    threads = [threading.Thread(target=user_thread, args=u) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.put((results, errors, ru.ru_utime + ru.ru_stime))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--gpus", type=int, default=4, help="GPUs declared per worker")
    ap.add_argument("--quota", type=int, default=2, help="GPUs a user may hold at once")
    ap.add_argument("--job-seconds", type=float, default=0.5, help="how long each job sleeps")
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered load, submissions/s over all users (open loop); default: each user "
                         "submits back to back (closed loop, the most the service takes)")
    ap.add_argument("--api-processes", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--state-on-disk", action="store_true",
                    help="keep the workers' job folders in the work folder (on disk) instead of /dev/shm")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print where the dispatch latency goes, stage by stage (from the runners' "
                         "event files and the Redis streams)")
    ap.add_argument("--identities", default="none",
                    help="the workers' --identities (default none: these jobs run this interpreter and write one "
                         "shared marks file, so they run as the workers' user)")
    ap.add_argument("--workers-after-submit", action="store_true",
                    help="start the workers once every job is submitted (measures the API alone)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gq-load-"))
    # The workers' job folders (what a GPU node keeps on its local disk). On the development VM
    # its ext4 spends ~0.9 ms of CPU on every mkdir and file create (tmpfs: ~0.01 ms), and each
    # job makes seven, which would be charged to the queue; --state-on-disk measures that too.
    shm = Path("/dev/shm")
    nodes_root = work if args.state_on_disk or not shm.is_dir() else Path(tempfile.mkdtemp(prefix="gq-load-", dir=shm))
    marks = work / "marks.txt"
    marks.touch()
    port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    nodes = {f"node{i + 1}": args.gpus for i in range(args.workers)}
    (work / "pools.toml").write_text(
        # a load test: no submit rate limit, and every finished job kept (the checks read them all)
        f"[defaults]\nmax_gpus = {args.quota}\nmax_queued = 100000\nsubmit_rate = \"unlimited\"\nmax_finished = 10000000\n"
        f"[pools.gpu]\nmax_queued = 100000\nnodes = {{ {', '.join(f'{n!r} = {g}'.replace(chr(39), chr(34)) for n, g in nodes.items())} }}\n"
    )
    users = [(f"user{i:03d}", f"token-of-user{i:03d}") for i in range(args.users)]
    (work / "users.toml").write_text("".join(f'[[user]]\nname = "{n}"\ntoken = "{t}"\nadmin = false\n' for n, t in users)
                                     + '[[user]]\nname = "admin"\ntoken = "admin-token-0"\nadmin = true\n')
    procs: list[subprocess.Popen[bytes]] = []
    names: list[str] = []

    def spawn(name: str, argv: list[str]) -> None:
        names.append(name)
        procs.append(subprocess.Popen(argv, stdout=open(work / f"{name}.log", "ab"), stderr=subprocess.STDOUT, cwd=work))

    try:
        spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
                        "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""])
        time.sleep(0.5)
        gq = [PY, "-m", "gpuqueue.cli"]
        spawn("daemon", gq + ["scheduler", "--redis", redis_url, "--config", str(work / "pools.toml"), "--log-level", "WARNING"])
        def start_workers() -> None:
            for n in nodes:
                spawn(f"worker-{n}", gq + ["worker", "--redis", redis_url, "--node", n, "--gpus", str(args.gpus),
                                           "--state-dir", str(nodes_root / n), "--heartbeat", "2", "--log-level", "WARNING",
                                           "--identities", args.identities])

        if not args.workers_after_submit:
            start_workers()
        spawn("api", gq + ["api", "--redis", redis_url, "--port", str(api_port), "--users", str(work / "users.toml"),
                           "--processes", str(args.api_processes)])
        url = f"http://127.0.0.1:{api_port}/"
        admin = requests.Session()
        admin.headers["Authorization"] = "token admin-token-0"
        deadline = time.time() + 60
        while True:
            try:
                q = admin.get(f"{url}gpuqueue/api/queue", timeout=2).json()
                if len(q.get("nodes", {})) == (0 if args.workers_after_submit else len(nodes)) and q.get("pools"):
                    break
            except (requests.RequestException, ValueError):
                pass
            if time.time() > deadline:
                print("the cluster did not come up; logs in", work, file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"cluster up: {len(nodes)} workers x {args.gpus} GPUs, {args.users} users, quota {args.quota} GPUs/user; "
              f"job folders in {nodes_root.parent if nodes_root != work else work}")

        per_user = args.jobs // args.users
        out: "mp.Queue[Any]" = mp.Queue()
        start_at = time.time() + 1.0
        cpu_before, busy_before = _cpu_parts(procs, names), _machine_busy()
        indexed = [(i, n, t) for i, (n, t) in enumerate(users)]
        chunks = [indexed[i :: args.clients] for i in range(args.clients)]
        cps = [mp.Process(target=client_proc, args=(url, ch, len(users), per_user, str(marks), args.job_seconds,
                                                    start_at, args.rate, out)) for ch in chunks]
        for p in cps:
            p.start()
        results: list[tuple[str, str, float, float, float]] = []
        errors: list[str] = []
        client_cpu = 0.0
        for _ in cps:
            r, e, c = out.get()
            results += r
            errors += e
            client_cpu += c
        for p in cps:
            p.join()
        sub_end = max(done for _, _, _, done, _ in results)
        sub_wall = sub_end - start_at
        lats = [lat for *_, lat in results]
        mode = f"offered {args.rate:.0f}/s (open loop)" if args.rate else "back to back (closed loop)"
        print(f"submitted {len(results)} jobs in {sub_wall:.2f}s, {mode}: {len(results) / sub_wall:.0f} submissions/s; "
              f"submit latency p50 {pct(lats, 50) * 1000:.1f} ms, p99 {pct(lats, 99) * 1000:.1f} ms, "
              f"max {max(lats, default=0) * 1000:.1f} ms"
              + (f"; {len(errors)} errors, e.g. {errors[0]}" if errors else ""))
        if args.rate:  # how much of it the client threads' own lateness (a starved client process) makes
            sent = [done - ts for _, _, ts, done, _ in results]
            print(f"  counted from the actual send instead of the scheduled one: p50 {pct(sent, 50) * 1000:.1f} ms, "
                  f"p99 {pct(sent, 99) * 1000:.1f} ms")

        if args.workers_after_submit:
            start_workers()
        ids = {job for _, job, _, _, _ in results}
        submitted_at = {job: done for _, job, _, done, _ in results}  # queued for sure once answered
        t_all = time.time()
        while True:
            done = _ends(marks)
            if len(done & ids) == len(ids) or time.time() - t_all > args.timeout:
                break
            time.sleep(0.25)
        run_wall = time.time() - start_at
        cpu_after, busy = _cpu_parts(procs, names), _machine_busy() - busy_before
        ok = _check(marks, ids, submitted_at, args.quota, args.gpus, run_wall, sub_end)
        _cpu_report(cpu_before, cpu_after, client_cpu, len(results), busy, run_wall + 1.0)
        if args.breakdown:
            _breakdown(marks, nodes_root, redis_url, submitted_at)
        return 0 if ok and not errors else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.keep:
            print("work folder:", work, "" if nodes_root == work else f"(job folders: {nodes_root})")
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(nodes_root, ignore_errors=True)


def _cpu_parts(procs: list[Any], names: list[str]) -> dict[str, float]:
    """CPU seconds each part used so far (its own, its live children's and its reaped
    children's: a worker's runners and their jobs are counted apart from the worker itself)."""
    import psutil

    parts: dict[str, float] = defaultdict(float)
    for name, p in zip(names, procs):
        key = name.split("-")[0]
        try:
            root = psutil.Process(p.pid)
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for q in tree:
            try:
                t = q.cpu_times()
            except psutil.NoSuchProcess:
                continue
            if key == "worker":
                parts[key if q is root else "runners+jobs"] += t.user + t.system
                parts["runners+jobs"] += t.children_user + t.children_system
            else:
                parts[key] += t.user + t.system + t.children_user + t.children_system
    return parts


def _machine_busy() -> float:
    """CPU seconds all processes of the machine have used (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_report(before: dict[str, float], after: dict[str, float], client_cpu: float, n: int,
                busy: float, wall: float) -> None:
    """CPU each part used from the first submission to the last job's end, per job; and what
    the machine's other processes used meanwhile (they compete for the same cores)."""
    parts = {k: after[k] - before.get(k, 0.0) for k in after}
    parts["clients"] = client_cpu
    total = sum(parts.values())
    print("CPU seconds (ms per job): " + ", ".join(f"{k} {v:.1f} ({v / max(n, 1) * 1000:.1f})" for k, v in parts.items())
          + f"; total {total:.1f} ({total / max(n, 1) * 1000:.1f}); "
          f"{total / wall:.2f} of {os.cpu_count()} cores over {wall:.1f}s, other processes "
          f"{max(0.0, busy - total) / wall:.2f} cores")


def _breakdown(marks: Path, work: Path, redis_url: str, submitted_at: dict[str, float]) -> None:
    """Each dispatch gap split into stages: the runner sees its job end and writes the exit
    record; the worker copies it to Redis (the daemon's inbox); the daemon settles it, runs a
    pass and starts the next job; Celery carries the launch to the worker, which forks a runner
    that starts the job process; the job's first command runs."""
    import json

    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    exit_msg: dict[str, float] = {}
    for mid, f in r.xrange("gq:reports") + r.xrange("gq:daemon"):
        m = json.loads(f["m"])
        if m.get("op") == "exit":
            exit_msg[m["job"]] = int(mid.split("-")[0]) / 1000
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    starts: dict[str, tuple[float, str]] = {}
    ends: dict[str, float] = {}
    for line in marks.read_text().splitlines():
        parts = line.split()
        if len(parts) == 7:
            (starts if parts[0] == "start" else ends)[parts[2]] = (float(parts[6]), f"{parts[4]}:{parts[5]}") if parts[0] == "start" else float(parts[6])  # type: ignore[index]
    for job, (_, dev) in starts.items():
        node = dev.split(":")[0]
        try:
            for raw in (work / node / "jobs" / job / "attempt-1" / "events.jsonl").read_text().splitlines():
                rec = json.loads(raw)
                if rec["type"] in ("runner", "exit"):
                    rows[job][rec["type"]] = rec["t"]
        except (OSError, ValueError):
            pass
        for _, f in r.xrange(f"gq:ev:{job}"):
            if f["type"] == "state" and json.loads(f["data"]).get("state") == "starting":
                rows[job]["starting"] = float(f["t"])
    by_dev: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for job, (t, dev) in starts.items():
        by_dev[dev].append((t, job))
    stages: dict[str, list[float]] = defaultdict(list)
    names = ["job end -> runner's exit record", "-> exit message in Redis (worker)", "-> next job starting (daemon)",
             "-> runner started the job (Celery, worker, fork)", "-> job's first command"]
    for seq in by_dev.values():
        seq.sort()
        for (_, a), (s1, b) in zip(seq, seq[1:]):
            e0 = ends.get(a)
            if e0 is None or submitted_at.get(b, 1e18) >= e0:
                continue
            ra, rb = rows.get(a, {}), rows.get(b, {})
            pts = [e0, ra.get("exit"), exit_msg.get(a), rb.get("starting"), rb.get("runner"), s1]
            if any(p is None for p in pts):
                continue
            for name, x, y in zip(names, pts, pts[1:]):
                stages[name].append(y - x)  # type: ignore[operator]
    print("dispatch latency by stage, ms (p50 / p99):")
    for name in names:
        xs = stages[name]
        print(f"  {name:52s} {pct(xs, 50) * 1000:6.1f} / {pct(xs, 99) * 1000:6.1f}   ({len(xs)} samples)")


def _ends(marks: Path) -> set[str]:
    return {line.split()[2] for line in marks.read_text().splitlines() if line.startswith("end ")}


def _check(marks: Path, ids: set[str], submitted_at: dict[str, float], quota: int, gpus: int, wall: float,
           sub_end: float) -> bool:
    starts: dict[str, list[tuple[float, str, str, str]]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)
    events: list[tuple[float, int, str, str]] = []  # (t, +1/-1, user, node:gpu)
    for line in marks.read_text().splitlines():
        parts = line.split()
        if len(parts) != 7:
            continue
        what, user, job, att, node, gpu, t = parts
        tt = float(t)
        if what == "start":
            starts[job].append((tt, user, node, gpu))
            events.append((tt, +1, user, f"{node}:{gpu}"))
        else:
            ends[job].append(tt)
            events.append((tt, -1, user, f"{node}:{gpu}"))
    ok = True
    missing = ids - set(ends)
    twice = [j for j in ids if len(ends.get(j, [])) > 1 or len(starts.get(j, [])) > 1]
    print(f"completed: {len(ids) - len(missing)}/{len(ids)} (exactly once: {len(ids) - len(missing) - len(twice)}); "
          f"all done {wall:.1f}s after the first submission")
    if missing or twice:
        ok = False
        print(f"FAIL: {len(missing)} never completed, {len(twice)} ran more than once", file=sys.stderr)
    held: dict[str, int] = defaultdict(int)
    busy: dict[str, int] = defaultdict(int)
    max_user = max_gpu = 0
    for t, d, user, dev in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts at a tie
        held[user] += d
        busy[dev] += d
        max_user = max(max_user, held[user])
        max_gpu = max(max_gpu, busy[dev])
    print(f"quota: most GPUs one user held at once = {max_user} (quota {quota}); most jobs on one GPU at once = {max_gpu}")
    if max_user > quota or max_gpu > 1:
        ok = False
        print("FAIL: a quota or a GPU was oversubscribed", file=sys.stderr)
    # dispatch latency: a GPU's previous job ended -> the next job's process started on it, when
    # the next job had been submitted before the GPU went free (so it was waiting for it)
    by_dev: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for job, ss in starts.items():
        if job in ends and ss:
            t0, _, node, gpu = ss[0]
            by_dev[f"{node}:{gpu}"].append((t0, ends[job][0], job))
    gaps: list[tuple[float, float]] = []  # (GPU free at, latency)
    for seq in by_dev.values():
        seq.sort()
        for (s0, e0, _), (s1, _, j1) in zip(seq, seq[1:]):
            if submitted_at.get(j1, 1e18) < e0:
                gaps.append((e0, s1 - e0))
    lat = [g for _, g in gaps]
    during = [g for t, g in gaps if t <= sub_end]
    after = [g for t, g in gaps if t > sub_end]
    print(f"dispatch latency (GPU free -> next job's process started), {len(lat)} samples: "
          f"p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms, max {max(lat, default=0) * 1000:.0f} ms "
          f"(while submissions arrive, {len(during)}: p50 {pct(during, 50) * 1000:.0f} / p99 {pct(during, 99) * 1000:.0f} ms; "
          f"after, {len(after)}: p50 {pct(after, 50) * 1000:.0f} / p99 {pct(after, 99) * 1000:.0f} ms)")
    return ok


if __name__ == "__main__":
    sys.exit(main())
