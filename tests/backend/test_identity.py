"""Per-user identities: dynamic uids agreed through the store, mapped accounts, and the refusals."""

from __future__ import annotations

import pwd
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from gpuqueue.attempt.identity import (DynamicIdentities, FileIdentities, IdentityError, PasswdIdentities, parse_range,
                                       retire)


def test_dynamic_uids_are_one_per_user_and_the_same_from_every_node(redis_factory) -> None:
    url = redis_factory(appendonly=False).url
    nodes = [DynamicIdentities(redis.Redis.from_url(url), "gq:identity", (70000, 70049)) for _ in range(4)]
    users = [f"user{i}" for i in range(50)]
    with ThreadPoolExecutor(8) as ex:  # every node resolves every user, all at once
        got = list(ex.map(lambda nu: (nu[1], nu[0].resolve(nu[1]).uid), [(n, u) for n in nodes for u in users]))
    by_user: dict[str, set[int]] = {}
    for user, uid in got:
        by_user.setdefault(user, set()).add(uid)
    assert all(len(uids) == 1 for uids in by_user.values())  # each node agrees
    assert sorted(uid for (uid,) in by_user.values()) == list(range(70000, 70050))  # none shared
    ident = nodes[0].resolve("user7")
    assert ident.gid == ident.uid and ident.home is None
    with pytest.raises(IdentityError, match="no uid left.*larger --uid-range"):
        nodes[1].resolve("one-too-many")


def test_a_retired_uid_is_never_used_again_and_a_worker_that_knew_it_gets_the_new_one(redis_factory) -> None:
    # a queue admin gives a former user's name to a new person (gpuqueue release-name): the name's
    # uid is retired, so the new person's jobs cannot read what the former one's left behind
    url = redis_factory(appendonly=False).url
    worker, other = (DynamicIdentities(redis.Redis.from_url(url), "gq:identity", (70000, 70049)) for _ in range(2))
    alice, bob = worker.resolve("alice").uid, other.resolve("bob").uid
    assert (alice, bob) == (70000, 70001) and other.resolve("alice").uid == alice
    r = redis.Redis.from_url(url, decode_responses=True)
    assert retire(r, "gq:identity", "alice", "2026-01-01T00:00:00Z") == alice
    assert "alice" not in r.hgetall("gq:identity")
    assert r.hget("gq:identity", f"released\nalice\n2026-01-01T00:00:00Z\n{alice}") == str(alice)  # the tombstone
    new = worker.resolve("alice")  # the worker that ran the former alice's jobs: no cached uid
    assert new.uid not in (alice, bob) and new.gid == new.uid
    assert other.resolve("alice") == new  # every node agrees on the new uid
    assert worker.resolve("carol").uid not in (alice, bob, new.uid)  # a retired uid is never handed out again
    assert retire(r, "gq:identity", "dave", "x") is None  # never given a uid: nothing to retire
    with pytest.raises(IdentityError, match="newline"):  # no name can be a tombstone's field
        worker.resolve(f"released\nalice\n2026-01-01T00:00:00Z\n{alice}")


def test_a_dynamic_uid_that_a_local_account_uses_is_refused(redis_factory) -> None:
    taken = max(p.pw_uid for p in pwd.getpwall() if 1000 <= p.pw_uid < 65534) if any(
        1000 <= p.pw_uid < 65534 for p in pwd.getpwall()) else None
    if taken is None:
        pytest.skip("no account with a uid of 1000 or more here")
    ids = DynamicIdentities(redis.Redis.from_url(redis_factory(appendonly=False).url), "gq:identity", (taken, taken))
    with pytest.raises(IdentityError, match="is the account"):
        ids.resolve("ana")


@pytest.mark.parametrize("text, words", [
    ("ana = 0", "root"), ("ana = {uid = 1500, gid = 0}", "root"), ("ana = 33", "system account"),
    ("ana = {uid = 1500, gid = 27}", "system group"), ("ana = 65534", "nobody"), ('ana = "x"', "ana = UID"),
])
def test_a_mapping_to_root_or_a_system_account_is_refused(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "ids.toml"
    f.write_text(text)
    with pytest.raises(IdentityError, match=words):
        FileIdentities(str(f))


def test_mapped_users_get_their_uid_and_gid_and_others_none(tmp_path: Path) -> None:
    f = tmp_path / "ids.toml"
    f.write_text('ana = 1500\nbo = {uid = 1501, gid = 100}\n')
    ids = FileIdentities(str(f))
    assert (ids.resolve("ana").uid, ids.resolve("ana").gid) == (1500, 1500)
    assert (ids.resolve("bo").uid, ids.resolve("bo").gid) == (1501, 100)  # the shared "users" group
    with pytest.raises(IdentityError, match="not in the identities file"):
        ids.resolve("eve")


def test_passwd_identities_refuse_root_and_unknown_names() -> None:
    with pytest.raises(IdentityError, match="root"):
        PasswdIdentities().resolve("root")
    with pytest.raises(IdentityError, match="no OS account"):
        PasswdIdentities().resolve("no-such-user-here")


@pytest.mark.parametrize("text, words", [("1-10", "UID_MIN"), ("70000", "FIRST-LAST"), ("65000-66000", "65534"),
                                         ("9-8", "FIRST <= LAST")])
def test_bad_uid_ranges_are_named(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_range(text)
    assert parse_range("61184-65519") == (61184, 65519)


def test_without_root_jobs_run_as_the_worker_and_asking_for_identities_is_refused(monkeypatch) -> None:
    from gpuqueue.attempt import identity

    monkeypatch.setattr(identity.os, "geteuid", lambda: 1000)
    assert identity.from_option("auto") is None and identity.from_option("none") is None
    with pytest.raises(IdentityError, match="needs a worker that runs as root"):
        identity.from_option("passwd")
