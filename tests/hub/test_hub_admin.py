"""What a JupyterHub admin meets after deploying the documented hub snippet: hub admins and queue
admins, a user server whose token lacks the service's scope (a hub config that sets
``c.Spawner.server_token_scopes`` itself), a hub user's token used on another user's server, a
revoked token, and users renamed or deleted in the hub (docs/deploy.md, JupyterHub). A real hub
(configurable-http-proxy, DummyAuthenticator, SimpleLocalProcessSpawner) runs ``gpuqueue api``
from deploy/jupyterhub/jupyterhub_config.py in front of a real redis-server and scheduler."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from cluster.conftest import Cluster
from helpers.servers import wait_until

from .hubserver import MANAGED, Hub
from .hubserver import hub_request as _hub_api
from .hubserver import service_request as _svc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("configurable-http-proxy") is None,
                       reason="needs configurable-http-proxy (npm install -g configurable-http-proxy)"),
]
REPO = Path(__file__).resolve().parents[2]
CACHE_S = 2  # --hub-cache-s of the service here: how long a hub answer for a token is reused

# the documented snippet; the service logs at DEBUG (an admin looking into a problem), reuses the hub's answer for CACHE_S; "ops" is a hub admin;
# dave's server gets the hub's default server token scopes (as where a later line of the hub's
# config replaces the snippet's c.Spawner.server_token_scopes)
GPUQUEUE_CONFIG = MANAGED.replace('"--log-level", "INFO"]', f'"--log-level", "DEBUG", "--hub-cache-s", "{CACHE_S}"]')
HUB_EXTRA = '''
c.Authenticator.allowed_users = {"alice", "bob", "carol", "dave", "ops"}
c.Authenticator.admin_users = {"ops"}
_documented_scopes = list(c.Spawner.server_token_scopes)
c.Spawner.server_token_scopes = lambda spawner: [] if spawner.user.name == "dave" else _documented_scopes
'''


def _token(hub: Hub, s: requests.Session, user: str) -> str:
    r = s.post(f"{hub.url}hub/api/users/{user}/tokens", json={"note": "test"},
               headers={"X-XSRFToken": _cookie(s, "_xsrf")}, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # it ended meanwhile
        return []


def _cookie(s: requests.Session, name: str) -> str:
    return next((c.value or "" for c in s.cookies if c.name == name), "")


def test_what_a_hub_admin_meets(tmp_path: Path, redis_factory: Any) -> None:
    r = redis_factory(appendonly=True)
    c = Cluster(tmp_path / "cluster", r, {"n1": 2})
    c.users.unlink()  # with a hub there is no users file
    hub = Hub(tmp_path / "hub", r.url, gpuqueue_config=GPUQUEUE_CONFIG)
    hub.config.write_text(hub.config.read_text() + HUB_EXTRA)
    try:
        c.start_daemon()  # no worker: the jobs here wait in the queue
        hub.start()
        sessions = {u: hub.login(u) for u in ("alice", "bob", "carol", "dave", "ops")}
        tokens = {u: _token(hub, s, u) for u, s in sessions.items()}
        job = {"spec": {"kind": "command", "gpus": 1, "command": [sys.executable, "-c", "pass"]}}
        alices = _svc(hub, tokens["alice"], "POST", "jobs", json=job).json()["id"]
        bobs = _svc(hub, tokens["bob"], "POST", "jobs", json=job).json()["id"]

        # a hub admin (c.Authenticator.admin_users) is no queue admin: only their own jobs
        me = _svc(hub, tokens["ops"], "GET", "queue").json()["me"]
        assert me["user"] == "ops" and me["admin"] is False, me
        assert _svc(hub, tokens["ops"], "GET", "jobs?all=1").json()["jobs"] == []
        assert _svc(hub, tokens["ops"], "POST", f"jobs/{alices}/cancel").status_code == 404
        # a queue admin: a member of the hub group gpuqueue-admins (the hub admin adds carol)
        r = _hub_api(hub, tokens["ops"], "POST", "groups/gpuqueue-admins/users", json={"users": ["carol"]})
        assert r.status_code == 200, r.text
        carol = _token(hub, sessions["carol"], "carol")  # a new token: no cached answer
        assert _svc(hub, carol, "GET", "queue").json()["me"]["admin"] is True
        assert {j["id"] for j in _svc(hub, carol, "GET", "jobs?all=1").json()["jobs"]} == {alices, bobs}

        # a user server whose own token lacks access:services!service=gpuqueue: the user's role
        # holds it, so the message names c.Spawner.server_token_scopes
        dave = hub.start_server(sessions["dave"], "dave")
        k = dave.start_kernel()
        dave_token = k.run("import os; print(os.environ['JUPYTERHUB_API_TOKEN'])").stdout.strip()
        assert len(dave_token) >= 16
        got = dave.api("GET", "gpuqueue/api/queue")
        assert got.status_code == 403, got.text
        message = got.json()["message"]
        assert "c.Spawner.server_token_scopes" in message and "access:services!service=gpuqueue" in message, message
        assert "restarts their server" in message, message
        # a token of hub user bob on dave's server: told whose server it is, not `jupyter server list`
        got = requests.get(f"{dave.url}gpuqueue/api/jobs", headers={"Authorization": f"token {tokens['bob']}"},
                           timeout=30)
        assert got.status_code == 403, got.text
        message = got.json()["message"]
        assert "hub user 'dave''s server" in message and "jupyter server list" not in message, message

        # a revoked token stops working within --hub-cache-s, with a 401 that names the fix
        bob_tokens = _hub_api(hub, tokens["bob"], "GET", "users/bob/tokens").json()["api_tokens"]
        assert _svc(hub, tokens["bob"], "GET", "jobs").status_code == 200
        for t in bob_tokens:
            assert _hub_api(hub, tokens["ops"], "DELETE", f"users/bob/tokens/{t['id']}").status_code == 204

        def refused() -> bool:
            got = _svc(hub, tokens["bob"], "GET", "jobs")
            return got.status_code == 401 and "JUPYTERHUB_API_TOKEN is yours" in got.json()["message"]

        wait_until(refused, CACHE_S + 10, 0.2, "bob's revoked token to be refused")

        # jobs belong to hub user names (docs/deploy.md, "Renaming and deleting hub users"): a
        # renamed user no longer sees the jobs of the old name; queue admins still do
        r = _hub_api(hub, tokens["ops"], "PATCH", "users/alice", json={"name": "alice2"})
        assert r.status_code == 200, r.text
        wait_until(lambda: _svc(hub, tokens["alice"], "GET", "queue").json()["me"]["user"] == "alice2",
                   CACHE_S + 10, 0.2, "the renamed user's token to say alice2")
        assert _svc(hub, tokens["alice"], "GET", "jobs").json()["jobs"] == []
        assert _svc(hub, tokens["alice"], "POST", f"jobs/{alices}/cancel").status_code == 404
        owners = {j["id"]: j["owner"] for j in _svc(hub, carol, "GET", "jobs?all=1").json()["jobs"]}
        assert owners == {alices: "alice", bobs: "bob"}
        # a user deleted in the hub: their token goes, their jobs stay in the queue
        assert _hub_api(hub, tokens["ops"], "DELETE", "users/bob").status_code == 204
        assert _svc(hub, carol, "GET", f"jobs/{bobs}").json()["state"] == "queued"
        # a new hub account that takes a former user's name gets none of that name's jobs: refused
        # until a queue admin releases the name (tests/hub/test_hub_names.py)
        assert _hub_api(hub, tokens["ops"], "POST", "users/alice").status_code == 201
        new = _hub_api(hub, tokens["ops"], "POST", "users/alice/tokens", json={"note": "new alice"}).json()["token"]
        got = _svc(hub, new, "GET", "jobs")
        assert got.status_code == 403 and "gpuqueue release-name alice" in got.json()["message"], got.text
        assert _svc(hub, new, "POST", f"jobs/{alices}/cancel").status_code == 403
        assert _svc(hub, carol, "POST", f"jobs/{alices}/cancel").status_code == 200  # what the doc tells admins
        assert _svc(hub, carol, "POST", f"jobs/{bobs}/cancel").status_code == 200

        # no token in a log line (the service's DEBUG lines included) nor on a command line
        secrets = {*tokens.values(), carol, new, dave_token}
        log = hub.log()
        assert "Received request from Hub user" in log  # the service's DEBUG lines are there
        assert hashlib.sha256(carol.encode()).hexdigest() in log  # JupyterHub's cache key: a hash
        assert [t[:6] for t in secrets if t in log] == []
        procs = [psutil.Process(hub.proc.pid)] + psutil.Process(hub.proc.pid).children(recursive=True)
        command_lines = " ".join(" ".join(_cmdline(p)) for p in procs)
        assert "gpuqueue.cli api" in command_lines and [t[:6] for t in secrets if t in command_lines] == []
    finally:
        hub.stop()
        c.close()
