"""Checkpoint uploads to a slow shared root do not hold back a job's live events. Real
redis-server, scheduler, API and Celery workers whose ``--shared-dir`` is a ``probefile://``
root: a real folder whose file writes take 2 s each (a stand-in for a slow network store,
declared to the workers as an fsspec plugin; ``probe_fs.py``), which also logs every listing.

While the worker copies a checkpoint (6 s: tag, file, marker), the job's log lines reach a user
following the job as fast as before; checkpoint events that add nothing to the job's local
checkpoints cost no listing of the root; and the checkpoint saved just before the job exits is on
the root when the job is reported done."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


from . import probe_fs

PY = sys.executable
DELAY_S = 2.0

TICKS = r'''
import sys, time, gpuqueue
ck = gpuqueue.Checkpointer(max_checkpoints=2)
elsewhere = gpuqueue.Checkpointer(sys.argv[1], name="elsewhere")
write = lambda i: (lambda d: open(d + "/s.txt", "w").write(str(i)))
for i in range(1, 101):
    time.sleep(0.1)
    print(f"tick {i} {time.time():.3f}", flush=True)
    if i == 10:
        ck.save(i, writer=write(i))
    if i in (40, 50, 60):  # saves that leave the job's own checkpoints as they are
        elsewhere.save(i, writer=write(i))
ck.save(100, writer=write(100))
'''


def test_a_slow_upload_does_not_hold_back_the_jobs_live_logs(cluster_factory, tmp_path: Path, monkeypatch) -> None:
    plugins = probe_fs.plugin_dir(tmp_path / "plugins")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugins), *sys.path]))
    shared, calls = tmp_path / "shared", tmp_path / "calls.txt"
    opts = tmp_path / "shared-options.json"
    opts.touch(mode=0o600)
    opts.write_text(json.dumps({"delay": DELAY_S, "calls": str(calls), "auto_mkdir": True}))
    c = cluster_factory(nodes={"n1": 1}, worker_args=(
        "--identities", "none", "--shared-dir", f"probefile://{shared}", "--shared-options", str(opts)))
    script = tmp_path / "ticks.py"
    script.write_text(TICKS)
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "cwd": str(tmp_path),
                                    "command": [PY, str(script), str(tmp_path / "elsewhere")]})["id"]
    seen: list[tuple[float, dict[str, Any]]] = []  # (when this user got it, the event)
    for ev in c.client("alice").follow(job):
        seen.append((time.time(), ev))
    rec = c.client("root").get(job)
    assert rec["state"] == "succeeded", rec
    # the last save, just before the job exited, was on the root when the end was reported
    last = shared / "jobs" / job / "checkpoints" / "default" / "step-000000100"
    assert (last / "COMPLETE").exists() and (last / "s.txt").read_text() == "100"

    evs = [e for _, e in seen]
    saved = next(e["time"] for e in evs if e["type"] == "checkpoint" and e["data"]["step"] == 10)
    copied = next(e["time"] for e in evs
                  if e["type"] == "info" and "default/step-000000010" in e["data"].get("shared", []))
    assert copied - saved >= 2 * DELAY_S * 0.9, (saved, copied)  # the copy was slow
    late = [(got - float(e["data"]["line"].split()[2]), e["data"]["line"]) for got, e in seen
            if e["type"] == "log" and e["data"]["line"].startswith("tick")
            and saved <= float(e["data"]["line"].split()[2]) <= copied]
    print(f"copy of step 10: {copied - saved:.2f} s; {len(late)} log lines printed during it reached the user "
          f"within {max(d for d, _ in late):.2f} s")
    assert len(late) >= 30, late  # lines printed during the copy...
    assert max(d for d, _ in late) < 2.0, sorted(late)[-5:]  # ...each reached the user within 2 s, not after the copy

    # listings of the job's folder on the root: the pull before the attempt, and the pushes that
    # copied step 10 and step 100; the three saves elsewhere made no request to the root
    assert len([e for e in evs if e["type"] == "checkpoint"]) == 5
    listings = [ln.split()[0] for ln in calls.read_text().splitlines() if ln.split()[0] != "write" and job in ln]
    assert listings == ["glob", "glob", "glob"], calls.read_text()
    writes = [ln.split()[1].rsplit("/", 1)[-1] for ln in calls.read_text().splitlines() if ln.startswith("write ")]
    assert sorted(writes) == ["COMPLETE", "COMPLETE", "QUEUE", "s.txt", "s.txt"]  # nothing else was sent
