"""The worker's runner fork server: runners forked ahead of time take launches, report their
exit, and die with the server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gpuqueue.cluster.forkserver import SPARES, ForkServer
from helpers.servers import wait_until


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children()]
