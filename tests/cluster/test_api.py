"""The API service: the gpuqueue CLI against it, and who may see and change which jobs."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from gpuqueue.queue.errors import Forbidden, NotFound
from helpers.fuzz import fuzz
from helpers.servers import free_port, wait_until

from .conftest import TOKENS


def test_cli_and_user_isolation(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 2})
    # the CLI, unchanged, against the API service (GPUQUEUE_URL / GPUQUEUE_TOKEN)
    r = c.cli("alice", "submit", "--gpus", "1", "--", "python", str(c.script), str(c.marks), "2")
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    w = c.cli("alice", "wait", job)
    assert w.returncode == 0 and "succeeded" in w.stderr, w.stderr
    logs = c.cli("alice", "logs", job)
    assert f"hello from {job} attempt 1" in logs.stdout
    ls = c.cli("alice", "ls")
    assert job in ls.stdout and "succeeded" in ls.stdout
    assert c.cli("alice", "submit", "--gpus", "9", "--", "true").stderr.strip().endswith("ask for at most 2")
    assert '"state": "succeeded"' in c.cli("alice", "show", job).stdout

    # bob cannot see, read the logs of, or cancel alice's jobs
    running = c.submit("alice", ticks=100)
    for args in (("show", running), ("logs", running), ("cancel", running)):
        r = c.cli("bob", *args)
        assert r.returncode == 1 and f"no job '{running}'" in r.stderr, (args, r.stderr)
    assert job not in c.cli("bob", "ls", "--all").stdout  # --all is for admins only
    bob = c.client("bob")
    try:
        bob.events(running)
        raise AssertionError("bob read alice's events")
    except NotFound:
        pass
    # alice may not preempt; an admin sees everything, preempts and cancels alice's job
    try:
        c.client("alice").preempt(running)
        raise AssertionError("a non-admin preempted")
    except Forbidden as e:
        assert "only admins" in str(e)
    assert running in c.cli("root", "ls", "--all").stdout
    wait_until(lambda: c.client("root").get(running)["state"] == "running", 20, 0.1, "running")
    assert "preempting" in c.cli("root", "preempt", running).stdout
    wait_until(lambda: c.client("root").get(running)["preemptions"] == 1, 20, 0.1, "preempted")
    wait_until(lambda: c.client("root").get(running)["state"] == "running", 20, 0.1, "running again")
    waiting = c.submit("alice", ticks=1, gpus=2)  # cannot start while `running` holds a GPU
    assert c.client("alice").get(waiting)["state"] == "queued"
    r = c.cli("alice", "cancel", waiting)
    assert r.stdout.strip() == f"{waiting}: cancelled", r.stdout + r.stderr
    assert c.cli("root", "cancel", running).returncode == 0
    final = c.wait_done([running], 20)[running]
    assert final["state"] == "cancelled" and len(final["attempts"]) == 2
    c.assert_once([job])

    # Prometheus metrics: the daemon's queue, the API's request latency
    daemon = requests.get(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).text
    assert "gpuqueue_scheduler_leader 1.0" in daemon
    assert 'gpuqueue_jobs_finished_total{outcome="succeeded",pool="gpu"} 1.0' in daemon
    api = requests.get(f"{c.url}metrics", timeout=5).text
    assert "gpuqueue_api_request_duration_seconds_count" in api

    # no token, a wrong token: 401 with a message naming the fix
    env = dict(os.environ, GPUQUEUE_URL=c.url, GPUQUEUE_TOKEN="wrong-token")
    r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "ls"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "GPUQUEUE_TOKEN" in r.stderr


def test_timeouts_failures_and_retries_as_in_embedded_mode(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 2})
    slow = c.submit("alice", ticks=200, timeout_s=1.5)
    failing = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 1,
                                        "command": [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]})["id"]
    jobs = c.wait_done([slow, failing], 60)
    assert jobs[slow]["state"] == "timed_out", jobs[slow]
    f = jobs[failing]
    assert f["state"] == "failed" and f["failures"] == 1 and len(f["attempts"]) == 2, f
    assert f["error"] == "the job process exited with code 3"
    states = [e["data"]["state"] for e in c.client("alice").events(failing) if e["type"] == "state"]
    assert "retrying" in states or states.count("queued") == 2, states
    r = c.cli("alice", "wait", failing)
    assert r.returncode == 1 and "failed" in r.stderr


def _api_only(cluster_factory):
    """redis-server, the scheduler daemon and the API service (no workers: jobs stay queued)."""
    c = cluster_factory(nodes={"n1": 2}, start=False)
    c.start_daemon()
    c.start_api()
    return c


def test_auth_schemes_redis_failures_and_no_token_in_any_log(cluster_factory) -> None:
    c = _api_only(cluster_factory)
    secret = TOKENS["alice"]
    api = c.url + "gpuqueue/api/"

    def call(method: str, path: str, **kw):
        return requests.request(method, api + path, timeout=20, **kw)

    r = call("GET", "jobs", headers={"Authorization": f"Basic {secret}"})
    assert r.status_code == 401 and "`token <TOKEN>` or `Bearer <TOKEN>`" in r.json()["message"]
    for auth in (f"token {secret}", f"Bearer {secret}", f"bearer  {secret} "):
        assert call("GET", "jobs", headers={"Authorization": auth}).status_code == 200, auth
    assert call("GET", "jobs", params={"token": secret}).status_code == 200

    # every error path, the token in the query
    q = {"token": secret}
    job = {"spec": {"kind": "command", "command": ["true"], "gpus": 1}}
    for method, path, body, status in [
        ("POST", "jobs", b"{not json", 400),
        ("POST", "jobs", b"[" * 100_000, 400),
        ("POST", "jobs", b'{"spec": {"kind": "command", "command": ["true"], "timeout_s": 1e400}}', 400),
        ("POST", "jobs", b'{"spec": {"kind": "command", "command": ["a\\u0000"]}}', 400),
        ("GET", "jobs/j-0123456789ab/events?after=18446744073709551616", None, 400),
        ("GET", "jobs/j-0123456789ab", None, 404),
        ("GET", "jobs/..%2f..%2fetc/result", None, 404),
        ("GET", "nowhere", None, 404),
        ("POST", "jobs/j-0123456789ab/preempt", None, 403),
    ]:
        r = call(method, path, params=q, data=body)
        assert r.status_code == status and r.json()["message"], (path, r.status_code, r.text[:300])
    # a user who may not preempt is told what they may do instead
    assert "cancel it (`%gpuqueue cancel ID`" in r.json()["message"] and "--resume-from" in r.json()["message"], r.text
    assert call("GET", "jobs", params={"token": "wrong-" + secret}).status_code == 401
    assert call("GET", "jobs", headers={"Authorization": f"Basic {secret}"}, params=q).status_code == 401

    # Redis failures: 503 that says why, nothing changed
    r = c.redis_client()
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    resp = call("POST", "jobs", params=q, json=job)
    assert resp.status_code == 503 and "out of memory" in resp.json()["message"], resp.text
    r.config_set("maxmemory", 0)
    r.replicaof("127.0.0.1", free_port())
    resp = call("POST", "jobs", params=q, json=job)
    assert resp.status_code == 503 and "read-only replica" in resp.json()["message"], resp.text
    r.replicaof("NO", "ONE")
    assert c.client("alice").list() == []
    c.redis.kill()
    resp = call("GET", "jobs", params=q)
    assert resp.status_code == 503 and "Redis) cannot be reached" in resp.json()["message"], resp.text
    wait_until(lambda: "503 GET /gpuqueue/api/jobs?token=[secret]" in c.log("api"), 10, 0.1,
               "the 503 in the API's log, its token masked")
    for key in ("api", "daemon"):
        assert secret not in c.log(key), c.log(key)[-3000:]


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_spec(cluster_factory) -> None:
    c = _api_only(cluster_factory)
    r = fuzz(c.url + "gpuqueue/api", TOKENS["alice"], c.root / "fuzz")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Traceback" not in c.log("api"), c.log("api")[-3000:]
