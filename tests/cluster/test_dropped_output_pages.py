"""Cluster mode: a job whose output was dropped (``max_logs_mb``) while its stream in Redis still
holds its output records (the scheduler daemon rewrites it without them, a chunk at a time; a
daemon that is down or busy has not yet): reading its events through the API service still
gives the records that stay (checkpoint, states, error) after the notice. Real processes:
redis-server, the API service, the scheduler daemon, a Celery worker."""

from __future__ import annotations

import sys

from gpuqueue.queue import bounds
from gpuqueue.queue.models import JobRecord

LINES = 25_000  # output records before the checkpoint: more than two of the API's pages (10,000)
CODE = (f"from gpuqueue.job import jobapi\n[print('line %d' % i) for i in range({LINES})]\n"
        "import sys; sys.stdout.flush()\n"
        "jobapi.emit('checkpoint', {'step': 7, 'path': '/ck/late', 'name': 'default'})\n"
        "raise ValueError('shard 3 is empty')\n")


def test_a_dropped_jobs_events_read_whole_while_its_stream_still_holds_output(cluster_factory) -> None:
    """The daemon is down right after it marked a job's logs dropped, its 25,000 output records
    still in the job's stream: `client.events` through the API service gives the notice, the
    checkpoint and the final state with its error (before: the notice and the first states
    only), and `gpuqueue logs` shows the notice and none of the dropped lines."""
    c = cluster_factory(nodes={"n1": 1})
    alice, r = c.client("alice"), c.redis_client()
    job = alice.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", CODE]})["id"]
    assert c.wait_done([job], 120)[job]["state"] == "failed", alice.get(job)
    c.kill("daemon")  # what it would write when a newer job's output took this one's room, without its pruning
    rec = JobRecord.model_validate_json(r.get(f"gq:job:{job}"))
    rec.logs_dropped = bounds.logs_dropped_for_newer(4_000_000, 1.5)
    r.set(f"gq:job:{job}", rec.model_dump_json())
    assert sum(1 for _, f in r.xrange(f"gq:ev:{job}") if f["type"] == "log") >= LINES

    events = alice.events(job)
    assert events[0]["seq"] == 0 and "max_logs_mb" in events[0]["data"]["line"], events[:2]
    assert not [e for e in events[1:] if e["type"] in bounds.DROPPED_LOG_TYPES], len(events)
    assert [e["data"]["path"] for e in events if e["type"] == "checkpoint"] == ["/ck/late"], events
    states = [e["data"] for e in events if e["type"] == "state"]
    assert states and states[-1]["state"] == "failed" and "shard 3 is empty" in str(states[-1]), states
    followed = list(alice.follow(job))  # `gpuqueue logs -f`, attach: the same
    assert [(e["seq"], e["type"]) for e in followed] == [(e["seq"], e["type"]) for e in events]
    shown = c.cli("alice", "logs", job)
    assert shown.returncode == 0 and "max_logs_mb" in shown.stdout + shown.stderr, shown
    assert "line 0" not in shown.stdout, shown.stdout[:500]
