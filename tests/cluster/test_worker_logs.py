"""What an admin reads in a worker's log during a normal job, a Redis outage and a shutdown: the
outage once (not at every heartbeat) and its end, no Celery deprecation notes, no traceback,
each attempt's start and end by its job's id, and at the stop which attempts were stopped and
that the node signed off."""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable

from helpers.servers import wait_until

from .conftest import Cluster


def _messages(c: Cluster, key: str) -> list[str]:
    out = []
    for line in c.log(key).splitlines():
        try:
            out.append(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            out.append(line)
    return out


def test_a_redis_outage_and_a_stop_read_well_in_the_worker_log(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory(nodes={"n1": 1})
    root = c.client("root")
    job = c.submit(ticks=30)
    wait_until(lambda: root.get(job)["state"] == "running", 30, 0.1, "the job to run")
    c.redis.kill()
    time.sleep(3)  # 15 heartbeats (--heartbeat 0.2)
    c.redis.start()
    wait_until(lambda: any(m.startswith("redis is available again: heartbeats go on") for m in _messages(c, "worker-n1")),
               30, 0.1, "the worker to see Redis back")
    assert c.wait_done([job], 60)[job]["state"] == "succeeded"
    said = _messages(c, "worker-n1")
    down = [m for m in said if m.startswith("redis unavailable (") and "heartbeats and stop requests wait" in m]
    assert len(down) == 1, "\n".join(said)  # once, not at every heartbeat
    assert down[0].endswith("wait until it is back (check the store's Redis server); jobs go on"), down
    # each attempt's start and end, named by its job (not two lines of Celery's task id per launch)
    assert any(m.startswith(f"attempt {job}/1 started: GPUs 0, as uid ") for m in said), "\n".join(said)
    assert f"attempt {job}/1 ended: exit code 0" in said, "\n".join(said)
    text = "\n".join(said)
    assert "Task gpuqueue.launch_attempt" not in text and "prefetch count" not in text, text
    assert "Traceback" not in text and "In Celery 5.1" not in text and "CPendingDeprecationWarning" not in text, text
    # a stop: which attempts it stopped, then that the node signed off
    job2 = c.submit(ticks=300)
    wait_until(lambda: root.get(job2)["state"] == "running", 30, 0.1, "the second job to run")
    c.kill("worker-n1", signal.SIGTERM)
    said = _messages(c, "worker-n1")
    assert (f"stopping: 1 attempts run here ({job2}/1); each gets 10 s to stop, then the scheduler queues its job "
            f"again") in said, "\n".join(said[-10:])
    assert said[-1] == "stopped; node n1 signed off", "\n".join(said[-10:])
    got: Any = wait_until(lambda: (j := root.get(job2))["state"] == "queued" and j, 30, 0.1, "the job queued again")
    assert got["attempts"][0]["node"] == "n1"


def test_a_heartbeat_round_that_fails_is_logged_once_then_how_often_and_its_end(
        cluster_factory: Callable[..., Cluster]) -> None:
    """Stop requests the worker cannot read (as a daemon of another version might write them):
    each makes one heartbeat round raise. The error was logged once, and then nothing, not even
    that the heartbeats went on. Now, as every other loop's repeated error: once with its
    traceback, then, when the rounds work again, how many failed, over how long, and the last."""
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.start_worker("n1")
    r = c.redis_client()
    wait_until(lambda: r.exists("gq:hb:n1"), 30, 0.1, "the worker's first heartbeat")
    r.rpush("gq:ctl:n1", *[json.dumps({"job": "j-0123456789ab", "reason": "cancelled"})] * 3)  # no attempt
    wait_until(lambda: any(m.startswith("heartbeats go on again") for m in _messages(c, "worker-n1")), 30, 0.1,
               "the worker to say its heartbeats go on")
    said = _messages(c, "worker-n1")
    failed = [m for m in said if m.startswith("heartbeat failed")]
    assert failed == ["heartbeat failed: KeyError: 'attempt' (logged once until the error changes)"], "\n".join(said)
    [back] = [m for m in said if m.startswith("heartbeats go on again")]
    assert back.startswith("heartbeats go on again, after 3 failed rounds in ") and back.endswith(
        " s (last: KeyError: 'attempt')"), back
    assert c.log("worker-n1").count("Traceback (most recent call last)") == 1  # with the first only
    assert r.llen("gq:ctl:n1") == 0
