"""The documented zero-config cluster: ``gpuqueue scheduler`` without ``--config`` puts whatever
workers join in pool ``default``, on first start, restart and failover."""

from __future__ import annotations

import json
import time

import requests

from helpers.servers import wait_until

from .conftest import TOKENS


def test_zero_config_first_start_restart_and_failover(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 2}, start=False, zero_config=True)
    c.start_daemon()
    c.start_api()
    # a first submit right after start, before any worker joined: queued, not a 500
    early = c.submit("alice", ticks=1)
    assert c.client("alice").get(early)["state"] in ("queued", "starting", "running", "succeeded")
    c.start_worker("n1")
    c.wait_nodes({"n1"})
    assert c.wait_done([early])[early]["state"] == "succeeded"
    first = c.submit("alice", ticks=1)
    assert c.wait_done([first])[first]["state"] == "succeeded", (c.client("alice").get(first)["attempts"], c.client("alice").events(first))
    assert c.client("alice").get(first)["spec"]["pool"] == "default"
    # once a node has joined, a job bigger than every node is refused at once (the API re-reads
    # the published config every 2 s)
    wait_until(lambda: c.cli("alice", "submit", "--gpus", "3", "--", "true").stderr.strip().endswith("ask for at most 2"),
               10, 0.5, "the API to refuse a job bigger than n1")

    # restart the scheduler with the worker already beating: submits still work
    c.kill("daemon")
    c.start_daemon()
    wait_until(lambda: "n1" in c.client("root").queue().get("nodes", {}), 30, 0.1, "n1 up again")
    again = c.submit("alice", ticks=1)
    assert c.wait_done([again])[again]["state"] == "succeeded"
    # what the daemon publishes lists the node that joined
    cfg = json.loads(c.redis_client().get("gq:config"))
    assert cfg["pools"]["default"]["nodes"] == {"n1": 2}

    # failover: a standby takes over from a killed leader, and submits still work
    c.start_daemon("standby")
    time.sleep(0.5)
    c.kill("daemon")
    wait_until(lambda: _leads(c, "standby"), 30, 0.2, "standby leads")
    after = c.submit("alice", ticks=1)
    assert c.wait_done([after], timeout=60)[after]["state"] == "succeeded"


def _leads(c, key: str) -> bool:
    snap = json.loads(c.redis_client().get("gq:snapshot") or "{}")
    return str(c.procs[key].pid) in snap.get("leader", "")


def test_bad_published_config_is_a_clear_503(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 2}, start=False, zero_config=True)
    c.start_api()
    c.redis_client().set("gq:config", json.dumps({"pools": {"default": {"nodes": {"n1": -3}}}}))
    def submit() -> requests.Response:
        return requests.post(f"{c.url}gpuqueue/api/jobs", headers={"Authorization": f"token {TOKENS['alice']}"},
                             json={"spec": {"kind": "command", "gpus": 1, "command": ["true"]}}, timeout=10)

    r = submit()
    assert r.status_code == 503, r.text
    msg = r.json()["message"]
    assert msg.startswith("the scheduler daemon published a queue config this API service cannot read "
                          "(pools.default.nodes: node 'n1' has -3 GPUs"), msg
    c.redis_client().set("gq:config", "not json{")
    r = submit()
    assert r.status_code == 503 and "cannot read (not JSON" in r.json()["message"], r.text
