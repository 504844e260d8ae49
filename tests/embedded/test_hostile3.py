"""Hostile-user checks on the embedded server: a job whose dropped output is still stored (its
rows are deleted a chunk at a time, in the background) costs a reader of its events a bounded
read per request, not a walk over every stored row (one user's requests held the server's
event loop, which every notebook of that server shares, for seconds each). Real Jupyter server,
real job, the real REST client."""

from __future__ import annotations

import json
import sqlite3
import sys
import time

from gpuqueue.embedded.store import SqliteStore
from gpuqueue.queue import bounds

ROWS = 300_000  # stored output rows of the dropped job: 30 times what one page may read
CODE = ("from gpuqueue.job import jobapi\nprint('hello')\n"
        "jobapi.emit('checkpoint', {'step': 7, 'path': '/ck/late', 'name': 'default'})\n"
        "raise ValueError('shard 3 is empty')\n")


def test_a_page_of_a_dropped_jobs_events_reads_a_bounded_number_of_rows(jupyter_server_factory) -> None:
    """A dropped job with 300,000 output rows still stored: one `GET .../events` reads at most
    as many rows as a page holds (10,000) and says where the ``next`` page starts; `client.events` follows it
    and still gets the notice, the checkpoint and the final state (before: one request walked
    all 300,000 rows, seconds of the server's loop)."""
    server = jupyter_server_factory(gpus=1)
    client = server.client()
    job = client.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", CODE]})["id"]
    t0 = time.monotonic()
    while client.get(job)["state"] not in ("succeeded", "failed", "cancelled", "timed_out"):
        assert time.monotonic() - t0 < 120, client.get(job)
        time.sleep(0.1)
    server.stop()
    db_path = server.state_dir / "queue.sqlite"
    db = sqlite3.connect(db_path)
    with db:  # the job's output, as if it had printed ROWS lines before its checkpoint
        db.execute("UPDATE events SET seq = seq + ? WHERE job_id = ?", (ROWS, job))
        db.executemany("INSERT INTO events (job_id, seq, time, type, data) VALUES (?, ?, ?, 'log', ?)",
                       ((job, i, t0, json.dumps({"stream": "stdout", "line": f"line {i}"})) for i in range(1, ROWS + 1)))
    db.close()
    store = SqliteStore(db_path)  # what the server wrote when a newer job's output took its room
    rec = store.get(job)
    assert rec is not None
    rec.logs_dropped = bounds.logs_dropped_for_newer(40_000_000, 1.5)
    store.put(rec, touch=False)
    store.close()
    server.start()

    t1 = time.perf_counter()
    body = server.api("GET", f"gpuqueue/api/jobs/{job}/events?after=0").json()
    took = time.perf_counter() - t1
    print(f"one page of the dropped job's events: {took * 1000:.0f} ms, {len(body['events'])} events, next={body.get('next')}")
    assert isinstance(body.get("next"), int) and body["next"] <= bounds.EVENTS_PAGE, (
        f"the page read past {bounds.EVENTS_PAGE} stored rows ({took:.2f} s): {str(body)[:300]}")
    assert body["events"][0]["seq"] == 0 and "max_logs_mb" in body["events"][0]["data"]["line"], body["events"][:2]

    t2 = time.perf_counter()
    for _ in range(5):
        server.api("GET", f"gpuqueue/api/jobs/{job}/events?after=0")
    print(f"5 more pages: {(time.perf_counter() - t2) / 5 * 1000:.0f} ms each")
    events = server.client().events(job)
    assert not [e for e in events[1:] if e["type"] in bounds.DROPPED_LOG_TYPES], len(events)
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events}), "no event twice"
    assert [e["data"]["path"] for e in events if e["type"] == "checkpoint"] == ["/ck/late"], events
    states = [e["data"] for e in events if e["type"] == "state"]
    assert states and states[-1]["state"] == "failed" and "shard 3 is empty" in str(states[-1]), states


EVIL = ("import sys\n"
        "sys.stderr.write('\\x1b[31mred stays\\x1b[0m\\n')\n"
        "sys.stderr.write('x' * 3_000_000 + '\\n')\n"  # one huge line
        "sys.stderr.write('\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\x1b[1;1HJob 00000000 succeeded \\u202eevil\\x9b31m\\r\\n')\n"
        "sys.exit(3)\n")


def test_a_jobs_stderr_cannot_drive_the_terminal_of_who_reads_its_error(jupyter_server_factory) -> None:
    """A command job writes terminal escapes (clipboard OSC 52, clear screen, cursor moves, a
    C1 CSI, a bidi override) and a 3 MB line on stderr, then fails: `gpuqueue show` and
    `gpuqueue wait`, which print its error and last stderr lines, print none of those escapes
    raw (colours only), and the job's record stays small."""
    import os
    import subprocess

    server = jupyter_server_factory(gpus=1)
    client = server.client()
    job = client.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", EVIL]})["id"]
    env = dict(os.environ, GPUQUEUE_URL=server.url, GPUQUEUE_TOKEN=server.token)
    wait = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "wait", job], env=env, capture_output=True,
                          text=True, timeout=120)
    show = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "show", job], env=env, capture_output=True,
                          text=True, timeout=60)
    rec = server.api("GET", f"gpuqueue/api/jobs/{job}").text
    assert client.get(job)["state"] == "failed"
    for out in (wait.stdout + wait.stderr, show.stdout + show.stderr):
        assert "exit" in out and "code 3" in out, out[-2000:]
        for raw in ("\x1b]", "\x07", "\x1b[2J", "\x1b[1;1H", "\u202e", "\x9b", "\r"):
            assert raw not in out, (raw, out[-2000:])
        assert len(out) < 20_000, len(out)
    assert len(rec) < 30_000, len(rec)
