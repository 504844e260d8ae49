"""A queue admin's release of a hub user name (``gpuqueue.cluster.hub_names``) against a submit of
the earlier account that was checked before the release and lands during or after it (its token
still cached by the service for ``--hub-cache-s``). Such a submit was stored, and its job went to
the next hub account of that name. Deterministic: the release asks the hub who has the name now,
and the hub here (a stand-in for JupyterHub's REST API: the two answers the release reads) lands
the stale submit and the new account's request while it answers, with the name marked as being
released; the same submit then lands again after the release. The rest of the binding, with a
real hub: tests/hub/test_hub_names.py."""

from __future__ import annotations

import asyncio
import json
import sys
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from jupyterhub.httpclient import JupyterHubHTTPClient
from tornado import httpserver, netutil, web

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
