"""The README tour's step 6, "from a terminal": the CLI against a real Jupyter server's API, as a
user runs it (a JupyterLab terminal, or a shell of their own with GPUQUEUE_URL/GPUQUEUE_TOKEN)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def _cli(server, *args, token=None):
    env = dict(os.environ, GPUQUEUE_URL=server.url, GPUQUEUE_TOKEN=server.token if token is None else token)
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_wrong_token_says_how_to_send_the_right_one(jupyter_server):
    """A token that is wrong (or missing) was answered "gpuqueue: Forbidden": nothing said that
    the token was the problem, nor where the right one is."""
    for token in ("wrong", ""):
        r = _cli(jupyter_server, "ls", token=token)
        assert r.returncode == 1, r
        assert "not authenticated" in r.stderr and "GPUQUEUE_TOKEN" in r.stderr, r.stderr
        assert "jupyter server list" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _cli(jupyter_server, "ls").returncode == 0


def test_a_jupyterlab_terminal_has_the_servers_url_and_token(jupyter_server):
    """What the README says of a JupyterLab terminal: `gpuqueue ls` works there as it is (the
    server's extension exported GPUQUEUE_URL and GPUQUEUE_TOKEN into the terminals' environment)."""
    r = jupyter_server.api("POST", "api/terminals")
    assert r.ok, r.text
    name = r.json()["name"]
    url = jupyter_server.url.replace("http://", "ws://") + f"terminals/websocket/{name}"

    async def run_in_terminal() -> str:
        ws = await websocket_connect(HTTPRequest(url, headers=jupyter_server.headers))
        ws.write_message(json.dumps(["stdin", f"{sys.executable} -m gpuqueue.cli ls; echo EXIT=$? | tr = :\r"]))
        out = ""
        while "EXIT:" not in out:  # the echoed command line reads EXIT=
            msg = await asyncio.wait_for(ws.read_message(), 60)
            if msg is None:
                break
            kind, *data = json.loads(msg)
            if kind == "stdout":
                out += data[0]
        ws.close()
        return out

    out = asyncio.run(run_in_terminal()).split("gpuqueue.cli ls", 1)[-1]
    assert "EXIT:0" in out and "STATE" in out and "no gpuqueue server" not in out, out
    jupyter_server.api("DELETE", f"api/terminals/{name}")


def test_rm_deletes_finished_jobs_from_the_cli_and_the_magic(jupyter_server):
    """`gpuqueue rm ID ...`: a line for each job, deleted or why not, and exit 1 if any was not;
    `%gpuqueue rm ID` in a notebook the same. The jobs are then gone from `gpuqueue ls`."""
    c = jupyter_server.client()
    ids = [c.submit({"kind": "command", "command": [sys.executable, "-c", "print(1)"]})["id"] for _ in range(3)]
    held = c.submit({"kind": "command", "command": [sys.executable, "-c", "import time; time.sleep(60)"]})["id"]
    for job_id in ids:
        while c.get(job_id)["state"] not in ("succeeded", "failed"):
            time.sleep(0.1)
    r = _cli(jupyter_server, "rm", ids[0], ids[1], "j-000000000000")
    assert r.returncode == 1, r
    assert r.stdout.splitlines() == [f"{i}: deleted (record, events, logs, results, payload, checkpoints)"
                                     for i in ids[:2]], r.stdout
    assert r.stderr.startswith("j-000000000000: not deleted: no job 'j-000000000000'"), r.stderr
    listed = _cli(jupyter_server, "ls").stdout
    assert ids[0] not in listed and ids[1] not in listed and ids[2] in listed, listed
    r = _cli(jupyter_server, "rm", held)
    assert r.returncode == 1 and f"cancel it first: gpuqueue cancel {held}" in r.stderr, r

    k = jupyter_server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    out = k.run(f"%gpuqueue rm {ids[2]} {held}")
    assert out.error is None, out.text
    assert out.stdout == f"{ids[2]}: deleted (record, events, logs, results, payload, checkpoints)\n", out.text
    assert f"{held}: not deleted: job {held} is " in out.stderr and "cancel it first" in out.stderr, out.text
    assert [j["id"] for j in c.list()] == [held]
    c.cancel(held)
