"""The runner keeps a job to its own records: only job-side event types pass, the job gets only
the environment of launch.json, and, as root, it runs under its owner's identity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from gpuqueue.attempt import launchfail
from gpuqueue.attempt.jobdir import OwnedDir, prepare_owned
from gpuqueue.attempt.launch import runner_env
from gpuqueue.attempt.runner import job_event
from helpers.servers import wait_until

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: switches to another uid")
UID = 61999


def _run(records: Path, launch: dict[str, Any], env: dict[str, str]) -> list[dict[str, Any]]:
    records.mkdir(parents=True, exist_ok=True)
    (records / "launch.json").write_text(json.dumps(launch))
    subprocess.run([sys.executable, "-m", "gpuqueue.attempt.runner", str(records)], env=env, timeout=60, check=False)
    return [json.loads(x) for x in (records / "events.jsonl").read_text().splitlines()]


def test_job_event_keeps_only_job_side_types(tmp_path: Path) -> None:
    ok = job_event(b'{"type": "metrics", "t": 5.0, "data": {"loss": 1}}')
    assert ok == ("metrics", {"loss": 1}, 5.0)
    for forged in ("exit", "runner", "state", "log", "warning"):
        assert job_event(json.dumps({"type": forged, "data": {"exit_code": 0}}).encode()) is None
    assert job_event(b'{"type": "info", "data": "not a dict"}') is None
    assert job_event(b"torn {") is None
    assert job_event(b'{"type": "info", "t": 1e300, "data": {}}') == ("info", {}, None)  # a time that is not one
    inside = job_event(json.dumps({"type": "checkpoint", "data": {"path": str(tmp_path / "checkpoints" / "s1")}}).encode(),
                       str(tmp_path))
    outside = job_event(b'{"type": "checkpoint", "data": {"path": "/elsewhere/s1"}}', str(tmp_path))
    link = tmp_path / "link"
    link.symlink_to("/elsewhere")
    via_link = job_event(json.dumps({"type": "checkpoint", "data": {"path": str(link / "s1")}}).encode(), str(tmp_path))
    assert inside and inside[1]["in_job_folder"] is True
    assert outside and outside[1]["in_job_folder"] is False and via_link and via_link[1]["in_job_folder"] is False


FORGER = r'''
import json, os, sys
fd = int(os.environ["GPUQUEUE_EVENT_FD"])
for t in ("exit", "runner", "state", "log"):
    os.write(fd, (json.dumps({"type": t, "data": {"forged": True, "exit_code": 0}}) + "\n").encode())
os.write(fd, b'{"type": "info", "data": {"message": "' + b"x" * 2_000_000 + b'"}}\n')  # over the limit
os.write(fd, b'{"type": "metrics", "data": {"step": 1}}\n')
print("secret" if "s3cret" in repr(dict(os.environ)) else "clean", sorted(os.environ))
sys.exit(3)
'''


def test_a_job_cannot_write_the_runners_records_nor_see_its_environment(tmp_path: Path) -> None:
    env = dict(runner_env(), GPUQUEUE_REDIS_URL="redis://:s3cret@h/0", RUNNER_ONLY="s3cret")
    events = _run(tmp_path / "a", {"argv": [sys.executable, "-c", FORGER], "env": {"MINE": "1"}, "cwd": str(tmp_path)}, env)
    types = [e["type"] for e in events]
    assert types.count("exit") == 1 and types.count("runner") == 1 and types[-1] == "exit"
    assert events[-1]["data"]["exit_code"] == 3
    assert not any(e["data"].get("forged") for e in events)
    assert [e["data"] for e in events if e["type"] == "metrics"] == [{"step": 1}]
    assert not any(e["type"] == "info" for e in events)
    line = next(e["data"]["line"] for e in events if e["type"] == "log")
    assert line.startswith("clean") and "MINE" in line and "RUNNER_ONLY" not in line


FLOOD = r'''
import json, os
fd = int(os.environ["GPUQUEUE_EVENT_FD"])
for i in range(300):
    print(f"{i} " + "x" * 10_000, flush=True)
    os.write(fd, (json.dumps({"type": "metrics", "data": {"step": i, "pad": "y" * 5_000}}) + "\n").encode())
print("the end", flush=True)
'''


def test_a_job_that_prints_without_end_cannot_fill_the_store(tmp_path: Path) -> None:
    """Every record of events.jsonl is copied into the queue's store, shared by every user: a
    job's records are kept up to launch.json's max_output_bytes, then dropped after one notice;
    the runner's own records are still written."""
    limit = 1_000_000
    events = _run(tmp_path / "a", {"argv": [sys.executable, "-c", FLOOD], "env": {}, "cwd": str(tmp_path),
                                   "max_output_bytes": limit}, runner_env())
    size = sum(len(json.dumps(e)) + 1 for e in events if e["type"] in ("log", "metrics"))
    assert size < limit + 2_000, size  # ~4.5 MB printed
    lines = [e["data"]["line"] for e in events if e["type"] == "log"]
    assert lines[0].startswith("0 xxx") and "the end" not in lines
    assert "output passed 1 MB" in lines[-1] and "GPUQUEUE_MAX_OUTPUT_MB" in lines[-1], lines[-1][:200]
    assert sum("output passed" in x for x in lines) == 1
    assert events[-1]["type"] == "exit" and events[-1]["data"]["exit_code"] == 0
    # without the key (a launch.json of an older version): the default, which this job is far below
    events = _run(tmp_path / "b", {"argv": [sys.executable, "-c", FLOOD], "env": {}, "cwd": str(tmp_path)}, runner_env())
    assert [e["data"]["line"] for e in events if e["type"] == "log"][-1] == "the end"


BAR = r'''
import sys, time
end = time.monotonic() + 2.2
i = 0
while time.monotonic() < end:  # a bar redrawn for 2 s, thousands of times
    sys.stderr.write(f"\rstep {i}"); sys.stderr.flush(); i += 1; time.sleep(0.0005)
sys.stderr.write(f"\rstep {i} done\n"); sys.stderr.flush()
sys.stdout.write("loading"); sys.stdout.flush(); time.sleep(1.5)  # a line written in two parts
sys.stdout.write(" ok\n"); sys.stdout.flush()
sys.stderr.write("\rcheck 1"); sys.stderr.flush(); time.sleep(1.5)
print("moved on", flush=True)  # a line printed elsewhere while a bar is drawn: the bar stays, as on a terminal
sys.stderr.write("\rcheck 2"); sys.stderr.flush()  # the job ends with a line unfinished
'''


def test_the_runner_marks_a_line_being_written_transient_and_each_line_once_final(tmp_path: Path) -> None:
    """A bar's redraws and a line before its newline are ``transient`` records (at most one per
    0.5 s: a bar redrawn thousands of times stores a few); each line ends as one final record,
    in the job's order: at its newline, when a line is printed on the other stream, or at the end."""
    events = _run(tmp_path / "a", {"argv": [sys.executable, "-c", BAR], "env": {}, "cwd": str(tmp_path)}, runner_env())
    logs = [e["data"] for e in events if e["type"] == "log"]
    final = [(d["stream"], d["line"]) for d in logs if not d.get("transient")]
    assert final[0][1].startswith("step ") and final[0][1].endswith(" done"), final
    assert final[1:] == [("stdout", "loading ok"), ("stderr", "check 1"), ("stdout", "moved on"), ("stderr", "check 2")]
    transient = [(d["stream"], d["line"]) for d in logs if d.get("transient")]
    assert 1 <= sum(line.startswith("step") for _, line in transient) <= 6, transient
    assert ("stdout", "loading") in transient and ("stderr", "check 1") in transient, transient


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A state folder that other uids may traverse (as /var/lib/gpuqueue)."""
    d = Path(tempfile.mkdtemp(prefix="gq-runner-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


JOB = r'''
trap '' TERM
echo "ids $(id -u) $(id -g) [$(id -G)] $(umask)"
echo '{"type": "exit", "data": {"forged": true}}' >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
echo '{"type": "progress", "data": {"done": 1, "total": 2}}' >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
touch "$GPUQUEUE_ATTEMPT_DIR/ready"
while [ ! -f "$GPUQUEUE_ATTEMPT_DIR/control.json" ]; do sleep 0.05; done
echo "asked $(cat "$GPUQUEUE_ATTEMPT_DIR/control.json")"
(echo x > "$GPUQUEUE_JOB_DIR/../not-mine") 2>/dev/null || echo "cannot write outside"
ls "$(dirname "$GPUQUEUE_ATTEMPT_DIR")/../../jobs" 2>/dev/null || echo "cannot list records"
'''


@root_only
def test_as_root_the_job_runs_as_its_owner_and_reaches_only_its_own_folders(open_root: Path) -> None:
    paths = prepare_owned(open_root, "j-1", 1, UID, UID, payload=b"cell")
    launch = {"argv": ["/bin/sh", "-c", JOB], "cwd": str(paths.job), "job_dir": str(paths.job),
              "attempt_dir": str(paths.attempt), "user": {"name": "ana", "uid": UID, "gid": UID},
              "env": {"PATH": "/usr/bin:/bin", "GPUQUEUE_JOB_DIR": str(paths.job), "GPUQUEUE_ATTEMPT_DIR": str(paths.attempt)}}
    (paths.records / "launch.json").write_text(json.dumps(launch))
    runner = subprocess.Popen([sys.executable, "-m", "gpuqueue.attempt.runner", str(paths.records)], env=runner_env())
    wait_until(lambda: (paths.attempt / "ready").exists(), 20, 0.05, "the job to start")
    (paths.records / "control.json").write_text(json.dumps({"reason": "cancelled", "grace_s": 5}))
    runner.send_signal(signal.SIGUSR1)
    assert runner.wait(30) == 0
    events = [json.loads(x) for x in (paths.records / "events.jsonl").read_text().splitlines()]
    lines = [e["data"]["line"] for e in events if e["type"] == "log"]
    assert lines[0] == f"ids {UID} {UID} [{UID}] 0077"
    assert lines[1] == 'asked {"reason": "cancelled", "grace_s": 5.0}'  # its copy of the stop request
    assert lines[2:] == ["cannot write outside", "cannot list records"]
    # its own events file: the progress passes, the forged exit does not
    assert [e["data"] for e in events if e["type"] == "progress"] == [{"done": 1, "total": 2}]
    assert [e["type"] for e in events].count("exit") == 1 and not any(e["data"].get("forged") for e in events)
    for d, owner, mode in ((paths.job, UID, 0o700), (paths.attempt, UID, 0o700), (paths.records, 0, 0o700),
                           (paths.records.parent, 0, 0o700), (paths.job / "payload.pkl", UID, 0o600)):
        st = os.stat(d)
        assert (st.st_uid, st.st_mode & 0o777) == (owner, mode), d


@root_only
def test_root_reads_only_the_owners_regular_files_and_never_follows_a_link(open_root: Path) -> None:
    paths = prepare_owned(open_root, "j-2", 1, UID, UID)
    secret = open_root / "secret"
    secret.write_text("root's")
    a = paths.attempt
    (a / "link").symlink_to(secret)
    os.link(secret, a / "hard")  # root's own file, linked in (a job cannot, with protected_hardlinks)
    (a / "roots").write_text("root's")
    os.mkfifo(a / "fifo")
    (a / "mine").write_text("ok")
    os.chown(a / "mine", UID, UID)
    with OwnedDir(paths.job.parent, [paths.job.name, a.name], UID, UID) as own:
        assert own.read("mine", 100) == b"ok"
        assert [own.read(n, 100) for n in ("link", "hard", "roots", "fifo", "missing")] == [None] * 5
        own.write("link", b"new")  # replaces the link, does not write through it
    assert secret.read_text() == "root's" and not (a / "link").is_symlink() and os.stat(a / "link").st_uid == UID
    # a planted link in place of the attempt folder is not followed either
    shutil.rmtree(a)
    a.symlink_to(open_root)
    with pytest.raises(OSError):
        OwnedDir(paths.job.parent, [paths.job.name, a.name], UID, UID)


@root_only
def test_a_job_its_identity_cannot_start_says_why(open_root: Path, tmp_path: Path) -> None:
    paths = prepare_owned(open_root, "j-3", 1, UID, UID)
    private = tmp_path / "private"  # under pytest's folder of mode 700
    private.mkdir()
    launch = {"argv": ["/bin/true"], "cwd": str(private), "job_dir": str(paths.job), "attempt_dir": str(paths.attempt),
              "user": {"name": "ana", "uid": UID, "gid": UID}, "env": {"PATH": "/usr/bin:/bin"}}
    events = _run(paths.records, launch, runner_env())
    line = next(e["data"]["line"] for e in events if e["type"] == "log")
    assert line.startswith(f"gpuqueue: cannot start the job as uid {UID} (user ana): [Errno 13] Permission denied")
    assert "must be able to run the interpreter and enter the working folder" in line
    assert events[-1]["data"]["exit_code"] == 127
    # the exit record says it did not start, and why: the job fails at once (launchfail)
    error = events[-1]["data"]["launch_error"]
    assert (error["stage"], error["errno"], error["path"], error["uid"]) == ("cwd", 13, str(private), UID), error
    assert launchfail.permanent(error)
    assert launchfail.message(error) == (
        f"the job could not start: its working folder {private} cannot be entered by uid {UID} (user ana) "
        f"(Permission denied): let that user reach it (a+x on the folders above it), or submit the job with "
        f"another working folder")


def test_a_left_ray_folder_is_removed_only_where_own_ray_folder_would_make_it(tmp_path: Path) -> None:
    """The attempt folder's note names the job's own Ray folder; the runner (as the job's user)
    removes it after the job. A note the job rewrote removes nothing but such a folder: not a
    link to one, not another folder of /tmp, not a path that climbs out with '..'."""
    from gpuqueue.job.distributed import RAY_FOLDER_NOTE, remove_left_ray_folder

    keep = Path(tempfile.mkdtemp(prefix="gqr-keep-", dir="/tmp"))
    other = Path(tempfile.mkdtemp(prefix="other-", dir="/tmp"))
    link = Path("/tmp") / f"gqr-link-{os.getpid()}"
    link.symlink_to(keep)
    made = Path(tempfile.mkdtemp(prefix="gqr-", dir="/tmp"))
    (made / "ray").mkdir()
    (made / "token").write_text("t")
    try:
        for path in (str(link), str(other), f"/tmp/{keep.name}/../{other.name}", str(tmp_path), "", "x" * 5000):
            (tmp_path / RAY_FOLDER_NOTE).write_text(path)
            assert remove_left_ray_folder(str(tmp_path)) is None, path
        assert keep.is_dir() and other.is_dir() and link.is_symlink() and tmp_path.is_dir()
        (tmp_path / RAY_FOLDER_NOTE).write_text(str(made))
        assert remove_left_ray_folder(str(tmp_path)) == str(made)
        assert not made.exists()
        assert remove_left_ray_folder(str(tmp_path)) is None  # gone already
    finally:
        link.unlink()
        shutil.rmtree(keep, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)
        shutil.rmtree(made, ignore_errors=True)
