"""Queue limits in cluster mode are enforced by the API service at submit time, atomically."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import requests

from gpuqueue.queue.errors import NotFound
from helpers.servers import wait_until

from .conftest import TOKENS


def _post(c, user: str) -> tuple[int, str]:
    body = {"spec": {"kind": "command", "gpus": 1, "command": [sys.executable, str(c.script), str(c.marks), "1"]}}
    r = requests.post(f"{c.url}gpuqueue/api/jobs", json=body, headers={"Authorization": f"token {TOKENS[user]}"}, timeout=30)
    return r.status_code, r.json().get("id") or r.json().get("message", "")


def test_max_queued_is_refused_at_submit_and_holds_under_concurrency(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1}, config_extra="[defaults]\nmax_queued = 3\n")
    alice = c.client("alice")
    running = c.submit("alice", ticks=200)  # holds the only GPU: what follows waits
    wait_until(lambda: alice.get(running)["state"] == "running", 20, 0.1, "the first job running")

    # eight submissions at once, from two API clients' worth of threads: exactly three get in
    with ThreadPoolExecutor(8) as ex:
        outcomes = list(ex.map(lambda _: _post(c, "alice"), range(8)))
    queued = [x for code, x in outcomes if code == 201]
    refused = [x for code, x in outcomes if code == 400]
    assert len(queued) == 3 and len(refused) == 5, outcomes
    assert all(m == "you have 3 queued jobs, the limit (max_queued) is 3; wait for some to start or cancel some"
               for m in refused), refused
    # a refused submission left nothing behind: alice has her running job and three queued
    assert sorted(j["id"] for j in alice.list()) == sorted([running, *queued])
    assert all(alice.get(j)["state"] == "queued" for j in queued)
    # the daemon publishes why each waits (its place in the queue)
    wait_until(lambda: all(alice.get(j)["pending"]["position"] >= 1 for j in queued), 15, 0.2, "why the jobs wait")

    # the CLI shows the same message; other users are not affected
    r = c.cli("alice", "submit", "--gpus", "1", "--", "true")
    assert r.returncode == 1 and "the limit (max_queued) is 3" in r.stderr, r.stderr
    assert _post(c, "bob")[0] == 201

    # a queued job cancelled, or one that starts, frees a place
    alice.cancel(queued[0])
    wait_until(lambda: alice.get(queued[0])["state"] == "cancelled", 20, 0.1, "cancelled")
    assert _post(c, "alice")[0] == 201
    assert _post(c, "alice")[0] == 400
    alice.cancel(running)
    wait_until(lambda: _post(c, "alice")[0] == 201, 30, 0.2, "a place once the queue moved")


def test_finished_jobs_are_deleted_after_the_retention(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 2}, daemon_args=("--keep-finished", "3s"))
    alice = c.client("alice")
    long = c.submit("alice", ticks=80)  # created first, still running when the others expire
    done = c.submit("alice", ticks=1)
    c.wait_done([done], 30)
    assert alice.get(done)["state"] == "succeeded" and alice.events(done)  # kept for now
    r = c.redis_client()
    assert r.exists(f"gq:job:{done}", f"gq:ev:{done}", f"gq:exit:{done}:1") == 3

    def expired() -> bool:
        try:
            alice.get(done)
            return False
        except NotFound:
            return True

    wait_until(expired, 20, 0.2, "the finished job deleted")
    assert not r.keys(f"gq:*{done}*"), r.keys(f"gq:*{done}*")
    assert r.zscore("gq:jobs", done) is None and r.zscore("gq:owner:alice", done) is None
    ids = [j["id"] for j in alice.list()]
    assert long in ids and done not in ids
    assert alice.get(long)["state"] == "running"  # an old job that is still running stays
    c.assert_once([done])


def test_retention_option_is_checked(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "scheduler", "--redis", "redis://127.0.0.1:1/0",
                        "--keep-finished", "soon"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--keep-finished" in r.stderr and "forever" in r.stderr, r.stderr
