"""A queue admin's release of a hub user name (``gpuqueue.cluster.hub_names``) against a submit of
the earlier account that was checked before the release and lands during or after it (its token
still cached by the service for ``--hub-cache-s``). Such a submit was stored, and its job went to
the next hub account of that name. Deterministic: the release asks the hub who has the name now,
and the hub here (a stand-in for JupyterHub's REST API: the two answers the release reads) lands
the stale submit and the new account's request while it answers, with the name marked as being
released; the same submit then lands again after the release. A release also retires the name's
dynamic uid: the next account's jobs run under a new uid and, with root workers, cannot read what
the former account's jobs left in their HOME. The rest of the binding, with a real hub:
tests/hub/test_hub_names.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from jupyterhub.httpclient import JupyterHubHTTPClient
from tornado import httpserver, netutil, web

from gpuqueue.attempt.identity import DynamicIdentities
from gpuqueue.cluster.frontend import ClusterFrontend
from gpuqueue.cluster.hub_names import RELEASING, HubNames
from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.queue.errors import Conflict, Forbidden, Unavailable
from gpuqueue.queue.models import SubmitRequest
from gpuqueue.queue.states import JobState
from gpuqueue.queue.verbs import Caller

OLD = {"name": "alice", "created": "2026-01-01T00:00:00.000000Z", "kind": "user"}
NEW = {"name": "alice", "created": "2026-06-01T00:00:00.000000Z", "kind": "user"}
OPS = Caller("ops", admin=True)


def _req() -> SubmitRequest:
    return SubmitRequest.model_validate({"spec": {"kind": "command", "command": [sys.executable, "-c", "pass"]}})


def test_a_submit_checked_before_a_release_never_lands_in_the_next_accounts_name(
        redis_factory: Callable[..., Any]) -> None:
    store = RedisStore(redis_factory().url)
    front = ClusterFrontend(store)
    during: dict[str, Any] = {}

    async def main() -> None:
        names: HubNames

        class HubApi(web.RequestHandler):
            async def get(self, path: str) -> None:
                if path == "user":  # the service's own token: it may read users' creation time
                    self.write(json.dumps({"kind": "service", "scopes": ["read:users"]}))
                    return
                # users/alice: the earlier account is deleted; while the release waits for this
                # answer, the earlier account's checked submit and the new account's request land
                during["stale"] = await _outcome(front.submit(stale, _req()))
                during["new"] = await _outcome(names.check("new-token", NEW))
                self.set_status(404)

        sockets = netutil.bind_sockets(0, "127.0.0.1")
        server = httpserver.HTTPServer(web.Application([(r"/hub/api/(.*)", HubApi)]))
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        hub = SimpleNamespace(api_url=f"http://127.0.0.1:{port}/hub/api/", api_token="service-token",
                              certfile=None, keyfile=None, client_ca=None)
        names = HubNames(store, hub, cache_s=60)
        try:
            account = await names.check("old-token", OLD)
            stale = Caller("alice", hub_account=account)  # checked now, its submit lands later
            done, _ = await front.submit(stale, _req())
            done.state = JobState.CANCELLED
            store.exec(store.job_ops(done))
            queued, _ = await front.submit(stale, _req())
            with pytest.raises(Conflict, match="still has 1 queued or running job"):
                await names.release(OPS, "alice")
            assert during["stale"][0] == "Forbidden"  # the name was marked: refused, nothing queued
            with pytest.raises(Forbidden, match="belonged to an earlier hub account"):  # still bound, as before
                await names.check("new-token", NEW)
            # a release cut short (the API killed in the middle) left the name marked: its requests
            # are told to try again; the next release, refused here, leaves it bound as before
            store.r.hset(names.key, "alice", RELEASING + OLD["created"])
            with pytest.raises(Unavailable, match="is releasing the queue name 'alice'"):
                await names.check("old-token", OLD)
            with pytest.raises(Conflict, match="still has 1 queued or running job"):
                await names.release(OPS, "alice")
            assert await names.check("old-token", OLD) == OLD["created"]
            queued.state = JobState.CANCELLED
            store.exec(store.job_ops(queued))
            during.clear()

            got = await names.release(OPS, "alice")
            assert got["deleted_jobs"] == 2  # done and queued: nothing landed during either release
            # while the release ran: the earlier account's checked submit refused, nothing queued;
            # the new account told to try again
            assert during["stale"] == ("Forbidden", during["stale"][1])
            assert "released the queue name 'alice' (or is releasing it)" in during["stale"][1]
            assert "nothing was queued" in during["stale"][1]
            assert during["new"][0] == "Unavailable" and "is releasing the queue name 'alice'" in during["new"][1]
            # after it: the same submit is refused again (was: stored, the new account's job)
            with pytest.raises(Forbidden, match="nothing was queued"):
                await front.submit(stale, _req())
            # nor does its next request bind the name to it again (was: bound, the new account refused)
            with pytest.raises(Forbidden, match="released the queue name 'alice' from this hub account"):
                await names.check("old-token", OLD)
            new = Caller("alice", hub_account=await names.check("new-token", NEW))
            assert new.hub_account == NEW["created"]
            assert await front.list_jobs(new) == []  # the new account starts with no jobs
            mine, _ = await front.submit(new, _req())
            assert [j.id for j in await front.list_jobs(new)] == [mine.id]
            assert store.r.hget(names.key, "alice") == NEW["created"]
        finally:
            await JupyterHubHTTPClient.loop_instance().close()
            server.stop()
            front.reads.close()

    async def _outcome(aw: Any) -> tuple[str, str]:
        try:
            await aw
        except (Forbidden, Unavailable, Conflict) as e:
            return type(e).__name__, str(e)
        return "ok", ""

    asyncio.run(main())


def test_a_release_retires_the_names_dynamic_uid_so_the_next_account_cannot_read_the_former_users_files(
        redis_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # root workers ran the former alice's jobs as her dynamic uid (gpuqueue.attempt.identity); the
    # new alice's jobs got the same uid, and with it her HOME, job folders and checkpoints
    store = RedisStore(redis_factory().url)
    worker = DynamicIdentities(store.r, store.k("identity"), (70000, 70049))
    old_uid, bob_uid = worker.resolve("alice").uid, worker.resolve("bob").uid

    async def main(names: HubNames) -> dict[str, Any]:
        await names.check("old-token", OLD)
        await names.check("carol-token", {"name": "carol", "created": "2026-02-01T00:00:00.000000Z"})
        with caplog.at_level(logging.WARNING, logger="gpuqueue.api"):
            got = await names.release(OPS, "alice")
        assert (await names.release(OPS, "carol"))["retired_uid"] is None  # no job of hers ever ran as root
        assert await names.check("new-token", NEW) == NEW["created"]
        return got

    got = _with_deleted_accounts_hub(store, main)
    assert got["retired_uid"] == old_uid  # the answer names it
    assert f"its dynamic uid {old_uid} retired" in caplog.text  # and the log
    ids = store.r.hgetall(store.k("identity"))
    assert "alice" not in ids and ids[f"released\nalice\n{OLD['created']}\n{old_uid}"] == str(old_uid)
    new_uid = worker.resolve("alice").uid  # the same worker process: no cached uid
    assert new_uid not in (old_uid, bob_uid)
    assert worker.resolve("dave").uid not in (old_uid, bob_uid, new_uid)  # never handed out twice

    # what the queue admin reads (gpuqueue release-name alice)
    from gpuqueue import cli

    monkeypatch.setattr(cli, "_client", lambda: SimpleNamespace(release_name=lambda name: got))
    assert cli.cmd_release_name(SimpleNamespace(name="alice")) == 0
    out = capsys.readouterr().out
    assert f"its dynamic uid {old_uid} is retired: the new account's jobs get a new uid" in out, out
    assert f"owned by uid {old_uid}" in out and "remove or archive them" in out, out


def _with_deleted_accounts_hub(store: RedisStore, fn: Callable[[HubNames], Any]) -> Any:
    """``await fn(names)`` with a stand-in hub whose service may read users and that knows no
    user (every earlier account deleted)."""
    async def main() -> Any:
        class HubApi(web.RequestHandler):
            async def get(self, path: str) -> None:
                if path == "user":
                    self.write(json.dumps({"kind": "service", "scopes": ["read:users"]}))
                    return
                self.set_status(404)  # users/NAME: the earlier account is deleted

        sockets = netutil.bind_sockets(0, "127.0.0.1")
        server = httpserver.HTTPServer(web.Application([(r"/hub/api/(.*)", HubApi)]))
        server.add_sockets(sockets)
        hub = SimpleNamespace(api_url=f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hub/api/",
                              api_token="service-token", certfile=None, keyfile=None, client_ca=None)
        try:
            return await fn(HubNames(store, hub, cache_s=60))
        finally:
            await JupyterHubHTTPClient.loop_instance().close()
            server.stop()

    return asyncio.run(main())


READ_FORMER_HOME = r"""
import os, sys
print("uid", os.getuid(), flush=True)
if sys.argv[1] == "write":
    with open(os.path.join(os.environ["HOME"], "notes.txt"), "w") as f:
        f.write("the former alice's notes")
    os.chmod(os.path.join(os.environ["HOME"], "notes.txt"), 0o644)  # even a file others may read
else:
    try:
        print("read:", open(sys.argv[2]).read(), flush=True)
    except OSError as e:
        print("refused:", type(e).__name__, flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' dynamic uids")
def test_the_next_account_of_a_released_name_cannot_read_what_the_former_users_jobs_left(tmp_path: Path) -> None:
    from training.jobs import logs

    from .conftest import Cluster, identity_cluster
    from .test_isolation import job_python

    py, _ = job_python()

    def probe(c: Cluster) -> None:
        (c.root / "probe.py").write_text(READ_FORMER_HOME)

    with identity_cluster("gq-released-name-", {"n1": 1}, redis_kw={"appendonly": False}, setup=probe,
                          worker_args=()) as c:  # a root worker: dynamic identities

        def job(*args: str) -> str:
            spec = {"kind": "command", "gpus": 1, "retries": 0, "command": [py, str(c.root / "probe.py"), *args]}
            jid = c.client("alice").submit(spec)["id"]
            rec = c.wait_done([jid], 60)[jid]
            out = logs(c.client("alice").events(jid))
            assert rec["state"] == "succeeded", out
            return out

        former = job("write")
        old_uid = int(former.split("uid ", 1)[1].split()[0])
        notes = c.root / "node-n1" / "home" / str(old_uid) / "notes.txt"
        assert notes.stat().st_uid == old_uid

        async def release(names: HubNames) -> dict[str, Any]:
            await names.check("old-token", OLD)  # the name was bound to the former account
            return await names.release(OPS, "alice")

        got = _with_deleted_accounts_hub(RedisStore(c.redis.url), release)
        assert got["retired_uid"] == old_uid and got["deleted_jobs"] == 1, got

        # the new alice's job, on the same worker (which ran the former alice's job): a new uid,
        # and the former alice's HOME closed to it (was: the same uid, the notes read)
        out = job("read", str(notes))
        assert f"uid {old_uid}" not in out and "refused: PermissionError" in out, out
        assert "the former alice's notes" not in out
        assert notes.read_text() == "the former alice's notes"  # left for the admin to remove or archive
