"""The README tour's step 6, "from a terminal": the CLI against a real Jupyter server's API, as a
user runs it (a JupyterLab terminal, or a shell of their own with GPUQUEUE_URL/GPUQUEUE_TOKEN)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

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
