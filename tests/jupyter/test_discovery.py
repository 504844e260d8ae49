"""How a kernel finds its server: no configuration inside Jupyter, a clear message outside."""

from __future__ import annotations

import os
import pickle

from gpuqueue.rest.client import discover


def test_discovery_by_parent_pid(jupyter_server, monkeypatch):
    for k in ("GPUQUEUE_URL", "GPUQUEUE_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_server.runtime_dir))
    monkeypatch.setenv("JPY_PARENT_PID", str(jupyter_server.proc.pid))
    info = discover()
    assert info.url.rstrip("/").endswith(str(jupyter_server.port)) and info.token == jupyter_server.token


def test_magic_outside_jupyter_says_what_is_missing(tmp_path):
    from jupyter_client.manager import start_new_kernel

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JPY_"))}
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    try:
        kc.execute_interactive("%load_ext jupyter_gpuqueue", timeout=60)
        errors: list[str] = []

        def grab(msg):
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
                errors.append(msg["content"]["text"])

        reply = kc.execute_interactive("%%train\nprint(1)", timeout=60, output_hook=grab)
        assert reply["content"]["status"] == "error"
        text = "".join(errors)
        assert "no gpuqueue server found" in text and "GPUQUEUE_URL" in text
        assert "Traceback" not in text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_job_refuses_a_payload_from_another_python(tmp_path):
    import subprocess
    import sys

    job_dir = tmp_path / "job"
    attempt = job_dir / "attempt-1"
    attempt.mkdir(parents=True)
    payload = {"format": 1, "python": "2.7.18", "cloudpickle": "3.0.0", "source": "x = 1",
               "modules": {}, "inputs": {}, "outputs": ["x"], "sys_path": []}
    (job_dir / "payload.pkl").write_bytes(pickle.dumps(payload))
    r = subprocess.run([sys.executable, "-m", "gpuqueue.job.jobmain", str(job_dir)], capture_output=True, text=True,
                       env={**os.environ, "GPUQUEUE_ATTEMPT_DIR": str(attempt)}, timeout=60)
    assert r.returncode == 1
    assert "Python 2.7.18" in r.stderr and "same interpreter" in r.stderr
    assert not (attempt / "result.pkl").exists()


def test_a_server_without_the_api_is_named_as_such(tmp_path):
    # a Jupyter server where the extension is not installed or did not load answers the API's
    # paths with its HTML 404 page; the user is told what to check, not "404 Not Found"
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from gpuqueue.queue.errors import NotFound
    from gpuqueue.rest.client import Client, ServerInfo

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with pytest.raises(NotFound) as e:
            Client(ServerInfo(url)).list()
        assert str(e.value) == (
            f"{url} has no gpuqueue API (it answered 404): is jupyter-gpuqueue installed and enabled in that "
            "server (`jupyter server extension list`; its log says why an extension did not load), and is "
            "GPUQUEUE_URL that server?")
    finally:
        httpd.shutdown()
        httpd.server_close()
