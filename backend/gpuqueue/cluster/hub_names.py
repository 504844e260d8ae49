"""Queue user names bound to the hub account they first came from (``gpuqueue api`` as a hub service).

Jobs belong to a hub user's *name*. A hub admin may delete ``alice`` and later create a new
account named ``alice`` (or rename someone to it); without more, that account would own the
earlier alice's jobs (kept for ``--keep-finished``): list, cancel, read their logs and results.
So the first time the service sees a name it records, in the store, the creation time of the hub
account it came from (``created`` in JupyterHub's user model), under ``<prefix>:hubnames``. A
later caller with that name and another creation time is refused (403, naming the fix) on every
queue request, until a queue admin releases the name (``gpuqueue release-name NAME``;
``POST <prefix>gpuqueue/api/hub-names/NAME/release``): that deletes the earlier account's finished
jobs at once, as ``--keep-finished`` would later, so that the new account starts with none, and
retires the name's dynamic uid (``gpuqueue.attempt.identity.RETIRE_LUA``, in the step that removes
the binding), so that the new account's jobs run under a new uid and cannot read the files the
earlier account's jobs left on the nodes and shared storage (left there, owned by the old uid, for
an admin to remove or archive). Queued or running jobs of the earlier account must be cancelled first.

The service reads ``created`` with its own hub token, which needs the ``read:users`` scope (a role
of the hub config, deploy/jupyterhub/jupyterhub_config.py): a user's token does not always carry it
(a user server's token holds ``c.Spawner.server_token_scopes`` only). A hub that does not give it
(a missing scope, an old hub): names are not bound, as before, with one warning in the log.
The hub's answer is cached per token for ``--hub-cache-s``, as the hub's own answer for the token;
the store is asked on each request (so a release counts at once).

A release cannot race a submit of the earlier account (a token the service still has cached):
it first marks the name as being released (``RELEASING`` and the account's creation time), so that
every request of that name is refused meanwhile, and only then looks for queued or running jobs
(a mark undone if it finds some, or fails); and a submit is stored only if the name is still bound,
at that moment, to the account the request was checked against (``Caller.hub_account``, in the
store's one submit script), so one checked before the release began and landing after it is
refused, not given to the next account; nor does a later request of the released account bind
the name to it again (``<prefix>:hubnames:released``). The release's store work runs off the
event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, Optional
from urllib.parse import quote

from ..attempt.identity import RETIRE_LUA
from ..queue.errors import Conflict, Forbidden, NotFound, Unavailable
from ..queue.states import LIVE_STATES
from ..queue.verbs import Caller
from ..rest.handlers import RestHandler
from .redis_store import RedisStore

log = logging.getLogger("gpuqueue.api")
SCOPE = "read:users"
ROLE_HINT = (f"add a role that gives the service {SCOPE!r} to c.JupyterHub.load_roles, e.g. "
             f"{{'name': 'gpuqueue-service', 'scopes': ['{SCOPE}'], 'services': ['gpuqueue']}} "
             f"(deploy/jupyterhub/jupyterhub_config.py; docs/deploy.md, Renaming and deleting hub users)")
DELETE_BATCH = 200  # jobs deleted per store transaction by a release
RELEASING = "releasing:"
"""A binding's value while a queue admin releases the name: this, then the account's creation time."""
# KEYS[1] the bindings, KEYS[2] the released accounts ("NAME\nCREATED"); ARGV: name, from, to:
# set name's binding to ``to`` ('' deletes it, and records ``from``'s account as released) only
# where it is ``from`` now; returns 1 where done, else 0.
_SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[1] .. '\\n' .. ARGV[4])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"""
# KEYS[1], KEYS[2] as _SWAP, KEYS[3] the dynamic identities (gpuqueue.attempt.identity); ARGV:
# name, mark, account: the end of a release, in one step: where the name is still marked, its
# dynamic uid retired (the next account's jobs get a new one) and its binding removed (the
# account recorded as released); returns {1, retired uid or -1}, or {0} where the mark is gone.
_RELEASE = RETIRE_LUA + """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return {0} end
local uid = retire(KEYS[3], ARGV[1], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1] .. '\\n' .. ARGV[3])
return {1, uid or -1}
"""
# KEYS as _SWAP; ARGV: name, created. Binds name to created unless bound already (returns the
# binding) or that account gave the name up in a release (returns {2}); {1} where bound now.
_BIND = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {0, cur} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2]) == 1 then return {2} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1}
"""


def released_message(name: str) -> str:
    """The refusal of a submit checked before a queue admin released ``name`` (or began to)."""
    return (f"a queue admin released the queue name {name!r} (or is releasing it) while this request was on "
            f"its way: nothing was queued; try again (a new hub account of that name then starts with no jobs)")


class HubNames:
    """The binding of queue names to hub accounts: :meth:`check` on every hub request,
    :meth:`release` for a queue admin."""

    def __init__(self, store: RedisStore, hub: Any, cache_s: float = 60.0):
        self.store, self.hub, self.cache_s = store, hub, cache_s
        self.enabled: Optional[bool] = None  # None: not yet known whether the hub gives `created`
        self._cache: dict[str, tuple[float, str]] = {}  # sha256(token) -> (until, created)
        self._lock = asyncio.Lock()

    @property
    def key(self) -> str:
        return self.store.k("hubnames")

    @property
    def released_key(self) -> str:
        """The accounts a release took a name from (``NAME\nCREATED``): they never bind it again."""
        return self.store.k("hubnames:released")

    async def _get(self, path: str) -> tuple[int, Any]:
        """``GET`` the hub API with the service's own token: (status, JSON or None)."""
        from jupyterhub.httpclient import fetch
        from jupyterhub.utils import make_ssl_context, url_path_join

        kw: dict[str, Any] = {}
        if self.hub.certfile or self.hub.keyfile:
            kw["ssl"] = make_ssl_context(self.hub.keyfile, self.hub.certfile, cafile=self.hub.client_ca)
        try:
            r = await fetch(url_path_join(self.hub.api_url, path), method="GET", raise_for_status=False,
                            headers={"Authorization": f"token {self.hub.api_token}"}, **kw)
            text = await r.text()
        except Exception as e:  # noqa: BLE001 - the hub is down or unreachable
            raise Unavailable(f"cannot reach JupyterHub at {self.hub.api_url} ({e}); try again in a moment") from None
        return r.status, (json.loads(text) if r.status == 200 else None)

    def _disable(self, why: str) -> None:
        if self.enabled is not False:
            log.warning("queue names are not bound to hub accounts: %s; a new hub account that takes a deleted "
                        "or renamed user's name gets that name's jobs: %s", why, ROLE_HINT)
        self.enabled = False

    async def probe(self) -> Optional[bool]:
        """Whether the service's token may read users' ``created`` (its scopes say ``read:users``);
        logs the one warning where not. None while the hub cannot be asked."""
        async with self._lock:
            if self.enabled is None:
                try:
                    status, me = await self._get("user")
                except Unavailable:
                    return None
                scopes = (me or {}).get("scopes")
                if status != 200 or not isinstance(scopes, list):
                    self._disable(f"the hub's answer for this service ({status}) lists no scopes (an old hub?)")
                elif SCOPE not in scopes:
                    self._disable(f"the hub gives this service no {SCOPE!r} scope, which reads a hub account's "
                                  f"creation time")
                else:
                    self.enabled = True
                    log.info("queue names are bound to the hub account they first came from (its creation time)")
            return self.enabled

    async def probe_at_start(self, tries: int = 60) -> None:
        """:meth:`probe` until the hub answers (a managed service may start before the hub's API)."""
        for _ in range(tries):
            if await self.probe() is not None:
                return
            await asyncio.sleep(1.0)

    async def created(self, token: str, model: dict[str, Any]) -> Optional[str]:
        """The creation time of the hub account ``model`` (the hub's answer for ``token``) is, from
        the model where the token could read it, else from the hub; cached per token."""
        key = hashlib.sha256(token.encode("utf8", "replace")).hexdigest() if token else ""
        now = time.monotonic()
        hit = self._cache.get(key) if key else None
        if hit and hit[0] > now:
            return hit[1]
        created = model.get("created")
        if not created:
            status, user = await self._get("users/" + quote(str(model["name"]), safe=""))
            if status == 403:
                self._disable(f"the hub refused this service {SCOPE!r} (403 reading a user)")
                return None
            if status == 404:  # renamed or deleted since the hub answered for the token
                raise Unavailable(f"hub user {model['name']!r} changed in the hub just now: try again in a moment")
            if status != 200:
                raise Unavailable(f"JupyterHub answered {status} for hub user {model['name']!r}: try again in a moment")
            created = (user or {}).get("created")
            if not created:
                self._disable("the hub's user model has no 'created' (an old hub?)")
                return None
        if key:
            if len(self._cache) > 10_000:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + self.cache_s, str(created))
        return str(created)

    async def check(self, token: str, model: dict[str, Any]) -> Optional[str]:
        """Bind ``model``'s name to its account on first sight; Forbidden for another account with
        the name of an earlier one, Unavailable while a queue admin releases the name. Returns the
        account's creation time the name is bound to (for ``Caller.hub_account``), None where names
        are not bound."""
        if self.enabled is None:
            await self.probe()
        if not self.enabled:
            return None
        created = await self.created(token, model)
        if created is None:
            return None
        name = str(model["name"])
        r = self.store.r
        got = r.eval(_BIND, 2, self.key, self.released_key, name, created)
        if int(got[0]) == 1:
            log.info("queue name %r bound to the hub account created %s", name, created)
            return created
        if int(got[0]) == 2:  # the earlier account's token, still cached, after the release
            raise Forbidden(f"a queue admin released the queue name {name!r} from this hub account (created "
                            f"{created}) for the next account of that name: this account's jobs are gone, and it "
                            f"may queue none under that name")
        bound = str(got[1])
        if bound == created:
            return created
        if bound.startswith(RELEASING):
            raise Unavailable(f"a queue admin is releasing the queue name {name!r} just now (it deletes the earlier "
                              f"hub account's finished jobs): try again in a moment")
        n = r.zcard(self.store.k("owner", name))
        raise Forbidden(
            f"the queue name {name!r} belonged to an earlier hub account (created {bound}; this one was created "
            f"{created}): its {n} job{'s' if n != 1 else ''} stay that account's, kept until a queue admin releases "
            f"the name (finished ones at most --keep-finished after they end, 30 days by default); a queue admin "
            f"releases the name with `gpuqueue release-name {name}` (it deletes the earlier account's finished "
            f"jobs; docs/deploy.md, Renaming and deleting hub users)")

    async def release(self, caller: Caller, name: str) -> dict[str, Any]:
        """A queue admin gives ``name`` to the next hub account that uses it: the earlier account's
        finished jobs are deleted (its queued or running ones: Conflict, cancel them first). The
        name is marked as being released first (every request of it refused meanwhile), and the
        store's work runs off the event loop."""
        if not caller.admin:
            raise Forbidden("releasing a hub user name is for queue admins (custom:gpuqueue:admin)")
        bound = await asyncio.to_thread(self.store.r.hget, self.key, name)
        if bound is None:
            raise NotFound(f"the queue has no hub account on record for the name {name!r}: nothing to release")
        bound = bound[len(RELEASING):] if bound.startswith(RELEASING) else bound  # an earlier release cut short
        mark = RELEASING + bound
        if not await asyncio.to_thread(self._swap, name, bound, mark) and \
                await asyncio.to_thread(self.store.r.hget, self.key, name) != mark:
            raise Conflict(f"the binding of the name {name!r} changed just now: release it again")
        done = False
        try:
            status, user = await self._get("users/" + quote(name, safe=""))
            if status == 200 and (user or {}).get("created") == bound:
                raise Conflict(f"the jobs of {name!r} belong to the hub account of that name now (created {bound}): "
                               f"nothing to release (a release would delete that user's finished jobs)")
            if status not in (200, 404) or (status == 200 and not (user or {}).get("created")):
                # the hub did not say who has the name now (no read:users any more, an error): a release
                # could delete the finished jobs of the very account the name is bound to
                raise Unavailable(f"JupyterHub answered {status} for hub user {name!r} without the account's "
                                  f"creation time, so whether the name's jobs are still that account's is not "
                                  f"known: nothing was released; {ROLE_HINT}")
            deleted, uid = await asyncio.to_thread(self._release, name, mark)
            done = True
        finally:
            if not done:  # the name stays bound to the earlier account, as before the release
                await asyncio.to_thread(self._swap, name, mark, bound)
        self._cache.clear()
        log.warning("queue admin %r released the hub user name %r (bound to the hub account created %s): %d "
                    "finished job(s) of that account deleted; %s", caller.name, name, bound, deleted,
                    "no dynamic uid to retire" if uid is None else
                    f"its dynamic uid {uid} retired (the next account's jobs get a new uid; the former user's "
                    f"files on the nodes and shared storage, owned by uid {uid}, are left as they are)")
        return {"name": name, "released": True, "deleted_jobs": deleted, "account_created": bound,
                "retired_uid": uid}

    def _swap(self, name: str, old: str, new: str) -> bool:
        """Set ``name``'s binding to ``new`` ('' removes it) where it is ``old``, atomically."""
        account = old[len(RELEASING):] if old.startswith(RELEASING) else old
        return bool(self.store.r.eval(_SWAP, 2, self.key, self.released_key, name, old, new, account))

    def _release(self, name: str, mark: str) -> tuple[int, Optional[int]]:
        """:meth:`release`'s store work, blocking, with the name marked ``mark`` (no submit of it
        lands meanwhile): Conflict while it has queued or running jobs, else its jobs deleted, then
        its dynamic uid retired and the binding removed in one step; the number of jobs deleted and
        the retired uid (None: workers never gave the name one)."""
        live = [j.id for j in self.store.live_jobs(name) if j.state in LIVE_STATES]
        if live:
            raise Conflict(f"the earlier hub account {name!r} still has {len(live)} queued or running job(s) "
                           f"({', '.join(sorted(live)[:10])}): cancel them first (`gpuqueue cancel ID`), then "
                           f"release the name again")
        ids = self.store.r.zrange(self.store.k("owner", name), 0, -1)
        jobs = [j for j in self.store.get_jobs(ids) if j.state.is_terminal]
        for i in range(0, len(jobs), DELETE_BATCH):
            self.store.exec([op for j in jobs[i:i + DELETE_BATCH] for op in self.store.delete_job_ops(j)])
        got = self.store.r.eval(_RELEASE, 3, self.key, self.released_key, self.store.k("identity"), name, mark,
                                mark[len(RELEASING):])
        if not int(got[0]):
            raise Conflict(f"the binding of the name {name!r} changed during its release: release it again")
        return len(jobs), (None if int(got[1]) < 0 else int(got[1]))


class ReleaseHandler(RestHandler):
    """``POST <prefix>gpuqueue/api/hub-names/NAME/release``: a queue admin releases a hub user name."""

    async def post(self, name: str) -> None:
        names: Optional[HubNames] = self.settings.get("gpuqueue_hub_names")
        if names is None:
            raise NotFound("hub user names are bound only where the API is a JupyterHub service")
        # tornado has decoded the path's %-escapes already: decoding again would release another
        # name (``al%69ce`` as ``alice``)
        self.send(await names.release(self.caller, name))
