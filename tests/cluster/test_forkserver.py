"""The worker's runner fork server: runners forked ahead of time take launches, report their
exit, and die with the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuqueue.cluster.forkserver import SPARES, ForkServer
from helpers.servers import wait_until

UID = 61998


def _attempt(root: Path, name: str, argv: list[str]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "launch.json").write_text(json.dumps({"argv": argv, "env": {"GQ_TEST": name}, "cwd": str(root)}))
    return d


def _events(d: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return []


def test_runners_take_launches_and_report_their_exit(tmp_path: Path) -> None:
    fs = ForkServer(dict(os.environ))
    try:
        ok = _attempt(tmp_path, "ok", [sys.executable, "-c", "import os; print('hi', os.environ['GQ_TEST'])"])
        bad = _attempt(tmp_path, "bad", [sys.executable, "-c", "raise SystemExit(3)"])
        broken = tmp_path / "broken"  # no launch.json: the runner itself fails, and says why
        broken.mkdir()
        handles = [fs.launch(d) for d in (ok, bad, broken)]
        assert len({h.pid for h in handles}) == 3
        wait_until(lambda: all(h.poll() is not None for h in handles), 20, 0.05, "the runners to end")
        assert [h.returncode for h in handles] == [0, 3, 1]
        assert {"stream": "stdout", "line": "hi ok"} in [e["data"] for e in _events(ok) if e["type"] == "log"]
        assert _events(bad)[-1]["data"]["exit_code"] == 3
        assert "launch.json" in (broken / "runner.log").read_text()
        # spares are waiting again for the next launches
        wait_until(lambda: len(_children(fs.proc.pid)) == SPARES, 10, 0.05, "spare runners")
    finally:
        fs.close()
    fs.proc.wait(10)


def test_runners_stop_their_jobs_when_the_server_goes(tmp_path: Path) -> None:
    fs = ForkServer(dict(os.environ))
    d = _attempt(tmp_path, "long", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
    h = fs.launch(d)
    wait_until(lambda: any(e["type"] == "log" for e in _events(d)), 20, 0.05, "the job to start")
    fs.close()  # as when the worker exits or dies: the server ends, its runners get SIGTERM
    fs.proc.wait(10)
    wait_until(lambda: (d / "exit.json").exists(), 20, 0.05, "the runner to stop its job")
    assert json.loads((d / "exit.json").read_text())["stop_reason"] == "terminated"
    wait_until(lambda: not _alive(h.pid), 10, 0.05, "the runner to end with its fork server")


# A worker whose fork server is gone, in a container whose PID 1 does not reap: the runners that
# die with the server become children of that PID 1 (here: of this script, made a subreaper that
# never reaps) and stay zombies. The worker must see them ended, or their attempts would stay
# "running" forever.
NO_REAPER = r"""
import json, os, signal, sys, time
from pathlib import Path
from gpuqueue.attempt.orphans import become_subreaper
from gpuqueue.cluster.forkserver import ForkServer

def state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "gone"

assert become_subreaper()
d = Path(sys.argv[1])
fs = ForkServer(dict(os.environ))
h = fs.launch(d)
deadline = time.monotonic() + 20
while not (d / "events.jsonl").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
os.kill(fs.proc.pid, signal.SIGKILL)
fs.proc.wait()
while state(h.pid) != "Z" and time.monotonic() < deadline:
    time.sleep(0.05)
seen = state(h.pid)
while h.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"runner": seen, "returncode": h.poll()}))
"""


def test_a_runner_left_a_zombie_by_a_dead_server_counts_as_ended(tmp_path: Path) -> None:
    d = _attempt(tmp_path, "long", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
    out = subprocess.run([sys.executable, "-c", NO_REAPER, str(d)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["runner"] == "Z"  # the case itself: the runner ended, and nobody reaped it
    assert seen["returncode"] is not None  # ... and the worker's handle says it ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children()]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root and /usr/bin/python3")
def test_a_process_of_the_same_uid_cannot_read_a_not_dumpable_ones_environment() -> None:
    """What a job of the worker's own uid (a worker that is not root) meets: the fork server and
    its runners call not_dumpable(), so their /proc/PID/environ is closed to it."""
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    code = "import sys, time; from gpuqueue.cluster.forkserver import not_dumpable; {}; print('up', flush=True); time.sleep(30)"
    seen = {}
    for closed in (False, True):
        p = subprocess.Popen(["/usr/bin/python3", "-c", code.format("not_dumpable()" if closed else "pass")],
                             user=UID, group=UID, env={"PYTHONPATH": backend, "SECRET": "s3"}, stdout=subprocess.PIPE)
        try:
            assert p.stdout is not None and p.stdout.readline() == b"up\n"
            r = subprocess.run(["/bin/cat", f"/proc/{p.pid}/environ"], user=UID, group=UID, capture_output=True)
            seen[closed] = b"SECRET=s3" in r.stdout
        finally:
            p.kill()
            p.wait()
    assert seen == {False: True, True: False}
