"""Run a notebook headless against a real Jupyter server with the extension, and print what
each cell showed. Used by ``scripts/demo.sh --headless`` and by the tests (the README's main
command must work)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import requests
from nbclient import NotebookClient


def main(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        token = os.urandom(8).hex()
        port = _free_port()
        env = dict(os.environ, GPUQUEUE_STATE_DIR=os.environ.get("GPUQUEUE_STATE_DIR", f"{tmp}/state"),
                   GPUQUEUE_GPUS=os.environ.get("GPUQUEUE_GPUS", "2"))
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root", f"--port={port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/server.log", "wb"),
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(300):
                try:
                    if requests.get(url + "gpuqueue/api/queue", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.1)
            os.environ.update(GPUQUEUE_URL=url, GPUQUEUE_TOKEN=token, GPUQUEUE_VIEW="text")
            NotebookClient(nb, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": str(Path(path).parent)}}).execute()
        finally:
            server.terminate()
            server.wait(30)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        print(f"--- [{i}] {cell.source.splitlines()[0] if cell.source else ''}")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                print(out["text"], end="")
            elif "text/plain" in out.get("data", {}):
                print(out["data"]["text/plain"])
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "binder/demo.ipynb"))
