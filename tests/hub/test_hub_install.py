"""What a new admin meets installing the API as a managed hub service (docs/deploy.md,
JupyterHub): a hub that cannot find `gpuqueue` to start, and an API install without JupyterHub's
client. Both stop with one line naming the fix, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.servers import free_port

from .hubserver import SNIPPET

DOCUMENTED_INSTALL = "/opt/gpuqueue/venv/bin/gpuqueue"


@pytest.mark.skipif(os.access(DOCUMENTED_INSTALL, os.X_OK), reason="this host has the documented install")
def test_a_hub_that_cannot_find_gpuqueue_says_so(tmp_path: Path) -> None:
    """The hub runs from an environment of its own (the usual: /opt/jupyterhub, a systemd unit's
    PATH) with no `gpuqueue` on its PATH: the snippet stops the hub with a line that names the
    fix, before the hub starts anything (the old snippet's ["gpuqueue", "api"] let the hub start
    its proxy, then die with a FileNotFoundError traceback)."""
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(f"c = get_config()  # noqa: F821\nload_subconfig({str(SNIPPET)!r})  # noqa: F821\n"
                      f"c.JupyterHub.port = {free_port()}\nc.JupyterHub.hub_port = {free_port()}\n"
                      f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{free_port()}'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    env.update(GPUQUEUE_REDIS_URL="redis://gpuqueue-api:pw@127.0.0.1:1/0", PATH="/usr/bin:/bin")
    p = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(config)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.stdout, p.stderr[-3000:])
    assert "no `gpuqueue` command for the hub to start the API with" in p.stderr, p.stderr[-3000:]
    assert "/opt/gpuqueue/venv" in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]


def test_an_api_without_jupyterhub_names_the_pip_to_run() -> None:
    """`gpuqueue api` started by a hub from an install without the jupyterhub package (the
    documented `.[cluster,train]` alone): one line with the pip command of its own environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    env.update(JUPYTERHUB_API_TOKEN="x" * 32, JUPYTERHUB_API_URL="http://127.0.0.1:1/hub/api",
               JUPYTERHUB_SERVICE_NAME="gpuqueue", GPUQUEUE_REDIS_URL="redis://127.0.0.1:1/0")
    # the package is absent (None in sys.modules: Python's own way to make an import fail)
    code = "import sys; sys.modules['jupyterhub'] = None; from gpuqueue.cli import main; sys.exit(main())"
    p = subprocess.run([sys.executable, "-c", code, "api"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert f"{sys.executable} -m pip install 'jupyterhub>=5'" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_users_file_api_on_the_hubs_port_says_it_is_not_the_hubs_service(tmp_path: Path) -> None:
    """`gpuqueue-api.service` (a users file, port 8780) left enabled on the hub's host holds the
    managed service's port, so the hub's proxy sends /services/gpuqueue/... to it: its 404 says
    what it is and what to stop (it used to say only that the API is under /gpuqueue/api/)."""
    import requests

    from helpers.servers import wait_until

    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "ana"\ntoken = "ana-token-0123456789"\n')
    users.chmod(0o600)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "api", "--port", str(port), "--users", str(users),
                          "--redis", "redis://127.0.0.1:1/0"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            assert p.poll() is None, "gpuqueue api exited"
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code in (200, 503)
            except requests.RequestException:
                return False

        wait_until(up, 30, 0.1, "gpuqueue api")
        got = requests.get(f"http://127.0.0.1:{port}/services/gpuqueue/gpuqueue/api/jobs",
                           headers={"Authorization": "token ana-token-0123456789"}, timeout=30)
        assert got.status_code == 404, got.text
        message = got.json()["message"]
        assert "it is not the JupyterHub service" in message and "systemctl disable --now gpuqueue-api" in message, \
            message
    finally:
        p.kill()
        p.wait(10)


def test_a_user_server_that_cannot_reach_the_api_says_where_it_looked(jupyter_server_factory: Any) -> None:
    """A user server in a container or on another host with the snippet's default GPUQUEUE_API
    (127.0.0.1: not the hub's host there): the sidebar's and %%train's requests get a 503 naming
    the URL it tried (docs/deploy.md, JupyterHub)."""
    url = "http://127.0.0.1:9/services/gpuqueue/"  # nothing listens on port 9 (discard)
    server = jupyter_server_factory(gpus=0, ready="api/status",
                                    env={"GPUQUEUE_API_URL": url, "GPUQUEUE_API_TOKEN": "t" * 32})
    for method, path in (("GET", "gpuqueue/api/queue"), ("POST", "gpuqueue/api/jobs")):
        r = server.api(method, path, json={"spec": {"kind": "command", "command": ["true"]}})
        assert r.status_code == 503, r.text
        assert f"cannot reach the gpuqueue API service at {url}" in r.json()["message"], r.text
