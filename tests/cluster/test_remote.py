"""Cluster mode through the Jupyter server extension: it forwards to the API service."""

from __future__ import annotations

import sys

from .conftest import TOKENS


def test_server_extension_forwards_to_the_api_service(cluster_factory, jupyter_server_factory) -> None:
    c = cluster_factory(nodes={"n1": 2})
    server = jupyter_server_factory(
        gpus=0, args=[f"--GPUQueueApp.api_url={c.url}"], env={"GPUQUEUE_API_TOKEN": TOKENS["alice"]}
    )
    q = server.client().queue()
    assert q["mode"] == "cluster" and q["me"]["user"] == "alice" and "n1" in q["nodes"]

    # a notebook cell: payload to the node through Redis, results back into the kernel
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    k.run("base = 40; blob = bytes(3_000_000)")  # a payload of MBs: streamed on to the API service
    res = k.run("%%train --gpus 1\nimport os\nanswer = base + 2 + len(blob)\ndevices = os.environ['CUDA_VISIBLE_DEVICES']\nprint('on', os.environ['GPUQUEUE_NODE'])", timeout=120)
    assert res.error is None, res.error
    assert "on n1" in res.text, res.text
    out = k.run("print(answer, devices)")
    assert out.stdout.strip() == "3000042 0", out.stdout

    # the job is alice's in the cluster; bob's jobs are invisible through alice's server
    jobs = server.client().list()
    assert jobs and all(j["owner"] == "alice" for j in jobs)
    bobs = c.submit("bob", ticks=1)
    r = server.api("GET", f"gpuqueue/api/jobs/{bobs}")
    assert r.status_code == 404 and r.json()["message"].startswith(f"no job '{bobs}'")
    r = server.api("POST", "gpuqueue/api/jobs", json={"spec": {"kind": "command", "command": ["true"], "gpus": 7}})
    assert r.status_code == 400 and "ask for at most 2" in r.json()["message"]

    # SSE relayed from the API service, to the end of the job
    job = server.client().submit({"kind": "command", "gpus": 1, "command": [sys.executable, str(c.script), str(c.marks), "3"]})
    events = list(server.client().follow(job["id"]))
    assert events[-1]["type"] == "state" and events[-1]["data"]["state"] == "succeeded"
    assert any(e["type"] == "log" and e["data"]["line"].startswith("hello from") for e in events)
    c.assert_once([job["id"]])

    # `gpuqueue rm` through alice's server: her finished job deleted in the cluster; bob's is a 404
    r = server.api("DELETE", f"gpuqueue/api/jobs/{bobs}")
    assert r.status_code == 404 and r.json()["message"].startswith(f"no job '{bobs}'"), r.text
    r = server.api("DELETE", f"gpuqueue/api/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["id"] == job["id"] and "shared sweep" in r.json()["note"], r.text
    assert job["id"] not in {j["id"] for j in server.client().list()}
    assert c.client("alice").delete_jobs([job["id"]])[0][2] is not None  # gone in the cluster too

    # the API service's 503 reaches the user as a 503 that names the cause
    c.redis.kill()
    r = server.api("GET", "gpuqueue/api/jobs")
    assert r.status_code == 503 and "(Redis) cannot be reached" in r.json()["message"], r.text


def test_a_token_on_the_command_line_is_refused(jupyter_server_factory) -> None:
    # every user of the machine can read a command line: the token is not used; the log and every
    # answer (the sidebar, %%train) say where it goes instead
    server = jupyter_server_factory(
        gpus=0, ready="api/status",
        args=["--GPUQueueApp.api_url=http://127.0.0.1:9/", f"--GPUQueueApp.api_token={TOKENS['alice']}"],
    )
    fix = ("GPUQueueApp.api_token was given on the command line, which every user of this machine can "
           "read (/proc/PID/cmdline), so it is not used and the queue is off: set $GPUQUEUE_API_TOKEN "
           "instead, or c.GPUQueueApp.api_token in a config file only you can read, and restart the server")
    for method, path in (("GET", "gpuqueue/api/queue"), ("POST", "gpuqueue/api/jobs")):
        r = server.api(method, path, json={"spec": {"kind": "command", "command": ["true"]}})
        assert r.status_code == 503 and r.json()["message"] == fix
    log = server.log_path.read_text()
    assert fix in log and "Traceback" not in log
