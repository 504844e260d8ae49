"""``%gpuqueue dashboard`` against a real server: pools, my jobs, the queue with positions and
reasons, fair share, cancel buttons, live refresh; and its text form."""

from __future__ import annotations

import json
import sys

from helpers.servers import wait_until

SETUP = """
%load_ext jupyter_gpuqueue
import os, json
os.environ["GPUQUEUE_VIEW"] = "{mode}"
_gq = get_ipython().magics_manager.registry["GPUQueueMagics"]
"""


def sleeper(name: str) -> dict:
    return {"kind": "command", "command": [sys.executable, "-c", "import time; time.sleep(60)"],
            "gpus": 1, "name": name}


def test_dashboard_widget_shows_the_queue_and_cancels(jupyter_server_factory):
    server = jupyter_server_factory(gpus=1)
    client = server.client()
    k = server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run("%gpuqueue dashboard")
    assert res.error is None, res.error
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in res.outputs)

    def state() -> dict:
        out = k.run("print('STATE=' + json.dumps(_gq.last_dashboard.model_state()))")
        return json.loads(out.stdout.split("STATE=", 1)[1])

    assert "0/1 used, 1 free" in state()["pools"]
    running = client.submit(sleeper("first"))
    wait_until(lambda: client.get(running["id"])["state"] == "running", 30, 0.2, "first to run")
    waiting = client.submit(sleeper("second"))
    # the dashboard refreshes by itself
    st = wait_until(lambda: (s := state()) and len(s["jobs"]) == 2 and "1/1 used" in s["pools"] and s, 20, 0.5,
                    "the dashboard to show both jobs")
    lines = " | ".join(st["jobs"])
    assert f"{running['id']} first: running on local" in lines
    assert f"{waiting['id']} second: queued #1" in lines
    assert "second" in st["queue"] and "waiting for 1 GPU" in st["queue"]
    assert "my active jobs" in st["fair"]
    # the share standing in words, never raw field names
    assert "your turn" in st["fair"] and "1st of 1 user" in st["fair"] and "GPU-hour" in st["fair"]
    assert "usage_gpu_hours" not in st["fair"]
    # its Cancel button (the same handler a click runs)
    assert k.run(f"_gq.last_dashboard.cancel({waiting['id']!r})").error is None
    assert client.get(waiting["id"])["state"] == "cancelled"
    st = wait_until(lambda: (s := state()) and len(s["jobs"]) == 1 and s, 20, 0.5, "the cancelled job to leave")
    client.cancel(running["id"])
    k.run("_gq.last_dashboard.stop()")


def test_dashboard_text_form(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="text")).error is None
    job = jupyter_server.client().submit(sleeper("txt"))
    wait_until(lambda: jupyter_server.client().get(job["id"])["state"] == "running", 30, 0.2, "job to run")
    out = k.run("%gpuqueue dashboard")
    assert out.error is None, out.error
    assert "pool default: 1/2 GPUs used, 1 free" in out.stdout
    assert f"{job['id']} txt: running on local" in out.stdout
    assert "fair share: your recent use 1 GPU-hour (halves every 7 days); your weight 1; your turn 1st of 1 user" \
        in out.stdout
    # --all (user-guide.md): everyone's jobs, for admins (the server's own user is one in embedded mode;
    # another flag is refused: test_train_magic.test_gpuqueue_verbs)
    everyone = k.run("%gpuqueue dashboard --all")
    assert everyone.error is None and f"{job['id']} txt: running on local" in everyone.stdout, everyone.text
    jupyter_server.client().cancel(job["id"])
