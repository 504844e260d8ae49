"""A hub under a base URL (``c.JupyterHub.base_url = "/jhub/"``, as behind a site's reverse proxy)
with the documented snippet: the service's routes are under ``/jhub/services/gpuqueue/``, and
each user server's extension must reach them there (docs/deploy.md, JupyterHub)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from cluster.conftest import Cluster
from helpers.servers import wait_until

from .hubserver import Hub

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("configurable-http-proxy") is None,
                       reason="needs configurable-http-proxy (npm install -g configurable-http-proxy)"),
]


class HubUnder(Hub):
    """The test hub, under the base URL ``/jhub/``."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jhub/"


def test_a_hub_under_a_base_url(tmp_path: Path, redis_factory: Any) -> None:
    r = redis_factory(appendonly=True)
    c = Cluster(tmp_path / "cluster", r, {"n1": 1})
    c.users.unlink()
    hub = HubUnder(tmp_path / "hub", r.url)
    hub.config.write_text(hub.config.read_text() + 'c.JupyterHub.base_url = "/jhub/"\n')
    try:
        c.start_daemon()
        hub.start()
        alice = hub.start_server(hub.login("alice"), "alice")
        # the sidebar's request, through alice's own server: it forwards to the service
        got = alice.api("GET", "gpuqueue/api/queue")
        assert got.status_code == 200, (got.status_code, got.text[:500])
        assert got.json()["mode"] == "cluster" and got.json()["me"]["user"] == "alice", got.json()
        # the service through the hub's proxy, at /jhub/services/gpuqueue/; by a path without the
        # base URL, its 404 names its prefix
        got = requests.get(f"{hub.url}services/gpuqueue/gpuqueue/api/queue",
                           headers={"Authorization": f"token {alice.token}"}, timeout=30)
        assert got.status_code == 200 and got.json()["me"]["user"] == "alice", got.text[:300]
        wrong = requests.get(f"http://127.0.0.1:{hub.api_port}/services/gpuqueue/gpuqueue/api/queue", timeout=30)
        assert wrong.status_code == 404 and "its prefix is /jhub/services/gpuqueue/" in wrong.json()["message"], \
            wrong.text
        # a %%train cell's submit takes the same way
        made = alice.api("POST", "gpuqueue/api/jobs", json={"spec": {"kind": "command", "gpus": 0, "command": ["true"]}})
        assert made.status_code == 201, made.text
        wait_until(lambda: alice.api("GET", f"gpuqueue/api/jobs/{made.json()['id']}").json()["owner"] == "alice",
                   30, 0.2, "alice's job in the queue")
    finally:
        hub.stop()
        c.close()
