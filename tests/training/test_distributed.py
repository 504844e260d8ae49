"""Several processes through the real embedded queue: a 2-rank DDP job under torchrun (gloo on
CPU) that is preempted and resumes, and a 2-worker Ray Train job on a local Ray cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Optional

import psutil

from helpers.rays import FLOOR_RAY, OLD_RAY, ROOT, floor_ray, ray_first
from helpers.servers import wait_until
from training.jobs import by_attempt, logs, submit_script, wait_done, wait_metric_step


# a job's PYTHONPATH that names its own Ray replaces the server's: the package comes first
BACKEND = os.pathsep.join([str(ROOT / "backend"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def kill_job_groups(server, job: str) -> None:
    """Kill the process groups of the job's attempts (the launcher and the Ray cluster it
    started), in case the test ends while one still runs."""
    for f in (server.state_dir / "jobs" / job).glob("attempt-*/events.jsonl"):
        for line in f.read_text().splitlines():
            ev = json.loads(line)
            if ev["type"] == "runner":
                try:
                    os.killpg(ev["data"]["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def favour_job(server, job: str) -> None:
    """On a shared, overloaded 2-core VM Ray's raylet gives up when its agents take over 15 s to
    start; raise the job's CPU priority (its process group, inherited by the Ray processes it
    starts) where we may. Changes nothing in what the job does."""
    f = server.state_dir / "jobs" / job / "attempt-1" / "events.jsonl"
    wait_until(lambda: f.exists() and '"runner"' in f.read_text(), 60, 0.05, "the job to start")
    pid = json.loads(next(x for x in f.read_text().splitlines() if '"runner"' in x))["data"]["pid"]
    try:
        os.setpriority(os.PRIO_PGRP, pid, -10)
    except (PermissionError, ProcessLookupError):
        pass


def _ray_monitor_of(server, job: str) -> Optional[psutil.Process]:
    """The autoscaler monitor of the job's own Ray (a process of its attempt's tree), or None."""
    f = server.state_dir / "jobs" / job / "attempt-1" / "events.jsonl"
    runner = next((json.loads(x)["data"]["pid"] for x in (f.read_text().splitlines() if f.exists() else [])
                   if '"runner"' in x), None)
    if runner is None:
        return None
    try:
        return next((p for p in psutil.Process(runner).children(recursive=True)
                     if _ray_server(p) == "autoscaler"), None)
    except psutil.Error:
        return None


def _ray_server(p: psutil.Process) -> str:
    """Which of Ray's servers ``p`` is ('' if none): the GCS, a raylet, the runtime-env agent (named
    so by Ray 2.60; 2.52 leaves its command line) or the autoscaler."""
    try:
        name, argv = p.name(), " ".join(p.cmdline())
    except psutil.Error:
        return ""
    if name in ("gcs_server", "raylet"):
        return name
    if name == "ray::RuntimeEnvAgent" or "runtime_env/agent/main.py" in argv:
        return "runtime-env agent"
    return "autoscaler" if "autoscaler/_private/monitor.py" in argv else ""


def _listening(p: psutil.Process) -> list:
    """The TCP sockets ``p`` listens on (none once it has ended)."""
    try:
        return [c for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


def rank_files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text().strip() for p in sorted(out.glob("rank-*.txt"))}


def test_gpus_2_runs_two_ddp_ranks_that_stop_together_and_resume(jupyter_server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job = submit_script(jupyter_server, "ddp_train.py", [str(out), "30"], gpus=2,
                        env={"GPUQUEUE_LAUNCHER": "torchrun", "STEP_SLEEP": "0.15"})
    wait_metric_step(jupyter_server, job, 7)
    jupyter_server.client().preempt(job)
    rec = wait_done(jupyter_server, job)
    evs = jupyter_server.client().events(job)
    assert rec["state"] == "succeeded", logs(evs)[-3000:]
    assert [a["outcome"] for a in rec["attempts"]] == ["preempted", "succeeded"]
    files = rank_files(out)
    assert set(files) == {"rank-0-1.txt", "rank-1-1.txt", "rank-0-2.txt", "rank-1-2.txt"}, files
    # both ranks of attempt 1 stopped at the same step, on the notice; both saw the 2 GPUs
    stop0 = re.search(r"stopped=(\d+)", files["rank-0-1.txt"]).group(1)
    assert f"stopped={stop0}" in files["rank-1-1.txt"]
    assert all("world=2" in v and "cuda=0,1" in v for v in files.values())
    # attempt 2 resumed right after the notice's checkpoint, on both ranks
    assert f"start={int(stop0) + 1}" in files["rank-0-2.txt"] and f"start={int(stop0) + 1}" in files["rank-1-2.txt"]
    first, second = by_attempt(evs)
    assert [e["data"]["step"] for e in first if e["type"] == "checkpoint"][-1] == int(stop0)
    # rank 0 alone reports: one metrics record per step
    steps = [e["data"]["step"] for e in second if e["type"] == "metrics"]
    assert steps == list(range(int(stop0) + 1, 30))
    assert all(e["data"]["world"] == 2 for e in evs if e["type"] == "metrics")
    assert any(e["type"] == "checkpoint" and e["data"]["step"] == 25 for e in second)


RANK_1_FAILS = """
import os, sys, time
if os.environ["RANK"] == "1":
    print("careful", file=sys.stderr, flush=True)
    raise ValueError("rank 1 fails")
print("rank 0 waits", flush=True)
time.sleep(60)
"""


def test_a_command_job_whose_rank_1_fails_names_that_rank_and_its_error(jupyter_server) -> None:
    """A 2-rank command job under torchrun whose rank 1 raises: the log ends with one line naming
    rank 1 and its exception (not torchrun's report, which names its wrapper
    `gpuqueue.job.distributed`), and so does the job's error (what `%gpuqueue status` and the
    record show), not 'the job process exited with code 1'."""
    c = jupyter_server.client()
    job = c.submit({"kind": "command", "command": [sys.executable, "-c", RANK_1_FAILS], "gpus": 2,
                    "retries": 0, "env": {"GPUQUEUE_LAUNCHER": "torchrun"}}, new=True)["id"]
    try:
        rec = wait_done(jupyter_server, job, 120)
    finally:
        kill_job_groups(jupyter_server, job)
    text = logs(c.events(job))
    assert rec["state"] == "failed", text
    assert rec["error"] == "rank 1 failed: ValueError: rank 1 fails (exit code 1)", (rec["error"], text)
    lines = text.splitlines()
    assert "[rank1] careful" in lines and "[rank1] ValueError: rank 1 fails" in lines, text
    assert lines[-1] == "gpuqueue: rank 1 failed: ValueError: rank 1 fails (exit code 1); the other ranks were stopped", text
    for noise in ("gpuqueue.job.distributed", "FAILED", "exitcode", "closing signal"):
        assert noise not in text, (noise, text)


RAY_CONFIG = """
[pools.default]
nodes = { "node-a" = 1, "node-b" = 1 }
"""


def test_nodes_2_runs_a_ray_train_job_that_reports_and_checkpoints(jupyter_server_factory, tmp_path: Path) -> None:
    """With the environment's Ray (the test whose rank 1 fails runs the oldest the project supports)."""
    cfg = tmp_path / "pools.toml"
    cfg.write_text(RAY_CONFIG)
    home = tmp_path / "home"
    home.mkdir()
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg), "GPUQUEUE_RAY_CPUS": "2",
                                                 "HOME": str(home)})
    out = tmp_path / "out"
    out.mkdir()
    job = submit_script(server, "ddp_train.py", [str(out), "12"], gpus=2, nodes=2)
    favour_job(server, job)
    try:
        # the job's Ray is in a private folder (not /tmp/ray: folders of mode 777, logs 644) and
        # answers only with a token of the attempt's there (Ray 2.60 alone writes one to
        # ~/.ray/auth_token, mode 644, and keeps it)
        monitor = wait_until(lambda: _ray_monitor_of(server, job), 120, 0.2, "the job's Ray")
        assert str(FLOOR_RAY) not in " ".join(monitor.cmdline()), monitor.cmdline()
        folder = Path(re.search(r"--logs-dir=(\S+)/ray/session_", " ".join(monitor.cmdline())).group(1))
        assert folder.stat().st_mode & 0o077 == 0 and (folder / "token").stat().st_mode & 0o077 == 0
        assert str(folder.parent) == "/tmp" and folder.name.startswith("gqr-"), folder
        # ... and its servers (GCS, raylets, the autoscaler's metrics, the runtime-env agent, the
        # driver) listen on the loopback address only: else on every address, the metrics with no
        # token. (The ranks' torch stores listen on every address, as under torchrun.)
        wait_until(lambda: any(e["type"] == "metrics" for e in server.client().events(job)), 240, 0.5,
                   "the ranks' first metrics")
        driver = monitor.parent()
        ray_servers = [driver, *(p for p in driver.children(recursive=True) if p == monitor or _ray_server(p))]
        listening = {(c.laddr.ip, c.laddr.port, _ray_server(p) or "driver") for p in ray_servers for c in _listening(p)}
        assert {"gcs_server", "raylet", "runtime-env agent"} <= {name for _, _, name in listening}, listening
        # the autoscaler's metrics, on a free port: Ray's fixed 44217 goes to the first such job only
        metrics = [c.laddr.port for c in _listening(monitor)]
        assert metrics and 44217 not in metrics, (metrics, listening)
        assert all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip, _, _ in listening), \
            sorted(listening)
        rec = wait_done(server, job, timeout=270)  # the launcher shuts its local Ray cluster down
    finally:
        kill_job_groups(server, job)
    assert not folder.exists()  # removed with the job's Ray
    assert not (home / ".ray").exists(), list((home / ".ray").iterdir())
    evs = server.client().events(job)
    assert rec["state"] == "succeeded", logs(evs)[-4000:]
    files = rank_files(out)
    assert set(files) == {"rank-0-1.txt", "rank-1-1.txt"}, (files, logs(evs)[-3000:])
    assert all("world=2" in v for v in files.values())
    assert [e["data"]["step"] for e in evs if e["type"] == "metrics"] == list(range(12))
    assert [e["data"]["step"] for e in evs if e["type"] == "checkpoint"] == [5, 10]
    assert any(e["type"] == "progress" and e["data"]["done"] == 12 for e in evs)


def test_nodes_2_whose_launcher_is_killed_leaves_no_ray_folder(jupyter_server_factory, tmp_path: Path) -> None:
    """The launcher of an embedded `--nodes 2` job killed (SIGKILL, as a cancel past its grace
    does) cannot remove its Ray's private folder (its token, Ray's logs with the job's output):
    the runner removes it once the job's processes are gone, and says so in the job's output."""
    cfg = tmp_path / "pools.toml"
    cfg.write_text(RAY_CONFIG)
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg), "GPUQUEUE_RAY_CPUS": "2"})
    c = server.client()
    job = c.submit({"kind": "command", "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                    "gpus": 2, "nodes": 2, "retries": 0}, new=True)["id"]
    try:
        monitor = wait_until(lambda: _ray_monitor_of(server, job), 120, 0.2, "the job's Ray")
        folder = Path(re.search(r"--logs-dir=(\S+)/ray/session_", " ".join(monitor.cmdline())).group(1))
        assert (folder / "token").exists()
        monitor.parent().kill()  # the launcher, Ray's driver
        rec = wait_done(server, job, timeout=120)
    finally:
        kill_job_groups(server, job)
    text = logs(c.events(job))
    assert rec["state"] == "failed", text[-3000:]
    assert not folder.exists(), sorted(p.name for p in folder.iterdir())
    assert f"gpuqueue: removed the folder of the job's own Ray, {folder}, which its launcher left" in text, text[-3000:]
    assert not [p for p in psutil.process_iter() if any(str(folder) in a for a in _cmdline(p))]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def test_nodes_2_with_a_ray_that_has_no_token_auth_is_refused_before_its_ray_starts(
        jupyter_server_factory, tmp_path: Path) -> None:
    """Ray before 2.52 ignores RAY_AUTH_MODE=token: the job's one-node Ray would answer anyone who
    reaches its ports (any local user: they are on the loopback address). With Ray 2.51.2 first on the job's
    PYTHONPATH (scripts/test.sh installs it) the job fails with why and the fix, and no Ray of it
    starts (its ray.log, which Ray's start would write, is not there)."""
    cfg = tmp_path / "pools.toml"
    cfg.write_text(RAY_CONFIG)
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg), "GPUQUEUE_RAY_CPUS": "2"})
    c = server.client()
    job = c.submit({"kind": "command", "command": [sys.executable, "-c", "print('ran')"], "gpus": 2, "nodes": 2,
                    "retries": 0, "env": {"PYTHONPATH": ray_first(OLD_RAY, BACKEND)}}, new=True)["id"]
    try:
        rec = wait_done(server, job, timeout=120)
    finally:
        kill_job_groups(server, job)
    text = logs(c.events(job))
    assert rec["state"] == "failed", text[-3000:]
    assert "the job's Python has Ray 2.51.2, which has no token authentication (Ray 2.52 and later)" in rec["error"], \
        (rec["error"], text[-3000:])
    assert "ran" not in text.splitlines()
    attempt = server.state_dir / "jobs" / job / "attempt-1"
    assert not (attempt / "ray.log").exists(), list(attempt.iterdir())


def test_nodes_2_ray_train_job_whose_rank_1_fails_shows_its_traceback_once_and_not_rays(
        jupyter_server_factory, tmp_path: Path) -> None:
    """Embedded `--nodes 2` (Ray Train): rank 1 raises. The job's output is as clean as under
    torchrun: rank 1's lines marked `[rank1]` (its traceback once), a line naming the file with
    Ray's own messages (which holds Ray's traceback), and the launcher's line naming rank 1, its
    exception and exit code, which the job's error says too; none of Ray's pages of its
    controllers' and workers' logs (before: 40 lines of them and 'rank 1 failed: exit code 1').
    With the oldest Ray the project supports (pyproject.toml's floor) first on the job's
    PYTHONPATH: its token, its loopback address and its messages work as with the newest."""
    cfg = tmp_path / "pools.toml"
    cfg.write_text(RAY_CONFIG)
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg), "GPUQUEUE_RAY_CPUS": "2"})
    c = server.client()
    fails = ("import os, sys, time\nprint(f'rank {os.environ[\"RANK\"]} starts', flush=True)\n"
             "if os.environ['RANK'] == '1':\n    time.sleep(3)\n    print('rank 1 loads', file=sys.stderr, flush=True)\n"
             "    raise ValueError('rank 1 fails')\ntime.sleep(120)\n")
    job = c.submit({"kind": "command", "command": [sys.executable, "-c", fails], "gpus": 2, "nodes": 2,
                    "retries": 0, "env": {"PYTHONPATH": ray_first(floor_ray(), BACKEND)}}, new=True)["id"]
    favour_job(server, job)
    try:
        monitor = wait_until(lambda: _ray_monitor_of(server, job), 120, 0.2, "the job's Ray")
        assert str(FLOOR_RAY / "ray") in " ".join(monitor.cmdline()), monitor.cmdline()
        rec = wait_done(server, job, timeout=270)
    finally:
        kill_job_groups(server, job)
    text = logs(c.events(job))
    want = "rank 1 failed: ValueError: rank 1 fails (exit code 1)"
    assert (rec["state"], rec["error"]) == ("failed", want), (rec["error"], text[-3000:])
    lines = text.splitlines()
    assert lines[-1] == f"gpuqueue: {want}; the other ranks were stopped", text[-3000:]
    assert "rank 0 starts" in lines and "[rank1] rank 1 starts" in lines, text[-3000:]
    assert "[rank1] rank 1 loads" in lines and "[rank1] ValueError: rank 1 fails" in lines, text[-3000:]
    assert text.count("Traceback") == 1, text[-3000:]
    ray_log = server.state_dir / "jobs" / job / "attempt-1" / "ray.log"
    assert f"gpuqueue: Ray's own messages (its tracebacks included) are in {ray_log}" in lines, text[-3000:]
    assert "Error in training function" in ray_log.read_text()
    for noise in ("RayTrainWorker", "TrainController", "PlacementGroupCleaner", "Error in training function",
                  "RuntimeError", "WorkerGroupError", "repeated", "Ray instance", "pid="):
        assert noise not in text, (noise, text[-3000:])
