"""Two workers started on one ``--state-dir`` would tail, sweep and clean each other's attempt
folders: the second is refused at start, in one line naming the first and the fix. The lock dies
with its process, so a worker restarted after ``kill -9`` starts as usual."""

from __future__ import annotations

import signal
import socket
from typing import Callable

from helpers.servers import wait_until

from .conftest import Cluster


def test_a_second_worker_on_one_state_dir_is_refused_and_a_restart_after_kill_9_is_not(
        cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory(nodes={"n1": 1, "n2": 1}, start=False)
    c.start_daemon()
    c.start_api()
    first = c.start_worker("n1")
    c.wait_nodes({"n1"})
    state = c.root / "node-n1"
    # an admin copies the unit for node n2 and forgets to change --state-dir
    dup = c._spawn("worker-dup", ["worker", "--node", "n2", "--gpus", "1", "--heartbeat", "0.2",
                                  "--state-dir", str(state), "--identities", "none"], role="worker")
    assert dup.wait(30) == 2
    out = c.log("worker-dup")
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"gpuqueue worker: another worker uses the state folder {state} (pid {first.pid}, node n1, "
                           f"host {socket.gethostname()}, running since "), out
    assert last.endswith("give this worker a --state-dir of its own ($GPUQUEUE_STATE_DIR), or stop that one first"), out
    assert "n2" not in c.client("root").queue().get("nodes", {})  # it never joined
    assert first.poll() is None
    job = c.submit(ticks=1)
    assert c.wait_done([job])[job]["state"] == "succeeded"
    # the first worker dies without a word; its restart on the same folder is not refused
    c.kill("worker-n1", signal.SIGKILL)
    again = c.start_worker("n1")
    wait_until(lambda: c.log("worker-n1").count("node n1: 1 GPU") == 2 or again.poll() is not None, 30, 0.1,
               "the restarted worker to start")
    assert again.poll() is None, c.log("worker-n1")[-2000:]
    job = c.submit(ticks=1)
    assert c.wait_done([job], 60)[job]["state"] == "succeeded"
