"""The worker's event loop against a job it cannot handle, with a real daemon, worker and jobs.

* A job writes records of shapes the runner never writes to the ``events.jsonl`` it shares with
  the runner (a worker without identities: the job runs as the worker's user), and an
  ``error.json`` that is not an error record. Each used to make the worker's event loop (every
  20 ms, a traceback each time) or the daemon's settling raise, and the job never ended.
* The store refuses one attempt's writes (its tail key of the wrong type): that attempt is tried
  again with a growing delay, the error logged once, and it is stopped and reported failed with
  the cause after ``--give-up-after``, while the other attempt on the node goes on untouched.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from helpers.servers import wait_until

from .conftest import PY, Cluster

ODD_EVENTS = r'''
import os, sys
d = os.environ["GPUQUEUE_ATTEMPT_DIR"]
with open(d + "/events.jsonl", "a") as f:
    f.write('[1]\n"text"\n{"t": "soon", "type": "log", "data": {"stream": "stdout", "line": "forged"}}\n')
    f.write('{"type": "log", "data": [1]}\n{"type": 7, "data": {}}\n{"type": "runner", "data": "x"}\n')
print("after the odd lines", flush=True)
'''

BAD_ERROR = r'''
import os, sys
open(os.environ["GPUQUEUE_ATTEMPT_DIR"] + "/error.json", "w").write(sys.argv[1])
sys.exit(1)
'''

TICKS = r'''
import sys, time
for i in range(int(sys.argv[1])):
    print("tick", i, flush=True)
    time.sleep(0.1)
'''


def _lines(c: Cluster, job_id: str) -> list[str]:
    return [e["data"].get("line") for e in c.client("root").events(job_id) if e["type"] == "log"]


def test_odd_records_of_a_job_end_it_with_a_clear_message(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory({"n1": 2})
    alice = c.client("alice")
    odd = alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", ODD_EVENTS]})["id"]
    bad = [alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", BAD_ERROR, text]})["id"]
           for text in ('{"kind": "no type nor message"}', "[1, 2]", "\x01not json")]
    jobs = c.wait_done([odd, *bad], timeout=60)
    assert jobs[odd]["state"] == "succeeded", jobs[odd]
    lines = _lines(c, odd)
    assert "after the odd lines" in lines and "forged" in lines, lines
    for j in bad:
        assert jobs[j]["state"] == "failed", jobs[j]
        err = jobs[j]["error"]
        assert err.startswith("the job process exited with code 1") and "error.json" in err and "malformed" in err, err
    for key in ("worker-n1", "daemon"):
        assert "Traceback" not in c.log(key), c.log(key)[-3000:]


def test_an_attempt_the_store_refuses_backs_off_then_fails_and_the_others_go_on(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    c = cluster_factory({"n1": 2}, worker_args=("--identities", "none", "--give-up-after", "4"))
    alice, r = c.client("alice"), c.redis_client()
    stuck = alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", TICKS, "600"]})["id"]
    wait_until(lambda: "tick 1" in _lines(c, stuck), 30, 0.1, "the first job's output")
    # the store refuses this attempt's writes from now on: its tail key holds a list
    r.delete(f"gq:tail:{stuck}:1")
    r.rpush(f"gq:tail:{stuck}:1", "x")
    t0 = time.monotonic()
    other = alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", TICKS, "40"]})["id"]
    jobs = c.wait_done([stuck], timeout=60)
    failed_after = time.monotonic() - t0
    job: dict[str, Any] = jobs[stuck]
    assert job["state"] == "failed", job
    assert "could not copy this attempt's records" in job["error"] and "WRONGTYPE" in job["error"], job["error"]
    assert 4 <= failed_after < 30, failed_after
    # the other attempt's output flowed meanwhile, and it ends as it should
    assert c.wait_done([other], timeout=60)[other]["state"] == "succeeded"
    assert _lines(c, other) == [f"tick {i}" for i in range(40)]
    # the stuck job's process was stopped: its runner is gone from the node
    wait_until(lambda: not [p for p in c.tree("worker-n1") if any("600" == a for a in p.cmdline())], 20, 0.2,
               "the stuck job's process to end")
    log = c.log("worker-n1")
    said = [ln for ln in log.splitlines() if "copying its records to the store failed" in ln]
    assert len(said) == 1, said  # once, not every 20 ms
    assert log.count("Traceback") <= 1, log[-3000:]
    assert "stopped and reported failed" in log
    # what the failing rounds cost: a few tries with a growing delay, not 50 a second
    rec = json.loads(r.get(f"gq:exit:{stuck}:1"))
    assert rec["worker_gave_up"] is True
