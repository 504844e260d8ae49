"""A job whose output was dropped (``max_logs_mb``) while its output records are still in the
store (they are deleted a chunk at a time, in the background; a server that stopped part way
deletes the rest after it starts again): every reader of its events still gets the records that
stay (its checkpoints, its states and error) and the notice, not a first page that holds only the
notice and makes the client stop. Real Jupyter server, real job, the real REST client."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from gpuqueue.embedded.store import SqliteStore
from gpuqueue.queue import bounds

LINES = 25_000  # output records before the checkpoint: more than two of the server's pages (10,000)
CODE = (f"from gpuqueue.job import jobapi\n[print('line %d' % i) for i in range({LINES})]\n"
        "import sys; sys.stdout.flush()\n"
        "jobapi.emit('checkpoint', {'step': 7, 'path': '/ck/late', 'name': 'default'})\n"
        "raise ValueError('shard 3 is empty')\n")


def _output_rows(db_path: Path, job: str) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM events WHERE job_id=? AND type IN ('log', 'progress', 'metrics')",
                          (job,)).fetchone()[0]
    finally:
        db.close()


def test_a_dropped_jobs_events_read_whole_while_its_output_rows_remain(jupyter_server_factory) -> None:
    """The server stops after it dropped a job's logs and before it deleted its 25,000 output
    rows; right after it starts again (it deletes them a moment later), `client.events` (what
    `%gpuqueue checkpoints`, `%gpuqueue logs` and the dashboard read) gives the notice, the
    job's checkpoint and its final state with the error (before: the notice alone, so
    `%gpuqueue checkpoints` said `no checkpoints yet`)."""
    server = jupyter_server_factory(gpus=1)
    client = server.client()
    job = client.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", CODE]})["id"]
    t0 = time.monotonic()
    while client.get(job)["state"] not in ("succeeded", "failed", "cancelled", "timed_out"):
        assert time.monotonic() - t0 < 120, client.get(job)
        time.sleep(0.1)
    assert client.get(job)["state"] == "failed"
    db_path = server.state_dir / "queue.sqlite"
    assert _output_rows(db_path, job) >= LINES
    server.stop()
    store = SqliteStore(db_path)  # what the server wrote when a newer job's output took its room
    rec = store.get(job)
    assert rec is not None
    rec.logs_dropped = bounds.logs_dropped_for_newer(4_000_000, 1.5)
    store.put(rec, touch=False)
    store.close()
    server.start()

    events = server.client().events(job)
    left = _output_rows(db_path, job)
    assert left > 2 * 10_000, f"the server deleted the rows before the read ({left} left): nothing was tested"
    assert events[0]["seq"] == 0 and "max_logs_mb" in events[0]["data"]["line"], events[:2]
    assert not [e for e in events[1:] if e["type"] in bounds.DROPPED_LOG_TYPES], len(events)
    assert [e["data"]["path"] for e in events if e["type"] == "checkpoint"] == ["/ck/late"], events
    states = [e["data"] for e in events if e["type"] == "state"]
    assert states and states[-1]["state"] == "failed", states
    assert "shard 3 is empty" in str(states[-1]), states[-1]
    pages, after = [], 0  # the raw API: pages of at most bounds.DROPPED_SCAN stored rows, each naming the next
    while True:
        body = server.api("GET", f"gpuqueue/api/jobs/{job}/events?after={after}").json()
        pages += body["events"]
        if "next" not in body:
            break
        after = body["next"]
    assert [e["type"] for e in pages] == [e["type"] for e in events]
    followed = list(server.client().follow(job))  # `%gpuqueue attach`, `gpuqueue logs -f`: the same
    assert [(e["seq"], e["type"]) for e in followed] == [(e["seq"], e["type"]) for e in events]
