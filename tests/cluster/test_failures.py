"""Any process may be killed -9 at any moment: nothing is lost, nothing runs twice at once."""

from __future__ import annotations

import time

from helpers.servers import wait_until


def _running_on(c, ids, node):
    root = c.client("root")
    return [i for i in ids if (j := root.get(i))["state"] == "running" and j["attempts"][-1]["node"] == node]


def test_worker_killed_mid_job_is_requeued_and_completes_once(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1, "n2": 1})
    ids = [c.submit("alice", ticks=12) for _ in range(3)]
    victim = wait_until(lambda: _running_on(c, ids, "n1"), 30, 0.05, "a job running on n1")[0]
    time.sleep(0.3)
    c.kill("worker-n1")  # kill -9
    t0 = time.time()
    wait_until(lambda: c.client("root").get(victim)["state"] in ("queued", "starting", "running")
               and len(c.client("root").get(victim)["attempts"]) >= 2, 20, 0.1, "the job requeued")
    assert time.time() - t0 < c.node_timeout + 3
    jobs = c.wait_done(ids, 60)
    assert all(j["state"] == "succeeded" for j in jobs.values()), jobs
    first = jobs[victim]["attempts"][0]
    assert first["outcome"] == "lost" and first["node"] == "n1"
    assert jobs[victim]["attempts"][-1]["node"] == "n2"
    c.assert_once(ids)


def test_dead_node_stays_down_and_gets_no_work(cluster_factory) -> None:
    """A killed worker's last heartbeat stays in the store: the node is down from its timeout on
    (it does not come back up on that stale beat), and no job is sent to it, until a worker
    on it beats again."""
    c = cluster_factory(nodes={"n1": 1, "n2": 1})
    c.kill("worker-n1")
    root = c.client("root")
    wait_until(lambda: "n1" not in root.queue().get("nodes", {}), c.node_timeout + 5, 0.1, "n1 down")
    seen_up = []
    ids = []
    for _ in range(3 * int(c.node_timeout / 0.1)):  # three node timeouts, every 0.1 s
        seen_up.append("n1" in root.queue().get("nodes", {}))
        if len(ids) < 3:
            ids.append(c.submit("alice", ticks=2))
        time.sleep(0.1)
    assert not any(seen_up), "the dead node came back up on its stale heartbeat"
    jobs = c.wait_done(ids, 60)
    assert all(j["state"] == "succeeded" and len(j["attempts"]) == 1 and j["attempts"][0]["node"] == "n2"
               for j in jobs.values()), jobs
    c.start_worker("n1")
    c.wait_nodes({"n1", "n2"})


def test_daemon_killed_then_standby_and_restart_lose_nothing(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1, "n2": 1})
    c.start_daemon("standby")
    ids = [c.submit("alice", ticks=6) for _ in range(4)]
    wait_until(lambda: _running_on(c, ids, "n1") or _running_on(c, ids, "n2"), 30, 0.05, "a job running")
    c.kill("daemon")  # the leader, -9: the standby takes over
    wait_until(lambda: "leader now" in c.log("standby"), 15, 0.1, "the standby to lead")
    ids += [c.submit("bob", ticks=4) for _ in range(2)]
    wait_until(lambda: _running_on(c, ids, "n1") or _running_on(c, ids, "n2"), 30, 0.05, "a job running")
    c.kill("standby")  # no daemon at all now; the API still takes jobs
    ids += [c.submit("alice", ticks=3) for _ in range(2)]
    time.sleep(1.0)
    c.start_daemon("daemon")
    jobs = c.wait_done(ids, 90)
    assert all(j["state"] == "succeeded" for j in jobs.values()), {i: j["state"] for i, j in jobs.items()}
    c.assert_once(ids)
    assert all(len(j["attempts"]) == 1 for j in jobs.values()), "a daemon restart must not requeue running jobs"


def test_redis_restart_mid_run(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1, "n2": 1})
    ids = [c.submit("alice", ticks=15) for _ in range(4)]
    wait_until(lambda: len(_running_on(c, ids, "n1") + _running_on(c, ids, "n2")) == 2, 30, 0.05, "two jobs running")
    c.redis.kill()
    time.sleep(1.0)
    c.redis.start()
    jobs = c.wait_done(ids, 90)
    assert all(j["state"] == "succeeded" for j in jobs.values()), {i: j["state"] for i, j in jobs.items()}
    c.assert_once(ids)
    for i in ids:  # every line the jobs printed is in their event streams, once
        logs = [e for e in c.client("alice").events(i) if e["type"] == "log"]
        assert [e["data"]["line"] for e in logs] == [f"hello from {i} attempt 1"]


def test_frozen_worker_is_fenced_off_when_it_comes_back(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1, "n2": 1})
    job = c.submit("alice", ticks=30)
    node = wait_until(lambda: (j := c.client("root").get(job))["state"] == "running" and j["attempts"][-1]["node"], 30, 0.05, "running")
    wait_until(lambda: "1" in c.runs().get(job, {}), 20, 0.05, "the job's first mark")
    frozen = c.tree(f"worker-{node}")  # the worker, its runner and the job: a frozen machine
    for p in frozen:
        p.suspend()
    other = "n2" if node == "n1" else "n1"
    wait_until(lambda: (j := c.client("root").get(job))["state"] == "running" and j["attempts"][-1]["node"] == other,
               20, 0.1, "the job requeued on the other node")
    seq_before = max(e["seq"] for e in c.client("alice").events(job))
    for p in frozen:
        p.resume()
    # the zombie's attempt is stopped and none of its records gets in
    wait_until(lambda: "fenced off" in c.log(f"worker-{node}") or "superseded" in c.log(f"worker-{node}"), 10, 0.1, "fencing")
    final = c.wait_done([job], 60)[job]
    assert final["state"] == "succeeded" and [a["node"] for a in final["attempts"]] == [node, other]
    assert final["attempts"][0]["outcome"] == "lost"
    runs = c.runs()[job]
    assert runs["1"]["end"] is None and runs["2"]["end"] is not None
    new = [e for e in c.client("alice").events(job, after=seq_before)]
    assert not any("attempt 1" in str(e["data"]) for e in new), new
    # the node is back in service afterwards
    c.wait_nodes({"n1", "n2"})
    again = c.submit("bob", ticks=1)
    assert c.wait_done([again], 30)[again]["state"] == "succeeded"
