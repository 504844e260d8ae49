"""The records of the private Ray folders a worker makes (``gpuqueue.cluster.rayjob``,
``<state>/ray-folders``): a worker killed outright leaves them to the next worker of its state
folder, whose start-up sweep removes every folder recorded there.

Each identity's folders are made in its own temporary folder (private ``/tmp``), under a short
random name (``gqr-`` and 32 bits: Ray's socket paths are made in it), so two identities' folders
may have the same name. The records are one folder per node: on old code the second record
replaced the first, and the sweep left the first identity's folder (and its Ray) behind. A clash
of the random part is forced here (``secrets.token_hex``), the project's code is as it runs."""

from __future__ import annotations

import os
import secrets
import threading
from types import SimpleNamespace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gpuqueue.attempt.identity import Identity
from gpuqueue.cluster import rayjob
from gpuqueue.cluster.redis_store import RedisStore
from helpers.servers import RedisServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the folders are made for other uids")


@pytest.fixture
def clashing_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The 32-bit random part of the next folder names rayjob makes: twice the same, then another
    (its own ``secrets`` only: redis-py's connection pools draw theirs too)."""
    forced = iter(["0badcafe", "0badcafe", "5eed5eed"])
    monkeypatch.setattr(rayjob, "secrets", SimpleNamespace(
        token_hex=lambda n=None: next(forced) if n == 4 else secrets.token_hex(n)))
    yield


def test_two_identities_folders_of_one_name_are_both_swept_after_a_killed_worker(
        tmp_path: Path, redis_factory: Callable[..., RedisServer], clashing_names: None) -> None:
    store = RedisStore(redis_factory().url)
    state = tmp_path / "state"
    state.mkdir()
    alice, bob = Identity("alice", 61001, 61001), Identity("bob", 61002, 61002)
    own = {}
    for ident in (alice, bob):  # each identity's own temporary folder (its jobs' /tmp)
        own[ident.user] = tmp_path / "tmp" / str(ident.uid)
        own[ident.user].mkdir(parents=True, mode=0o700)
        os.chown(own[ident.user], ident.uid, ident.gid)
    nodes = rayjob.RayNodes(store, "n1", lambda job: None, threading.Event(), state)
    made_a, _ = nodes._private("job-a", 1, alice, str(own["alice"]))
    made_b, _ = nodes._private("job-b", 1, bob, str(own["bob"]))
    assert made_a.is_dir() and made_b.is_dir()
    assert made_a.stat().st_uid == alice.uid and made_b.stat().st_uid == bob.uid
    # the worker is killed outright: the next worker of the state folder sweeps what it recorded
    again = rayjob.RayNodes(store, "n1", lambda job: None, threading.Event(), state)
    again.sweep()
    left = [str(p) for p in (made_a, made_b) if os.path.lexists(p)]
    assert left == [], f"private Ray folders left after the sweep: {left}"
    assert os.listdir(state / "ray-folders") == []
