"""Hostile-admin-edit checks on the cluster's API service (a real ``gpuqueue api`` process on a
real Redis): the users file it re-reads while it serves every user."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import requests

from gpuqueue.rest.client import API

from .conftest import TOKENS, Cluster


def _status(c: Cluster, token: str) -> int:
    return requests.get(f"{c.url}{API}jobs", headers={"Authorization": f"token {token}"}, timeout=10).status_code


def _poll(c: Cluster, token: str, seconds: float) -> list[int]:
    """The status of a request every 50 ms for ``seconds``."""
    out: list[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        out.append(_status(c, token))
        time.sleep(0.05)
    return out


def test_a_token_rotated_by_a_file_put_in_place_with_its_old_mtime_is_revoked(tmp_path: Path, redis_factory: Any) -> None:
    """An admin rotates bob's token (same length) with a deploy tool that writes a new file and
    keeps the old one's mtime (rsync -t, cp -p, ansible copy): the new token works and bob's old
    one is refused within a few seconds (before: the API saw the same mtime and size and went on
    taking the revoked token until it was restarted)."""
    c = Cluster(tmp_path / "cluster", redis_factory(), {"n1": 1})
    try:
        c.start_api()
        old = TOKENS["bob"]
        assert _status(c, old) == 200
        new = old[:-2] + "99"
        st = c.users.stat()
        tmp = c.users.with_name("users.toml.new")
        tmp.write_text(c.users.read_text().replace(old, new))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert tmp.stat().st_size == st.st_size
        os.replace(tmp, c.users)
        t0 = time.monotonic()
        while _status(c, old) != 401:
            assert time.monotonic() - t0 < 8, "bob's revoked token still works"
            time.sleep(0.2)
        assert _status(c, new) == 200 and _status(c, TOKENS["alice"]) == 200
    finally:
        c.close()


def test_a_users_file_edited_into_something_unreadable_keeps_serving_and_names_the_problem(
        tmp_path: Path, redis_factory: Any) -> None:
    """A users file edited to hold a [[user]] that is not a table, then to bytes that are not
    UTF-8: every request goes on with the users the API had (never a 500), and its log names the
    file, the problem and the fix (before: one request got a 500, the log a traceback, and the
    API said nothing of the broken file afterwards)."""
    c = Cluster(tmp_path / "cluster", redis_factory(), {"n1": 1})
    try:
        c.start_api()
        alice = TOKENS["alice"]
        time.sleep(1.1)  # the file's ctime a second old: only a change makes it read again
        c.users.write_text('user = [1, 2]\n')
        seen = _poll(c, alice, 4.5)
        assert set(seen) == {200}, seen
        assert f"users file {c.users}: user #1 is int 1, not a table" in c.log("api"), c.log("api")[-2000:]
        c.users.write_bytes(b'\xff\xfe[[user]]\nname = "x"\n')
        seen = _poll(c, alice, 4.5)
        assert set(seen) == {200}, seen
        assert f"users file {c.users} is not UTF-8 text" in c.log("api"), c.log("api")[-2000:]
        assert "Traceback" not in c.log("api"), c.log("api")[-3000:]
    finally:
        c.close()


def test_a_page_of_a_dropped_jobs_events_costs_the_shared_api_a_bounded_read(cluster_factory) -> None:
    """A dropped job whose stream still holds 300,000 output records (the daemon, busy or down,
    has not rewritten it yet): one `GET .../events` reads at most a page's worth of them and
    names the ``next`` page, and `client.events` still gets the notice, the checkpoint and the
    final state (before: each request walked the whole stream, seconds of the API process that
    serves every user)."""
    import sys

    from gpuqueue.queue import bounds
    from gpuqueue.queue.models import JobRecord

    code = ("from gpuqueue.job import jobapi\nprint('hello')\n"
            "jobapi.emit('checkpoint', {'step': 7, 'path': '/ck/late', 'name': 'default'})\n"
            "raise ValueError('shard 3 is empty')\n")
    rows = 300_000
    c = cluster_factory(nodes={"n1": 1})
    alice, r = c.client("alice"), c.redis_client()
    job = alice.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", code]})["id"]
    assert c.wait_done([job], 120)[job]["state"] == "failed", alice.get(job)
    c.kill("daemon")
    key = f"gq:ev:{job}"
    kept = r.xrange(key)
    r.delete(key)
    pipe = r.pipeline(transaction=False)
    for i in range(1, rows + 1):  # the job's output, as if it had printed it before its checkpoint
        pipe.xadd(key, {"type": "log", "t": "1", "data": '{"stream": "stdout", "line": "x"}'}, id=f"{i}-0")
        if i % 20_000 == 0:
            pipe.execute()
    for eid, fields in kept:
        pipe.xadd(key, fields, id=f"{int(eid.split('-')[0]) + rows}-0")
    pipe.execute()
    rec = JobRecord.model_validate_json(r.get(f"gq:job:{job}"))
    rec.logs_dropped = bounds.logs_dropped_for_newer(4_000_000, 1.5)
    r.set(f"gq:job:{job}", rec.model_dump_json())

    url = f"{c.url}{API}jobs/{job}/events?after=0"
    took = []
    for _ in range(3):
        t0 = time.perf_counter()
        body = requests.get(url, headers={"Authorization": f"token {TOKENS['alice']}"}, timeout=60).json()
        took.append(time.perf_counter() - t0)
    print(f"a page of the dropped job's events: {', '.join(f'{t * 1000:.0f}' for t in took)} ms; next={body.get('next')}")
    assert isinstance(body.get("next"), int) and body["next"] <= bounds.EVENTS_PAGE, (
        f"the page read past {bounds.EVENTS_PAGE} stored records ({min(took):.2f} s)")
    events = alice.events(job)
    assert events[0]["seq"] == 0 and "max_logs_mb" in events[0]["data"]["line"], events[:2]
    assert [e["data"]["path"] for e in events if e["type"] == "checkpoint"] == ["/ck/late"], events
    states = [e["data"] for e in events if e["type"] == "state"]
    assert states and states[-1]["state"] == "failed" and "shard 3 is empty" in str(states[-1]), states

    import threading  # a live follow of it (`gpuqueue logs -f`) walks the whole stream: others are served meanwhile

    followed: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: followed.extend(c.client("alice").follow(job)))
    t.start()
    waits = []
    while t.is_alive():
        t0 = time.perf_counter()
        assert _status(c, TOKENS["bob"]) == 200
        waits.append(time.perf_counter() - t0)
        time.sleep(0.02)
    t.join()
    print(f"bob's requests during alice's follow: {len(waits)}, the slowest {max(waits) * 1000:.0f} ms")
    assert [e["seq"] for e in followed] == [e["seq"] for e in events]
    assert max(waits) < 1.0, f"bob waited {max(waits):.1f} s for the API while it walked alice's stream"


LOCKER = ("import fcntl, os, sys\n"
          "try:\n    fd = os.open(sys.argv[1], os.O_RDONLY)\nexcept PermissionError:\n    print('refused'); sys.exit(0)\n"
          "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('locked')\n"
          "except BlockingIOError:\n    print('opened, held by the worker')\n")


def test_another_local_user_cannot_take_the_workers_state_folder_lock(tmp_path: Path, redis_factory: Any) -> None:
    """Any user logged in on the node could open the worker's lock file (mode
    0644) and wait in flock on it: at the worker's next restart that user holds the lock first
    and the worker is refused ('another worker uses the state folder'). The lock file is the
    worker's own (0600), a file left 0644 by an earlier version included."""
    import subprocess

    c = Cluster(tmp_path / "cluster", redis_factory(), {"n1": 1})
    try:
        state = c.root / "node-n1"
        state.mkdir(parents=True)
        (state / "worker.lock").write_text("")
        os.chmod(state / "worker.lock", 0o644)  # as an earlier version made it
        opened = []  # the folders above it: traversable by others, as a --state-dir must be
        for d in [c.root, *c.root.parents]:
            if str(d) in ("/", "/tmp"):
                break
            opened.append((d, os.stat(d).st_mode & 0o7777))
            os.chmod(d, opened[-1][1] | 0o011)
        c.start_worker("n1")
        lock = state / "worker.lock"
        t0 = time.monotonic()
        while not lock.read_text():
            assert time.monotonic() - t0 < 30, "the worker did not take its lock"
            time.sleep(0.1)
        assert os.stat(lock).st_mode & 0o077 == 0, oct(os.stat(lock).st_mode)
        other = subprocess.run(["/usr/bin/python3", "-c", LOCKER, str(lock)], user=65534, group=65534,
                               capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == "refused", other
    finally:
        c.close()
        for d, mode in locals().get("opened", []):
            os.chmod(d, mode)
