"""A hub user name given to a new hub account (docs/deploy.md, "Renaming and deleting hub users"):
the queue binds each name to the hub account it first came from (its creation time), so a new
account named like a deleted one is refused, and sees none of the earlier account's jobs, until a
queue admin releases the name (``gpuqueue release-name``), which deletes the earlier account's
finished jobs. Without the service's ``read:users`` scope the API says so once and binds nothing.
A real hub (configurable-http-proxy, DummyAuthenticator) runs ``gpuqueue api`` from
deploy/jupyterhub/jupyterhub_config.py in front of a real redis-server and scheduler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.conftest import Cluster
from gpuqueue.attempt.identity import DynamicIdentities
from gpuqueue.cluster.redis_store import RedisStore
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
CACHE_S = 2  # --hub-cache-s of the service here
GPUQUEUE_CONFIG = MANAGED.replace('"--log-level", "INFO"]', f'"--log-level", "INFO", "--hub-cache-s", "{CACHE_S}"]')
HUB_EXTRA = '''
c.Authenticator.allowed_users = {"alice", "bob", "carol", "ops"}
c.Authenticator.admin_users = {"ops"}
'''
NO_SERVICE_ROLE = '''
c.JupyterHub.load_roles = [r for r in c.JupyterHub.load_roles if r["name"] != "gpuqueue-service"]
'''
JOB = {"spec": {"kind": "command", "gpus": 1, "command": [sys.executable, "-c", "pass"]}}


def _token(hub: Hub, ops: str, user: str) -> str:
    r = _hub_api(hub, ops, "POST", f"users/{user}/tokens", json={"note": "test"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _ops_token(hub: Hub) -> str:
    s = hub.login("ops")
    xsrf = next((c.value or "" for c in s.cookies if c.name == "_xsrf"), "")
    r = s.post(f"{hub.url}hub/api/users/ops/tokens", json={"note": "test"}, headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _cli(hub: Hub, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GPUQUEUE_URL=hub.service_url, GPUQUEUE_TOKEN=token,
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "backend")]))
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _recreate_alice(hub: Hub, ops: str) -> str:
    """The hub admin deletes alice and creates a new account named alice: its token."""
    assert _hub_api(hub, ops, "DELETE", "users/alice").status_code == 204
    assert _hub_api(hub, ops, "POST", "users/alice").status_code == 201
    return _token(hub, ops, "alice")


def test_a_new_hub_account_with_a_deleted_users_name_gets_none_of_their_jobs(tmp_path: Path, redis_factory: Any) -> None:
    r = redis_factory(appendonly=True)
    c = Cluster(tmp_path / "cluster", r, {"n1": 2})
    c.users.unlink()
    hub = Hub(tmp_path / "hub", r.url, gpuqueue_config=GPUQUEUE_CONFIG)
    hub.config.write_text(hub.config.read_text() + HUB_EXTRA)
    try:
        c.start_daemon()  # no worker: jobs wait in the queue, or end by a cancel
        hub.start()
        ops = _ops_token(hub)
        old, bob, carol = (_token(hub, ops, u) for u in ("alice", "bob", "carol"))
        queued = _svc(hub, old, "POST", "jobs", json=JOB).json()["id"]
        done = _svc(hub, old, "POST", "jobs", json=JOB).json()["id"]
        assert _svc(hub, old, "POST", f"jobs/{done}/cancel").json()["state"] == "cancelled"
        assert _svc(hub, bob, "GET", "jobs").status_code == 200

        new = _recreate_alice(hub, ops)
        # every queue request of the new alice: 403 naming the fix, none of the old jobs
        for method, path in (("GET", "jobs"), ("GET", f"jobs/{queued}"), ("GET", f"jobs/{done}/events"),
                             ("GET", f"jobs/{done}/result"), ("POST", f"jobs/{queued}/cancel"), ("GET", "queue"),
                             ("POST", "jobs")):
            got = _svc(hub, new, method, path, **({"json": JOB} if path == "jobs" and method == "POST" else {}))
            assert got.status_code == 403, (method, path, got.status_code, got.text)
            message = got.json()["message"]
            assert "belonged to an earlier hub account" in message and "its 2 jobs" in message, message
            assert "gpuqueue release-name alice" in message and "--keep-finished" in message, message
            assert queued not in message and done not in message, message
        # a token that cannot read its own user's model (as a user server's: server_token_scopes):
        # the service reads the account's creation time with its own read:users
        r = _hub_api(hub, ops, "POST", "users/alice/tokens", json={"scopes": ["access:services!service=gpuqueue"]})
        narrow = r.json()["token"]
        assert "created" not in _hub_api(hub, narrow, "GET", "user").json()
        got = _svc(hub, narrow, "GET", "jobs")
        assert got.status_code == 403 and "belonged to an earlier hub account" in got.json()["message"], got.text
        assert _svc(hub, carol, "GET", f"jobs/{queued}").json()["state"] == "queued"  # untouched

        # the release: queue admins only; the earlier account's queued jobs are cancelled first
        got = _svc(hub, bob, "POST", "hub-names/alice/release")
        assert got.status_code == 403 and "queue admins" in got.json()["message"], got.text
        assert _hub_api(hub, ops, "POST", "groups/gpuqueue-admins/users", json={"users": ["carol"]}).status_code == 200
        carol = _token(hub, ops, "carol")  # a new token: no cached answer
        out = _cli(hub, carol, "release-name", "alice")
        assert out.returncode != 0 and queued in out.stderr and "cancel them first" in out.stderr, out
        got = _svc(hub, carol, "POST", "hub-names/bob/release")  # bob's name is bob's account's: nothing to do
        assert got.status_code == 409 and "nothing to release" in got.json()["message"], got.text
        assert _svc(hub, carol, "POST", f"jobs/{queued}/cancel").json()["state"] == "cancelled"
        # a name is released as written: never decoded twice (al%69ce is not alice), one with / or
        # odd characters is a name like any other, none of which is on record
        for odd in ("al%69ce", "al%2569ce", "x/y", "../alice", "\u00e4lice", "a" * 3000):
            out = _cli(hub, carol, "release-name", odd)
            assert out.returncode != 0 and "Traceback" not in out.stderr, (odd, out)
            assert "has no hub account on record for the name" in out.stderr, (odd, out.stderr)
        assert _svc(hub, new, "GET", "jobs").status_code == 403  # alice's name still bound: nothing released
        store = RedisStore(c.redis.url)
        old_uid = DynamicIdentities(store.r, store.k("identity")).resolve("alice").uid  # as a root worker did
        out = _cli(hub, carol, "release-name", "alice")
        assert out.returncode == 0, out
        assert "'alice' released: 2 finished job(s) of the earlier account" in out.stdout, out.stdout
        # her uid is retired: the new alice's jobs get a new one; her files are the admin's to remove
        assert f"its dynamic uid {old_uid} is retired: the new account's jobs get a new uid" in out.stdout, out.stdout
        assert "remove or archive them" in out.stdout, out.stdout
        assert "alice" not in store.r.hgetall(store.k("identity"))
        assert DynamicIdentities(store.r, store.k("identity")).resolve("alice").uid != old_uid
        assert "queue admin 'carol' released the hub user name 'alice'" in hub.log()  # audited

        # the new alice now works, and starts with no jobs; the earlier account's are gone
        assert _svc(hub, new, "GET", "jobs").json()["jobs"] == []
        assert _svc(hub, new, "GET", f"jobs/{done}/events").status_code == 404
        mine = _svc(hub, new, "POST", "jobs", json=JOB).json()["id"]
        assert [j["id"] for j in _svc(hub, new, "GET", "jobs").json()["jobs"]] == [mine]
        assert {j["id"] for j in _svc(hub, carol, "GET", "jobs?all=1").json()["jobs"]} == {mine}
        assert _svc(hub, carol, "POST", "hub-names/alice/release").status_code == 409  # hers now

        # a rename onto a name in use by the queue is the same case: bob renamed to alice's old
        # name after alice is deleted is refused
        assert _hub_api(hub, ops, "DELETE", "users/alice").status_code == 204
        assert _hub_api(hub, ops, "PATCH", "users/bob", json={"name": "alice"}).status_code == 200

        def refused() -> bool:
            return _svc(hub, bob, "GET", "jobs").status_code == 403

        wait_until(refused, CACHE_S + 10, 0.2, "bob, renamed alice, to be refused")
        assert "Traceback" not in hub.log()
    finally:
        hub.stop()
        c.close()


def test_without_read_users_the_api_warns_once_and_binds_nothing(tmp_path: Path, redis_factory: Any) -> None:
    r = redis_factory()
    c = Cluster(tmp_path / "cluster", r, {"n1": 2})
    c.users.unlink()
    hub = Hub(tmp_path / "hub", r.url, gpuqueue_config=GPUQUEUE_CONFIG)
    hub.config.write_text(hub.config.read_text() + HUB_EXTRA + NO_SERVICE_ROLE)
    try:
        c.start_daemon()
        hub.start()
        ops = _ops_token(hub)
        old = _token(hub, ops, "alice")
        job = _svc(hub, old, "POST", "jobs", json=JOB).json()["id"]
        wait_until(lambda: "queue names are not bound to hub accounts" in hub.log(), 30, 0.2, "the warning")
        new = _recreate_alice(hub, ops)
        assert [j["id"] for j in _svc(hub, new, "GET", "jobs").json()["jobs"]] == [job]  # as before
        log = hub.log()
        assert log.count("queue names are not bound to hub accounts") == 1, log[-3000:]
        assert "'read:users'" in log and "'gpuqueue-service'" in log

        # a name bound while the service had read:users (the role removed since): a release cannot
        # learn whose the name is now, so it deletes nothing (was: the current alice's finished jobs)
        assert _svc(hub, new, "POST", f"jobs/{job}/cancel").json()["state"] == "cancelled"
        RedisStore(r.url).r.hset(RedisStore(r.url).k("hubnames"), "alice", "2020-01-01T00:00:00.000000Z")
        assert _hub_api(hub, ops, "POST", "groups/gpuqueue-admins/users", json={"users": ["carol"]}).status_code == 200
        got = _svc(hub, _token(hub, ops, "carol"), "POST", "hub-names/alice/release")
        assert got.status_code == 503 and "nothing was released" in got.json()["message"], got.text
        assert _svc(hub, new, "GET", f"jobs/{job}").json()["state"] == "cancelled"  # still there
    finally:
        hub.stop()
        c.close()
