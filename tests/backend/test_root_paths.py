"""Root (the runner before and after the job starts, the worker) meets paths a job controls: a
chain of links the job made must not end root's process (Python 3.11's ``os.path.realpath``
recurses once per link, so some thousand links raise RecursionError) nor hold it from a stop
request (4 ms a path through 900 links, each a readlink of root's), nor may the folders and files it
makes in its checkpoint folder use up the worker's descriptors or its stack."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from gpuqueue.attempt import launchfail
from gpuqueue.attempt.jobdir import prepare_owned
from gpuqueue.attempt.launch import runner_env
from gpuqueue.attempt.runner import job_event
from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.cluster.shared_root import MAX_DEPTH, MAX_FILES, MAX_PATH_CHARS, PushMemo, SharedRoot
from gpuqueue.cluster.worker_uploads import AttemptUploads
from helpers.servers import RedisServer, wait_until

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: switches to another uid")
UID = 61998
LINKS = 1500  # over Python's recursion limit (1000)


def link_chain(folder: Path, end: Path) -> Path:
    """``folder/l0`` -> ``l1`` -> ... -> ``end``: what a job makes in a folder of its own."""
    for i in range(LINKS - 1):
        os.symlink(f"l{i + 1}", folder / f"l{i}")
    os.symlink(end, folder / f"l{LINKS - 1}")
    return folder / "l0"


def test_a_checkpoint_path_through_a_chain_of_links_is_not_the_jobs_folder(tmp_path: Path) -> None:
    chain = link_chain(tmp_path, tmp_path / "real")
    ev = job_event(json.dumps({"type": "checkpoint", "data": {"path": str(chain)}}).encode(), str(tmp_path))
    assert ev is not None and ev[0] == "checkpoint" and ev[1]["in_job_folder"] is False


def test_a_refused_program_through_a_chain_of_links_is_still_recorded(tmp_path: Path) -> None:
    chain = link_chain(tmp_path, tmp_path / "prog")
    err = PermissionError(errno.EACCES, "Permission denied", str(chain))
    rec = launchfail.record(launchfail.EXEC, err, user={"name": "ana", "uid": UID, "gid": UID})
    assert rec["stage"] == launchfail.EXEC and rec["errno"] == errno.EACCES and rec["found"] == str(chain)


def test_a_path_of_endless_entries_is_looked_into_only_so_far(tmp_path: Path) -> None:
    """Root looks into a refused program's way one component at a time, as far as the job's uid
    may (a folder it may not enter is not looked into): over the job's PATH, at most
    launchfail.MAX_STEPS components in all, so that a PATH of thousands of entries, each through
    links of thousands of components, cannot hold the runner before it reports the failure."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("#!/bin/sh\n")
    entries = ["/usr/no-such/a/b"] * (launchfail.MAX_STEPS // 3 + 1)
    assert launchfail.find_program("tool", str(tmp_path / "bin"), 0, {0}) == str(tmp_path / "bin" / "tool")
    assert launchfail.find_program("tool", ":".join([*entries, str(tmp_path / "bin")]), 0, {0}) is None


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A state folder that other uids may traverse (as /var/lib/gpuqueue)."""
    d = Path(tempfile.mkdtemp(prefix="gq-rootpaths-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


JOB = r'''
echo "{\"type\": \"checkpoint\", \"data\": {\"path\": \"$GPUQUEUE_JOB_DIR/l0\"}}" >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
echo '{"type": "progress", "data": {"done": 1, "total": 1}}' >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
sleep 1
'''


@root_only
def test_a_job_cannot_end_root_s_runner_with_a_chain_of_links(open_root: Path) -> None:
    """The job names, in its own events.jsonl (read in the runner's main loop, as root), a
    checkpoint path through a chain of links: the runner goes on, and the attempt ends with its
    exit record, the job's events kept."""
    paths = prepare_owned(open_root, "j-1", 1, UID, UID)
    link_chain(paths.job, paths.job / "checkpoints")
    launch = {"argv": ["/bin/sh", "-c", JOB], "cwd": str(paths.job), "job_dir": str(paths.job),
              "attempt_dir": str(paths.attempt), "user": {"name": "ana", "uid": UID, "gid": UID},
              "env": {"PATH": "/usr/bin:/bin", "GPUQUEUE_JOB_DIR": str(paths.job),
                      "GPUQUEUE_ATTEMPT_DIR": str(paths.attempt)}}
    (paths.records / "launch.json").write_text(json.dumps(launch))
    done = subprocess.run([sys.executable, "-m", "gpuqueue.attempt.runner", str(paths.records)], env=runner_env(),
                          timeout=60, capture_output=True, text=True)
    assert "RecursionError" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 0
    assert json.loads((paths.records / "exit.json").read_text())["exit_code"] == 0
    events = [json.loads(x) for x in (paths.records / "events.jsonl").read_text().splitlines()]
    assert [e["data"] for e in events if e["type"] == "progress"] == [{"done": 1, "total": 1}]
    assert [e["data"]["in_job_folder"] for e in events if e["type"] == "checkpoint"] == [False]


FLOOD = r'''
trap '' TERM
yes "{\"type\": \"checkpoint\", \"data\": {\"path\": \"$GPUQUEUE_JOB_DIR/l0\"}}" | head -n 40000 >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
touch "$GPUQUEUE_ATTEMPT_DIR/ready"
sleep 300
'''


@root_only
def test_a_job_cannot_hold_root_s_runner_from_its_kill_with_links_to_resolve(open_root: Path) -> None:
    """40,000 checkpoint records in the job's own events.jsonl, each through a chain of 900
    links, then the job ignores SIGTERM: a stop request with 1 s of grace still ends it (the
    runner resolved each path one readlink at a time, 4 ms each, in the loop that answers stop
    requests: some 3 minutes before it looked)."""
    paths = prepare_owned(open_root, "j-2", 1, UID, UID)
    for i in range(899):
        os.symlink(f"l{i + 1}", paths.job / f"l{i}")
    os.symlink(paths.job / "checkpoints", paths.job / "l899")
    launch = {"argv": ["/bin/sh", "-c", FLOOD], "cwd": str(paths.job), "job_dir": str(paths.job),
              "attempt_dir": str(paths.attempt), "user": {"name": "ana", "uid": UID, "gid": UID},
              "env": {"PATH": "/usr/bin:/bin", "GPUQUEUE_JOB_DIR": str(paths.job),
                      "GPUQUEUE_ATTEMPT_DIR": str(paths.attempt)}}
    (paths.records / "launch.json").write_text(json.dumps(launch))
    runner = subprocess.Popen([sys.executable, "-m", "gpuqueue.attempt.runner", str(paths.records)], env=runner_env())
    try:
        wait_until(lambda: (paths.attempt / "ready").exists(), 30, 0.05, "the job to write its records")
        (paths.records / "control.json").write_text(json.dumps({"reason": "cancelled", "grace_s": 1}))
        runner.send_signal(signal.SIGUSR1)
        runner.wait(60)
    finally:
        if runner.poll() is None:  # it is stuck: end it, and the job it no longer ends
            runner.kill()
            runner.wait()
            for line in (paths.records / "events.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec["type"] == "runner":
                    os.killpg(rec["data"]["pid"], signal.SIGKILL)
    ended = json.loads((paths.records / "exit.json").read_text())
    assert ended["stop_reason"] == "cancelled" and ended["exit_code"] == -signal.SIGKILL


def _final_push(tmp_path: Path, redis_factory: Callable[..., RedisServer], job: Path,
                uid: Optional[int] = None) -> list[dict]:
    """The events of an attempt's final push of ``job``'s checkpoints to a fresh shared root (as
    node n1's worker makes it, for ``uid``'s job), in the order the job's owner reads them."""
    shared = SharedRoot(str(tmp_path / "root"))
    shared.check()
    store = RedisStore(redis_factory().url, "gq")
    up = AttemptUploads(shared, store, "n1", "j-1", 1, job, uid, lambda: None, lambda: False)
    up.request()
    wait_until(lambda: up.finish({"exit_code": 0}) is not None, 120, 0.1, "the final push")
    return [json.loads(op[4]) for op in up.take_ops() if op[0] == "EVENT"]


def _complete(job: Path, name: str, step: str) -> None:
    d = job / "checkpoints" / name / step
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(b"weights")
    (d / "COMPLETE").write_text("{}")


FEW_FDS = r'''
import json, resource, sys
from pathlib import Path
from gpuqueue.cluster.shared_root import SharedRoot
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(json.dumps(SharedRoot(sys.argv[1]).push("j1", Path(sys.argv[2]))))
'''


def test_many_step_folders_do_not_use_up_the_workers_descriptors(tmp_path: Path) -> None:
    """A job makes 600 empty ``step-*`` folders beside its one complete checkpoint: the push (the
    worker, as root; here under a limit of 256 descriptors) still copies that checkpoint. Each
    folder listed held a descriptor until the push ended: EMFILE for the rest, and for every
    other thread of the worker meanwhile."""
    job = tmp_path / "job"
    for i in range(600):
        (job / "checkpoints" / "t" / f"step-{i:09d}").mkdir(parents=True)
    _complete(job, "t", "step-999999999")
    (tmp_path / "root").mkdir()
    out = subprocess.run([sys.executable, "-c", FEW_FDS, str(tmp_path / "root"), str(job)], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-600:]
    assert json.loads(out.stdout) == ["t/step-999999999"]


def test_a_checkpoint_nested_deeper_than_the_stack_is_left_unpushed_not_raised(tmp_path: Path) -> None:
    """1100 nested folders in a complete checkpoint: not copied (the walk recursed once per level:
    RecursionError out of the push), the job's other checkpoint is."""
    job = tmp_path / "job"
    _complete(job, "t", "step-000000002")
    _complete(job, "t", "step-000000001")
    here = os.getcwd()
    os.chdir(job / "checkpoints" / "t" / "step-000000001")
    try:
        for _ in range(1100):
            os.mkdir("d")
            os.chdir("d")
        Path("deep.bin").write_bytes(b"x")
    finally:
        os.chdir(here)
    root = SharedRoot(str(tmp_path / "root"))
    root.check()
    try:
        assert root.push("j1", job) == ["t/step-000000002"]
    finally:
        os.chdir(job / "checkpoints" / "t" / "step-000000001")
        try:
            for _ in range(1100):
                os.chdir("d")
            os.unlink("deep.bin")
            for _ in range(1100):
                os.chdir("..")
                os.rmdir("d")
        finally:
            os.chdir(here)


MANY_FILES = r'''
import json, os, resource, sys
from pathlib import Path
from gpuqueue.cluster.shared_root import SharedRoot
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
copied = SharedRoot(sys.argv[1]).push("j1", Path(sys.argv[2]))
print(json.dumps({"copied": copied, "open": len(os.listdir("/proc/self/fd"))}))
'''


def test_a_checkpoint_of_more_files_than_the_workers_descriptors_is_pushed_whole(tmp_path: Path) -> None:
    """A complete checkpoint of 1000 files (in two folders) pushed by a worker (as root; here
    under a limit of 256 descriptors): all of them reach the root, and the worker holds no more
    descriptors after it than before. The walk held one descriptor per file until all were
    copied: EMFILE, the checkpoint was never copied, and every other thread of the worker (other
    users' launches and reads on the node) met EMFILE meanwhile."""
    job = tmp_path / "job"
    ck = job / "checkpoints" / "t" / "step-000000001"
    (ck / "shards").mkdir(parents=True)
    for i in range(500):
        (ck / f"f{i:04d}.bin").write_bytes(b"a%d" % i)
        (ck / "shards" / f"s{i:04d}.bin").write_bytes(b"b%d" % i)
    (ck / "COMPLETE").write_text("{}")
    (tmp_path / "root").mkdir()
    out = subprocess.run([sys.executable, "-c", MANY_FILES, str(tmp_path / "root"), str(job)], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-600:]
    said = json.loads(out.stdout)
    assert said["copied"] == ["t/step-000000001"] and said["open"] < 20, said
    there = tmp_path / "root" / "jobs" / "j1" / "checkpoints" / "t" / "step-000000001"
    assert (there / "f0499.bin").read_bytes() == b"a499" and (there / "shards" / "s0007.bin").read_bytes() == b"b7"
    assert len(list(there.rglob("*.bin"))) == 1000 and (there / "COMPLETE").exists()


def test_a_checkpoint_over_the_limits_is_told_to_the_job_with_the_limit_and_the_fix(
        tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> None:
    """One checkpoint holds more than MAX_FILES files, another is nested deeper than MAX_DEPTH
    folders: neither is copied, the job's third one is, and the job's events say for each which
    limit it is over and what to do (they were left out without a word, and walked again at
    every push)."""
    job = tmp_path / "job"
    _complete(job, "t", "step-000000003")
    _complete(job, "many", "step-000000001")
    many = job / "checkpoints" / "many" / "step-000000001" / "parts"
    many.mkdir()
    fd = os.open(many, os.O_RDONLY)
    try:
        for i in range(MAX_FILES + 1):
            os.close(os.open(f"p{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    _complete(job, "deep", "step-000000001")
    (job / "checkpoints" / "deep" / "step-000000001").joinpath(*["d"] * (MAX_DEPTH + 1)).mkdir(parents=True)
    events = _final_push(tmp_path, redis_factory, job)
    assert [e["shared"] for e in events if e.get("shared")] == [["t/step-000000003"]], events
    told = {e["checkpoint"]: e["message"] for e in events if e.get("storage_limit")}
    assert sorted(e["checkpoint"] for e in events if e.get("storage_limit")) == sorted(told) == [
        "deep/step-000000001", "many/step-000000001"], events  # each told once
    assert f"over {MAX_FILES:,} files and folders" in told["many/step-000000001"]
    assert "fewer, larger files" in told["many/step-000000001"]
    assert f"nested over {MAX_DEPTH} folders deep" in told["deep/step-000000001"]
    assert "fewer levels of folders" in told["deep/step-000000001"]
    assert "stays on node n1 only" in told["deep/step-000000001"]


def test_a_checkpoints_folder_of_too_many_steps_to_list_is_told_to_the_job_once(
        tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> None:
    """A job makes MAX_FILES + 1 ``step-*`` folders in one run: root's push lists at most
    MAX_FILES names (it listed and sorted every one, at every push: millions took the worker's
    memory and time), still copies the job's checkpoint of another run listed before them, and
    tells the job once that it looked at some of its checkpoints only, with the fix."""
    job = tmp_path / "job"
    _complete(job, "a", "step-000000001")
    run = job / "checkpoints" / "t"
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)
    try:
        for i in range(MAX_FILES + 1):
            os.mkdir(f"step-{i:09d}", dir_fd=fd)
    finally:
        os.close(fd)
    events = _final_push(tmp_path, redis_factory, job)
    assert [e["shared"] for e in events if e.get("shared")] == [["a/step-000000001"]], events
    told = [e["message"] for e in events if e.get("storage_limit")]
    assert len(told) == 1, told
    assert f"checkpoints folder on node n1: it holds over {MAX_FILES:,} runs and steps" in told[0]
    assert "may not be copied to the shared root" in told[0] and "max_checkpoints=N" in told[0]


def test_a_checkpoint_of_long_paths_is_told_to_the_job_not_noted_whole_by_root(
        tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> None:
    """A checkpoint nested 63 folders of 250 characters deep (within MAX_DEPTH), its files there
    each of a path of 16 KB: root's walk noted every path before the copy (20,000 such files took
    the worker 316 MB, and MAX_FILES allows 100,000, in each push of each of the owner's attempts,
    again at every save: the copy then failed on the long path, and its storage error left the
    job's other checkpoint uncopied too). Past MAX_PATH_CHARS characters of paths it is refused
    and the job told why, its other one copied."""
    job = tmp_path / "job"
    _complete(job, "t", "step-000000003")
    _complete(job, "long", "step-000000001")
    fd = os.open(job / "checkpoints" / "long" / "step-000000001", os.O_RDONLY)
    try:
        for _ in range(MAX_DEPTH - 1):
            os.mkdir("d" * 250, dir_fd=fd)
            sub = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        for i in range(MAX_PATH_CHARS // (MAX_DEPTH * 251) + 100):
            os.close(os.open(f"{i:06d}" + "f" * 200, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    events = _final_push(tmp_path, redis_factory, job)
    assert [e["shared"] for e in events if e.get("shared")] == [["t/step-000000003"]], events
    told = [e["message"] for e in events if e.get("checkpoint") == "long/step-000000001"]
    assert len(told) == 1 and f"take over {MAX_PATH_CHARS:,} characters in all" in told[0], events
    assert "shorter names and fewer levels of folders" in told[0] and "stays on node n1 only" in told[0]
    shutil.rmtree(job / "checkpoints" / "long", ignore_errors=True)  # the next tmp cleanup cannot (paths too long)


def test_a_checkpoint_holding_a_link_or_a_file_not_the_jobs_own_is_told_to_the_job(
        tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> None:
    """A complete checkpoint holding a link or a FIFO (and, for a job of its own uid, a hard
    link or another user's file) is not copied, and the job is told once which file and what to
    do (it was left out without a word, and walked again at every push)."""
    job = tmp_path / "job"
    _complete(job, "t", "step-000000003")
    _complete(job, "linked", "step-000000001")
    os.symlink("/etc/hostname", job / "checkpoints" / "linked" / "step-000000001" / "vocab.json")
    _complete(job, "fifo", "step-000000001")
    os.mkfifo(job / "checkpoints" / "fifo" / "step-000000001" / "pipe")
    expected = {"linked/step-000000001": ("vocab.json is a link", "save the file itself there"),
                "fifo/step-000000001": ("pipe is a special file", "save the file itself there")}
    uid = None
    if os.geteuid() == 0:  # a job of its own uid: its own files of one name only
        uid = 61998
        _complete(job, "hard", "step-000000001")
        (job / "kept.pt").write_bytes(b"weights")  # the job's own file, outside its checkpoints
        os.link(job / "kept.pt", job / "checkpoints" / "hard" / "step-000000001" / "copy.pt")
        _complete(job, "foreign", "step-000000001")
        for p in [job, *job.rglob("*")]:
            os.lchown(p, uid, uid)
        (job / "checkpoints" / "foreign" / "step-000000001" / "root.pt").write_bytes(b"root's")
        expected["hard/step-000000001"] = ("copy.pt is a hard link (2 names)", "save a copy of it there")
        expected["foreign/step-000000001"] = ("root.pt is not the job's own", "save a copy of it there")
    events = _final_push(tmp_path, redis_factory, job, uid)
    told = [(e["checkpoint"], e["message"]) for e in events if e.get("storage_limit")]
    assert sorted(c for c, _ in told) == sorted(expected), events  # each told once
    for checkpoint, message in told:
        what, fix = expected[checkpoint]
        assert what in message and fix in message and "stays on node n1 only" in message, message
    assert [e["shared"] for e in events if e.get("shared")] == [["t/step-000000003"]], events


@root_only
def test_a_refused_program_tells_the_job_nothing_of_another_users_closed_folder(open_root: Path) -> None:
    """A job's program is refused (EACCES): root looks into why, and the error its owner reads
    names only what that uid may see. Another user's folder of mode 700 holds a program and a
    link: the job names them (its first word, its PATH) and learns neither whether a name is there
    (root's lookup on the job's PATH said "found at" only where it was) nor where a link there
    leads (root followed it)."""
    alice = open_root / "alice"  # another user's own folder
    (alice / "bin").mkdir(parents=True)
    (alice / "bin" / "tool").write_text("#!/bin/sh\n")
    (alice / "bin" / "tool").chmod(0o755)
    os.symlink(alice / "plans-for-the-merger.txt", alice / "notes")
    for p in (alice, alice / "bin", alice / "bin" / "tool"):
        os.lchown(p, UID - 1, UID - 1)
    alice.chmod(0o700)
    errors = {}
    for i, (argv, path) in enumerate(((["tool"], f"{alice / 'bin'}:/usr/bin:/bin"),
                                      (["no-such-tool"], f"{alice / 'bin'}:/usr/bin:/bin"),
                                      ([str(alice / "notes")], "/usr/bin:/bin"))):
        paths = prepare_owned(open_root, f"j-{i + 5}", 1, UID, UID)
        launch = {"argv": argv, "cwd": str(paths.job), "job_dir": str(paths.job), "attempt_dir": str(paths.attempt),
                  "user": {"name": "bob", "uid": UID, "gid": UID}, "env": {"PATH": path}}
        (paths.records / "launch.json").write_text(json.dumps(launch))
        subprocess.run([sys.executable, "-m", "gpuqueue.attempt.runner", str(paths.records)], env=runner_env(),
                       timeout=60, check=False)
        events = [json.loads(x) for x in (paths.records / "events.jsonl").read_text().splitlines()]
        rec = events[-1]["data"]["launch_error"]
        assert rec["errno"] == errno.EACCES, rec
        errors[argv[0]] = (launchfail.message(rec), [e["data"]["line"] for e in events if e["type"] == "log"], rec)
    closed = f"that uid may not enter {alice} (mode 700, owner uid {UID - 1})"
    for name, (message, _, _) in errors.items():
        assert closed in message, message
    # the same words whether the name is in the closed folder or not
    assert errors["tool"][0].replace("tool", "X") == errors["no-such-tool"][0].replace("no-such-tool", "X")
    assert f"tool (looked for at {alice / 'bin' / 'tool'}) cannot be run" in errors["tool"][0], errors["tool"][0]
    for message, lines, rec in errors.values():
        assert "plans-for-the-merger" not in message + json.dumps(rec) + "".join(lines), (message, rec)


# the job's own process: once root opens the first file of its checkpoint (inotify), it makes the
# second one 256 MB (sparse: it costs the job nothing)
# what the job does the moment root opens the file argv[1] (the first it copies), to argv[2]
ON_OPEN = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(0)
if ino < 0 or libc.inotify_add_watch(ino, sys.argv[1].encode(), 0x20) < 0:  # IN_OPEN
    sys.exit("no inotify: " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
os.read(ino, 4096)
'''
GROW = ON_OPEN + "os.truncate(sys.argv[2], 256 << 20)\n"


def test_a_checkpoint_file_grown_after_roots_walk_is_not_copied_past_its_counted_size(tmp_path: Path) -> None:
    """Root's walk notes each file's size (what the per-attempt bound and the owner's
    max_shared_gb count), and copies the files afterwards: the job makes its second file 256 MB
    the moment root opens the first. Root copied each file to its end, whatever it had become:
    a checkpoint counted as 8 MB took 264 MB on the shared root, past the bound of 16 MB (and a
    file the job kept growing was copied for as long as it grew). Now a file not of the size
    counted is a change (the copy is given up, the next push looks again)."""
    job = tmp_path / "job"
    _complete(job, "t", "step-000000001")
    step = job / "checkpoints" / "t" / "step-000000001"
    (step / "a.bin").write_bytes(os.urandom(8 << 20))  # copied first: the job grows b.bin meanwhile
    (step / "b.bin").write_bytes(b"b")
    shared = SharedRoot(str(tmp_path / "root"), max_bytes=16 << 20)
    shared.check()
    grow = subprocess.Popen([sys.executable, "-c", GROW, str(step / "a.bin"), str(step / "b.bin")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert grow.stdout is not None and grow.stdout.readline().strip() == "ready"
        shared.push("j-1", job)
        assert grow.wait(30) == 0
    finally:
        grow.kill()
        grow.wait()
    on_root = sum(p.stat().st_size for p in (tmp_path / "root").rglob("*") if p.is_file())
    assert on_root <= 16 << 20, f"{on_root:,} bytes on the shared root"


SWAP = ON_OPEN + '''
with open(sys.argv[2] + ".new", "wb") as f:
    f.write(b"B")
os.rename(sys.argv[2] + ".new", sys.argv[2])
'''


def test_a_checkpoint_file_replaced_after_roots_walk_is_not_copied_until_the_next_push(tmp_path: Path) -> None:
    """Root's walk notes each file (device, inode, size) and copies them afterwards: the job
    replaces its second file by another of the same size the moment root opens the first (a
    save over the checkpoint, as a write to a fresh name and a rename does). The copy is given
    up, nothing of it stays on the root (no half checkpoint another attempt could resume from),
    and the next push copies the checkpoint as it is then."""
    job = tmp_path / "job"
    _complete(job, "t", "step-000000001")
    step = job / "checkpoints" / "t" / "step-000000001"
    (step / "a.bin").write_bytes(os.urandom(32 << 20))  # copied first: the job swaps b.bin meanwhile
    (step / "b.bin").write_bytes(b"b")
    shared = SharedRoot(str(tmp_path / "root"))
    shared.check()
    memo = PushMemo()
    swap = subprocess.Popen([sys.executable, "-c", SWAP, str(step / "a.bin"), str(step / "b.bin")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert swap.stdout is not None and swap.stdout.readline().strip() == "ready"
        assert shared.push("j-1", job, memo=memo) == []
        assert swap.wait(30) == 0
    finally:
        swap.kill()
        swap.wait()
    on_root = tmp_path / "root" / "jobs" / "j-1" / "checkpoints" / "t" / "step-000000001"
    assert not on_root.exists(), sorted(p.name for p in on_root.iterdir())
    assert shared.push("j-1", job, memo=memo) == ["t/step-000000001"]
    assert (on_root / "b.bin").read_bytes() == b"B" and (on_root / "COMPLETE").exists()
