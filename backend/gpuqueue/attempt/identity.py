"""Who a job runs as on a node: each gpuqueue user's own Unix identity.

A worker that runs as root starts every job under its owner's own uid and gid, so the jobs of
different users cannot read or write each other's files, nor signal or trace each other's
processes. Where the identity comes from (``gpuqueue worker --identities``):

* ``dynamic`` (the default as root): a uid/gid per user, like systemd's ``DynamicUser``, from a
  range no account uses (default 61184-65519, ``--uid-range``). It is allocated once, atomically,
  in the store, so every node gives a user the same uid (files on shared storage keep one owner).
  A uid is never handed out twice: where a queue admin gives a former hub user's name to a new
  account (``gpuqueue release-name``, ``gpuqueue.cluster.hub_names``), the name's uid is retired
  (:data:`RETIRE_LUA`) and the name's next job gets a fresh one, so the new person cannot read what
  the former one left on the nodes or on shared storage. Workers ask the store at every job start
  (no uid is cached), so a retirement counts at once on every node.
* ``passwd``: the OS account of the same name (local, LDAP or sssd: whatever NSS knows).
* a TOML file: ``alice = 1001`` (gid = uid) or ``alice = {uid = 1001, gid = 1001}`` per line.
* ``none``: jobs run as the worker's own user: no isolation between users (single-user nodes,
  tests).

Root, system accounts (below ``UID_MIN`` of ``/etc/login.defs``) and system groups are refused;
so is a dynamic uid that a local account or group of this node already uses.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

DEFAULT_RANGE = (61184, 65519)  # systemd's DynamicUser range: no distribution gives it to accounts
USERS_GID = 100  # the usual shared primary group of real accounts ("users"): allowed below GID_MIN
MODES = ("auto", "dynamic", "passwd", "none")


class IdentityError(ValueError):
    """A user has no identity this node may run jobs as. The message says why and the fix."""


@dataclass(frozen=True)
class Identity:
    """The Unix identity one user's jobs run as."""

    user: str  # the gpuqueue user (the job's owner)
    uid: int
    gid: int
    home: Optional[str] = None  # the account's home; None: the worker gives one under its state dir
    account: Optional[str] = None  # the OS account name, if there is one


class Identities(Protocol):
    """Maps a job's owner to the identity its jobs run as on this node."""

    def resolve(self, user: str) -> Identity:
        """The identity of ``user``; raises :class:`IdentityError`."""


def login_defs(path: str = "/etc/login.defs") -> dict[str, int]:
    """``UID_MIN`` and ``GID_MIN`` of the system (1000 where the file does not say)."""
    out = {"UID_MIN": 1000, "GID_MIN": 1000}
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in out and parts[1].isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def check_ids(user: str, uid: int, gid: int, where: str) -> None:
    """Refuse root, system accounts and system groups."""
    limits = login_defs()
    if uid == 0 or gid == 0:
        raise IdentityError(f"{where} maps user {user!r} to root (uid {uid}, gid {gid}): jobs never run as root")
    if uid < limits["UID_MIN"]:
        raise IdentityError(f"{where} maps user {user!r} to uid {uid}, a system account (below UID_MIN "
                            f"{limits['UID_MIN']}): map it to the user's own account")
    if gid < limits["GID_MIN"] and gid != USERS_GID:
        raise IdentityError(f"{where} maps user {user!r} to gid {gid}, a system group (below GID_MIN "
                            f"{limits['GID_MIN']}): give the user's own group")
    if uid in (65534, 65535) or gid in (65534, 65535):
        raise IdentityError(f"{where} maps user {user!r} to nobody (uid {uid}, gid {gid}): files of nobody are "
                            f"everyone's; give the user an account of their own")
    if uid >= 2**31 - 1 or gid >= 2**31 - 1:
        raise IdentityError(f"{where} maps user {user!r} to uid {uid} / gid {gid}: over 2^31-2")


def parse_range(text: str) -> tuple[int, int]:
    """``"61184-65519"`` -> (61184, 65519); raises ValueError naming the fix."""
    lo, sep, hi = text.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ValueError(f"--uid-range {text!r}: write FIRST-LAST, e.g. 61184-65519")
    first, last = int(lo), int(hi)
    limits = login_defs()
    if first > last or first < limits["UID_MIN"] or last > 2**31 - 2:
        raise ValueError(f"--uid-range {text!r}: FIRST <= LAST, from UID_MIN ({limits['UID_MIN']}) to 2147483646")
    if first <= 65534 <= last or first <= 65535 <= last:
        raise ValueError(f"--uid-range {text!r} holds 65534/65535 (nobody, and (uid_t)-1 of old programs): "
                         f"end below 65534 or start above 65535")
    return first, last


# One user -> one uid, on every node, until the name is retired: HGET, or take the next free
# number of the range. The HASH only grows (a retired name's field becomes a tombstone, below),
# so ``range start + HLEN`` is a number never handed out before.
_ALLOCATE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return tonumber(v) end
local n = redis.call('HLEN', KEYS[1])
local uid = tonumber(ARGV[2]) + n
if uid > tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], uid)
return uid
"""
TOMBSTONE = "released\n"
"""The start of a retired uid's field in the identity HASH: ``released\nNAME\nTAG\nUID`` -> UID
(TAG: the hub account's creation time). No user name holds a newline (:meth:`DynamicIdentities.resolve`)."""
# A Lua function, for scripts that retire a name's uid with other store work in one step
# (gpuqueue.cluster.hub_names): retire(hash, name, tag) moves the name's field to a tombstone
# field (HDEL + HSET: HLEN unchanged, so the uid is never allocated again) and returns the uid,
# or false where the name has none.
RETIRE_LUA = """
local function retire(hash, name, tag)
  local v = redis.call('HGET', hash, name)
  if not v then return false end
  redis.call('HDEL', hash, name)
  redis.call('HSET', hash, 'released\\n' .. name .. '\\n' .. tag .. '\\n' .. v, v)  -- TOMBSTONE
  return tonumber(v)
end
"""
_RETIRE = RETIRE_LUA + "return retire(KEYS[1], ARGV[1], ARGV[2])\n"


def retire(redis: Any, key: str, user: str, tag: str) -> Optional[int]:
    """Retire ``user``'s dynamic uid in the HASH ``key``: the name's next job gets a new uid, and
    the old one is never handed out again. Returns the retired uid (None: it had none)."""
    got = redis.eval(_RETIRE, 1, key, user, tag)
    return None if got is None else int(got)


class DynamicIdentities:
    """A uid/gid per user from ``uid_range``, allocated in the store (``redis``: a redis-py
    client; ``key``: a HASH user -> uid). The gid is the uid. Allocations are never reused. The
    store is asked on every :meth:`resolve` (once per job start: one EVALSHA), never a cache, so a
    uid retired by a release of the name (:func:`retire`) is not used again by any worker."""

    def __init__(self, redis: Any, key: str, uid_range: tuple[int, int] = DEFAULT_RANGE):
        self.key = key
        self.range = uid_range
        self._allocate = redis.register_script(_ALLOCATE)

    def resolve(self, user: str) -> Identity:
        """The user's identity (allocating it on first use, or after its uid was retired)."""
        if "\n" in user:  # the tombstone fields hold one
            raise IdentityError(f"user {user!r}: a name with a newline gets no dynamic uid")
        uid = int(self._allocate(keys=[self.key], args=[user, *self.range]))
        if uid < 0:
            raise IdentityError(f"no uid left for user {user!r} in the range {self.range[0]}-{self.range[1]}: "
                                f"give the workers a larger --uid-range")
        if not self.range[0] <= uid <= self.range[1]:
            raise IdentityError(f"user {user!r} has uid {uid} in the store, outside this worker's --uid-range "
                                f"{self.range[0]}-{self.range[1]}: give every worker the same range")
        _refuse_local_account(user, uid)
        return Identity(user, uid, uid)


def _refuse_local_account(user: str, uid: int) -> None:
    """A dynamic uid/gid must not be an account or group of this node (nss-systemd lists
    systemd's own dynamic users while they run)."""
    for what, lookup in (("account", pwd.getpwuid), ("group", grp.getgrgid)):
        try:
            entry = lookup(uid)
        except KeyError:
            continue
        raise IdentityError(f"the dynamic uid {uid} of user {user!r} is the {what} {entry[0]!r} on this node: "
                            f"give the workers a --uid-range no account uses")


class PasswdIdentities:
    """The OS account of the same name (through NSS: /etc/passwd, LDAP, sssd)."""

    def resolve(self, user: str) -> Identity:
        """The account named ``user``."""
        try:
            pw = pwd.getpwnam(user)
        except (KeyError, ValueError):
            raise IdentityError(f"user {user!r} has no OS account on this node (--identities passwd): "
                                f"create it, or map users in a file (--identities FILE.toml)") from None
        check_ids(user, pw.pw_uid, pw.pw_gid, "the OS account database")
        return Identity(user, pw.pw_uid, pw.pw_gid, pw.pw_dir or None, pw.pw_name)


class FileIdentities:
    """A TOML file: ``alice = 1001`` or ``alice = {uid = 1001, gid = 1001}``; a user who is not
    in it cannot run jobs. Checked whole when loaded."""

    def __init__(self, path: str):
        from ..queue.config import read_toml
        from ..queue.errors import BadRequest

        try:
            data = read_toml(path, "--identities file")
        except BadRequest as e:
            raise IdentityError(str(e)) from None
        self.path = path
        self.map: dict[str, Identity] = {}
        for user, v in data.items():
            if isinstance(v, int) and not isinstance(v, bool):
                uid, gid = v, v
            elif isinstance(v, dict) and isinstance(v.get("uid"), int) and isinstance(v.get("gid", v.get("uid")), int):
                uid = v["uid"]
                gid = v["gid"] if "gid" in v else uid
            else:
                raise IdentityError(f"--identities {path}: write {user} = UID or {user} = {{uid = UID, gid = GID}}")
            check_ids(user, uid, gid, f"--identities {path}")
            self.map[user] = Identity(user, uid, gid, v.get("home") if isinstance(v, dict) else None)

    def resolve(self, user: str) -> Identity:
        """The mapped identity of ``user``."""
        try:
            return self.map[user]
        except KeyError:
            raise IdentityError(f"user {user!r} is not in the identities file {self.path}: add {user} = UID") from None


def can_switch() -> bool:
    """Whether this process may start jobs under other identities (it runs as root)."""
    return os.geteuid() == 0


def from_option(mode: str, redis: Any = None, key: str = "gq:identity",
                uid_range: tuple[int, int] = DEFAULT_RANGE) -> Optional[Identities]:
    """The identities of ``gpuqueue worker --identities MODE`` (None: jobs run as the worker).
    ``auto``: ``dynamic`` as root, else none. Raises IdentityError when ``mode`` needs root."""
    if mode == "none" or (mode == "auto" and not can_switch()):
        return None
    if not can_switch():
        raise IdentityError(f"--identities {mode} needs a worker that runs as root (it starts each job "
                            f"under its user's own uid); without root, jobs run as the worker's user")
    if mode in ("auto", "dynamic"):
        return DynamicIdentities(redis, key, uid_range)
    if mode == "passwd":
        return PasswdIdentities()
    return FileIdentities(mode)
