"""Flower (the real one: ``celery --broker URL flower``) sees the gpuqueue workers, their queues
and the launch tasks once ``--celery-events`` is on (docs/deploy.md, "Flower")."""

from __future__ import annotations

import os
import subprocess

from pathlib import Path

import pytest
import redis
import requests

from helpers.servers import RedisServer, free_port, wait_until

from .conftest import PY, Cluster, shipped_acl

pytest.importorskip("flower", reason="Flower is an extra: pip install 'jupyter-gpuqueue[flower]'")


def start_flower(c: Cluster, broker: list[str], env: dict[str, str]) -> str:
    """Flower against cluster ``c`` (``broker``: its --broker argument, or none and
    CELERY_BROKER_URL in ``env``); returns its API's URL."""
    port = free_port()
    log = open(c.root / "flower.log", "ab")
    env = dict(os.environ, FLOWER_UNAUTHENTICATED_API="true", **env)
    c.procs["flower"] = subprocess.Popen(
        [PY, "-m", "celery", *broker, "flower", f"--port={port}", "--address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=c.root, env=env)
    return f"http://127.0.0.1:{port}/api/"


def assert_flower_sees_the_cluster(c: Cluster, api: str) -> None:
    """The worker with its queue and task, then a job's finished launch task."""
    def workers() -> dict:
        try:
            r = requests.get(api + "workers", params={"refresh": "1"}, timeout=10)
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy starting
            return {}
        return r.json() if r.ok and "n1@gpuqueue" in r.json() else {}

    w = wait_until(workers, 60, 0.5, "Flower to list the worker")["n1@gpuqueue"]
    assert [q["name"] for q in w["active_queues"]] == ["gpuqueue.node.n1"]
    assert "gpuqueue.launch_attempt" in w["registered"]

    job = c.submit("alice", ticks=1)
    assert c.wait_done([job])[job]["state"] == "succeeded"

    def launched() -> dict:
        tasks = requests.get(api + "tasks", timeout=10).json()
        done = [t for t in tasks.values() if t["name"] == "gpuqueue.launch_attempt" and job in (t.get("kwargs") or "")
                and t["state"] == "SUCCESS"]
        return done[0] if done else {}

    t = wait_until(launched, 30, 0.5, "Flower to show the finished launch task")
    assert t["worker"] == "n1@gpuqueue" and t["routing_key"] in ("gpuqueue.node.n1", None)


@pytest.mark.parametrize("broker_in", ["argv", "env"])
def test_flower_sees_workers_queues_and_tasks(cluster_factory, broker_in: str) -> None:
    """``celery --broker URL flower``, and ``CELERY_BROKER_URL=URL celery flower`` (the form for a
    URL with a password, which must not be on a command line)."""
    c = cluster_factory(nodes={"n1": 1}, start=False, daemon_args=("--celery-events",),
                        worker_args=("--identities", "none", "--celery-events"))
    c.start()
    if broker_in == "argv":
        api = start_flower(c, ["--broker", c.redis.url], {})
    else:
        api = start_flower(c, [], {"CELERY_BROKER_URL": c.redis.url})
    assert_flower_sees_the_cluster(c, api)


def test_flower_and_events_with_the_shipped_acl_users(tmp_path: Path) -> None:
    """The same with Redis's ACL users of ``deploy/redis/users.acl`` as shipped (each process
    its own user; Flower as ``gpuqueue-flower``): nothing is refused (Redis's ACL LOG stays
    empty), and Flower's user cannot read a job record."""
    pw = {r: f"{r}-{os.urandom(6).hex()}" for r in ("admin", "scheduler", "api", "worker", "flower")}
    redis_server = RedisServer(tmp_path / "redis", password=pw["admin"],
                               conf=shipped_acl({r: pw[r] for r in ("scheduler", "api", "worker", "flower")})).start()
    url = f"redis://{{}}:{{}}@127.0.0.1:{redis_server.port}/0"
    c = Cluster(tmp_path / "cluster", redis_server, {"n1": 1}, daemon_args=("--celery-events",),
                worker_args=("--identities", "none", "--celery-events"))
    c.role_urls = {r: url.format(f"gpuqueue-{r}", pw[r]) for r in ("scheduler", "api", "worker")}
    try:
        c.start()
        api = start_flower(c, [], {"CELERY_BROKER_URL": url.format("gpuqueue-flower", pw["flower"])})
        assert_flower_sees_the_cluster(c, api)
        admin = redis.Redis.from_url(redis_server.url)
        assert admin.acl_log() == []
        flower_user = redis.Redis.from_url(url.format("gpuqueue-flower", pw["flower"]))
        job = admin.zrange("gq:jobs", 0, 0)[0].decode()
        with pytest.raises(redis.exceptions.NoPermissionError):
            flower_user.get(f"gq:job:{job}")
    finally:
        c.close()
        redis_server.kill()


def test_events_are_off_unless_asked(monkeypatch) -> None:
    """Off by default; GPUQUEUE_CELERY_EVENTS=1 (or --celery-events) turns on what Flower needs."""
    from gpuqueue.cluster.celeryconfig import EVENTS_ENV, settings

    keys = ("worker_enable_remote_control", "worker_send_task_events", "task_send_sent_event")
    monkeypatch.delenv(EVENTS_ENV, raising=False)
    assert not any(settings("redis://127.0.0.1:1/0")[k] for k in keys)
    assert all(settings("redis://127.0.0.1:1/0", events=True)[k] for k in keys)
    monkeypatch.setenv(EVENTS_ENV, "1")
    assert all(settings("redis://127.0.0.1:1/0")[k] for k in keys)
