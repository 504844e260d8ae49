"""The sweep of finished jobs' folders from a worker's own disk (``--state-dir``), on real parts
in this process: a real redis-server holding job records, a :class:`NodeAgent` (not started: no
Celery, no fork server) on a temporary state folder, and its :class:`LocalSweeper`. It deletes
``jobs/<id>`` and ``work/<id>`` of a job of this queue whose record is gone and that neither runs
nor is being launched on the node, and nothing else: not a live job's, not ``home/``, not an
untagged or another queue's folder, not a name that is no job id, not what a link points to.
The whole cluster's side (a finished job's folder leaves the node with its record):
``test_shared_root_cleanup.py``."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.cluster.worker import LocalAttempt, NodeAgent
from gpuqueue.cluster.worker_sweep import queue_id, tag_job_folder
from helpers.servers import RedisServer, wait_until


@pytest.fixture
def redis_server(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture
def store(redis_server: RedisServer) -> RedisStore:
    return RedisStore(redis_server.url, "gq")


def _job(state: Path, job_id: str, queue: str | None, work: bool = True) -> None:
    """The folders a launch leaves: the records (tagged with ``queue``), the job's own folder."""
    rec = state / "jobs" / job_id / "attempt-1"
    rec.mkdir(parents=True)
    (rec / "exit.json").write_text("{}")
    (state / "jobs" / job_id / "spec.json").write_text("{}")
    if queue is not None:
        tag_job_folder(state / "jobs" / job_id, queue)
    if work:
        ck = state / "work" / job_id / "checkpoints" / "default" / "step-000000001"
        ck.mkdir(parents=True)
        (ck / "state.pt").write_bytes(b"w" * 1000)
        (state / "work" / job_id / "attempt-1").mkdir()
        (state / "work" / job_id / "attempt-1" / "result.pkl").write_bytes(b"r")


def _ids(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


J = [f"j-{i:012x}" for i in range(12)]


def test_the_local_sweep_deletes_gone_jobs_folders_and_nothing_else(store: RedisStore, tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = NodeAgent(store, "n1", 1, None, state, local_sweep_s=30)
    agent.queue = queue_id(store)  # what start() draws
    gone, kept, running, launching, legacy, other = J[:6]
    for j in (gone, kept, running, launching):
        _job(state, j, agent.queue)
    _job(state, legacy, None)  # written before folders were tagged
    _job(state, other, "another-queue")  # another queue's worker sharing the state folder
    store.r.set(store.k("job", kept), "{}")  # the sweep asks only whether the record exists
    # an attempt of `running` runs here; one of `launching` is being launched (its folders made)
    agent.attempts[(running, 1)] = LocalAttempt(running, 1, "command", state / "jobs" / running / "attempt-1", None)  # type: ignore[arg-type]
    agent._launching[launching] = 1

    # what is not a job's folder: HOMEs, an odd name, a file and a link named like jobs, an
    # orphan work folder (no records, so no tag)
    home = state / "home" / "61184"
    home.mkdir(parents=True)
    (home / ".cache").write_text("c")
    (state / "jobs" / "not-a-job").mkdir()
    (state / "jobs" / J[6]).write_text("a file")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    (state / "jobs" / J[7]).symlink_to(elsewhere)
    (state / "work" / J[8]).mkdir()

    # the gone job's user planted links in its folder: to a file, to a folder, to the folder above
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("not the job's")
    (victim / "sub").mkdir()
    (victim / "sub" / "deep.txt").write_text("not the job's either")
    w = state / "work" / gone
    (w / "checkpoints" / "default" / "step-000000001" / "link-to-file").symlink_to(victim / "file.txt")
    (w / "checkpoints" / "link-to-dir").symlink_to(victim)
    (w / "attempt-1" / "up").symlink_to(state)
    (state / "jobs" / gone / "attempt-1" / "link").symlink_to(victim / "sub")

    sweeper = agent.local_sweeper()
    assert sweeper.sweep() == [gone]
    assert not (state / "jobs" / gone).exists() and not (state / "work" / gone).exists()
    assert _ids(state / "jobs") == sorted([kept, running, launching, legacy, other, J[6], J[7], "not-a-job"])
    assert _ids(state / "work") == sorted([kept, running, launching, legacy, other, J[8]])
    assert (victim / "file.txt").read_text() == "not the job's"
    assert (victim / "sub" / "deep.txt").read_text() == "not the job's either"
    assert (elsewhere / "precious.txt").read_text() == "keep me" and (state / "jobs" / J[7]).is_symlink()
    assert (home / ".cache").read_text() == "c"
    for j in (kept, running, launching):
        assert (state / "work" / j / "checkpoints" / "default" / "step-000000001" / "state.pt").exists()
        assert (state / "jobs" / j / "attempt-1" / "exit.json").exists()

    # the attempt ends and the launch is done (their records gone meanwhile): swept next time
    agent.attempts.pop((running, 1))
    agent._launching.pop(launching)
    assert sorted(sweeper.sweep()) == sorted([running, launching])
    assert _ids(state / "jobs") == sorted([kept, legacy, other, J[6], J[7], "not-a-job"])
    assert _ids(state / "work") == sorted([kept, legacy, other, J[8]])
    # the daemon deletes kept's record (--keep-finished): the next sweep deletes its folders
    store.r.delete(store.k("job", kept))
    assert sweeper.sweep() == [kept]
    assert _ids(state / "work") == sorted([legacy, other, J[8]])
    assert sweeper.sweep() == []
    assert (state / "home" / "61184" / ".cache").exists()


def test_a_launch_waits_for_the_sweep_of_its_job(store: RedisStore, tmp_path: Path) -> None:
    """While the sweep deletes a job's folders, a launch of that job waits before making them;
    a job being launched is never swept."""
    agent = NodeAgent(store, "n1", 1, None, tmp_path / "state")
    assert agent._hold_for_sweep(J[1])
    entered = threading.Event()

    def launch() -> None:
        agent._launch_begins(J[1])
        entered.set()

    t = threading.Thread(target=launch)
    t.start()
    assert not entered.wait(0.3)
    agent._release_sweep(J[1])
    assert entered.wait(5)
    t.join()
    assert not agent._hold_for_sweep(J[1])  # being launched
    agent._launch_ends(J[1])
    assert agent._launching == {} and agent._hold_for_sweep(J[1])


def test_a_store_that_lost_its_data_sweeps_nothing(store: RedisStore, tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = NodeAgent(store, "n1", 1, None, state)
    agent.queue = queue_id(store)
    _job(state, J[1], agent.queue)
    store.r.set(store.k("job", J[1]), "{}")
    sweeper = agent.local_sweeper()
    assert sweeper.sweep() == []
    store.r.flushall()  # every record gone, and the queue id: a new one is drawn
    assert sweeper.sweep() == []
    assert _ids(state / "jobs") == [J[1]] and _ids(state / "work") == [J[1]]


def test_redis_down_skips_the_sweep_with_a_warning(redis_server: RedisServer, store: RedisStore, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    agent = NodeAgent(store, "n1", 1, None, state, local_sweep_s=0.1)
    agent.queue = queue_id(store)
    _job(state, J[1], agent.queue)
    redis_server.kill()
    caplog.set_level(logging.WARNING, logger="gpuqueue.worker")
    t = threading.Thread(target=agent._local_sweep_loop, daemon=True)
    t.start()
    try:
        deadline = time.time() + 10
        while time.time() < deadline and "node job folder sweep skipped: redis unavailable" not in caplog.text:
            time.sleep(0.05)
        assert "node job folder sweep skipped: redis unavailable" in caplog.text
        assert t.is_alive()
    finally:
        agent._stop.set()
        t.join(5)
    assert _ids(state / "jobs") == [J[1]]


def test_the_tag_is_written_once_and_never_through_a_link(tmp_path: Path) -> None:
    d = tmp_path / "jobs" / J[1]
    d.mkdir(parents=True)
    tag_job_folder(d, "q1")
    tag_job_folder(d, "q2")
    assert (d / "QUEUE").read_text() == "q1" and os.listdir(d) == ["QUEUE"]
    e = tmp_path / "jobs" / J[2]
    e.mkdir()
    (e / "QUEUE").symlink_to(tmp_path / "target")
    tag_job_folder(e, "q1")
    assert not (tmp_path / "target").exists()


def test_the_workers_redis_user_may_sweep_its_node(redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    """The shipped ACL (deploy/redis/users.acl) lets a worker draw the queue id and ask whether
    job records exist: all the local sweep needs."""
    from .conftest import shipped_acl
    from .test_isolation import PASSWORDS

    server = redis_factory(password=PASSWORDS["admin"], conf=shipped_acl({r: PASSWORDS[r] for r in ("scheduler", "api", "worker")}))
    admin = RedisStore(f"redis://:{PASSWORDS['admin']}@127.0.0.1:{server.port}/0", "gq")
    worker = RedisStore(f"redis://gpuqueue-worker:{PASSWORDS['worker']}@127.0.0.1:{server.port}/0", "gq")
    state = tmp_path / "state"
    agent = NodeAgent(worker, "n1", 1, None, state)
    agent.queue = queue_id(worker)
    for j in J[1:3]:
        _job(state, j, agent.queue)
    admin.r.set(admin.k("job", J[1]), "{}")
    assert agent.local_sweeper().sweep() == [J[2]]
    assert _ids(state / "jobs") == [J[1]]


def test_a_launch_that_fails_leaves_no_untagged_folder(store: RedisStore, tmp_path: Path) -> None:
    """A cell launch whose payload is gone from the store fails before it makes the job's folder;
    one that gets as far as making it tags it first, so the sweep can take it once the record
    goes (an untagged folder would be left on the node for good)."""
    state = tmp_path / "state"
    agent = NodeAgent(store, "n1", 1, None, state, local_sweep_s=30)
    agent.queue = queue_id(store)
    spec = {"kind": "cell"}
    with pytest.raises(RuntimeError, match="payload is missing"):
        agent._spawn({"job_id": J[0], "attempt": 1, "spec": spec}, None)  # type: ignore[arg-type]
    assert not (state / "jobs" / J[0]).exists()
    # the payload is there but the launch fails later (no fork server): the folder is tagged
    store.rb.set(store.k("payload", J[1]), b"not run")
    with pytest.raises(Exception):
        agent._spawn({"job_id": J[1], "attempt": 1, "spec": spec}, None)  # type: ignore[arg-type]
    assert (state / "jobs" / J[1] / "QUEUE").read_text() == agent.queue
    assert agent.local_sweeper().sweep() == [J[1]]  # no record: it goes
    assert not (state / "jobs" / J[1]).exists()


def test_a_job_folder_thousands_of_folders_deep_is_removed(store: RedisStore, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # the gone job's user made a tree 3000 folders deep in its work folder, a link out of it and
    # a FIFO at each level: the sweep (as root, gpuqueue.attempt.removal) deletes the job's
    # folders all the same, with no warning, and follows no link. With shutil.rmtree (one call
    # per level) the sweep died of a RecursionError and deleted nothing; then removal stopped at
    # a depth and the folders stayed, with a warning at every sweep, for good
    state = tmp_path / "state"
    agent = NodeAgent(store, "n1", 1, None, state, local_sweep_s=30)
    agent.queue = queue_id(store)
    deep, plain = J[9], J[10]
    for j in (deep, plain):
        _job(state, j, agent.queue)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    fd = os.open(state / "work" / deep, os.O_RDONLY)
    try:
        for i in range(3000):  # through descriptors: the path would outgrow PATH_MAX
            os.symlink(outside, "out", dir_fd=fd)
            if i % 100 == 0:
                os.mkfifo("fifo", dir_fd=fd)
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    try:
        sweeper = agent.local_sweeper()
        with caplog.at_level(logging.WARNING, logger="gpuqueue.worker"):
            assert sorted(sweeper.sweep()) == sorted([deep, plain])
        for j in (deep, plain):
            assert not (state / "jobs" / j).exists() and not (state / "work" / j).exists()
        assert not [r.getMessage() for r in caplog.records if deep in r.getMessage()], caplog.text
        assert (outside / "keep").read_text() == "k"
    finally:  # as an admin would (fts: no recursion); pytest's own clean-up of tmp_path would die of it
        subprocess.run(["rm", "-rf", str(state / "work" / deep)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the folder in /dev/shm is another uid's")
def test_a_launch_of_the_uid_stops_the_removal_of_what_it_left_in_shared_memory(store: RedisStore) -> None:
    """What a uid left in /dev/shm goes in a thread of its own (the worker's lock is free
    meanwhile: a launch claims, a heartbeat is written); a launch of that uid stops it first, so
    what is left stays for its job, and nothing removes it any more."""
    uid = 61990
    agent = NodeAgent(store, "n1", 1, None, Path("/nonexistent-state"))
    folder = Path(f"/dev/shm/gq-test-stop-{os.getpid()}")
    folder.mkdir()
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            for i in range(200_000):
                os.close(os.open(str(i), os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        finally:
            os.close(fd)
        os.chown(folder, uid, uid)
        full = os.stat(folder).st_size  # tmpfs: grows with the names
        agent._remove_shm(uid)
        wait_until(lambda: os.stat(folder).st_size < full, 30, 0.01, "the removal to begin")
        with agent._lock:  # free while it runs
            pass
        agent._end_shm_removal(uid)  # a launch of the uid
        assert agent._shm_removals == {}
        left = os.stat(folder).st_size
        assert 0 < left < full
        agent._end_shm_removal(uid)  # none runs: nothing to wait for
        assert os.stat(folder).st_size == left
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
