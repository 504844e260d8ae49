"""Job interpreters started ahead (``gpuqueue.attempt.warmjob``): a cell run by one gives what a
cold start gives (its names, its folder, its own per-job environment), and one is used only for
the launch it was prepared for, only once its imports are done, at most once, with no
credential in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from gpuqueue.attempt.launch import build_launch, runner_env
from gpuqueue.attempt.warmjob import warm_spec
from gpuqueue.job.payload import build_payload, unpack_results
from gpuqueue.queue.config import QueueConfig
from gpuqueue.queue.models import JobSpec
from helpers.servers import wait_until

CELL = """import os, sys
x = 41 + 1
seen = (os.getcwd(), sys.path[0], os.environ.get("GPUQUEUE_JOB_ID"), os.environ.get("CUDA_VISIBLE_DEVICES"),
        "warm_probe" in sys.modules, sorted(k for k in os.environ if "SECRET" in k or "TOKEN" in k))
print("seen", seen)
"""
PROBE = "import time\ntime.sleep(float(__import__('os').environ.get('PROBE_SLEEP', '0')))\nLOADED = True\n"


@pytest.fixture
def probe_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``warm_probe`` on the PYTHONPATH every job gets, and a credential in the
    environment of the process that starts runners (it must reach no job)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "warm_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("GPUQUEUE_TOKEN", "s3cret-token")
    monkeypatch.setenv("MY_SECRET", "s3cret")
    return mods


def _attempt(root: Path, name: str, spec: JobSpec, devices: list[int]) -> dict[str, Any]:
    jd = root / name
    ad = jd / "attempt-1"
    ad.mkdir(parents=True)
    payload, _, outputs = build_payload(CELL, {})
    (jd / "payload.pkl").write_bytes(payload)
    spec = spec.model_copy(update={"outputs": outputs})
    launch = build_launch(name, spec, jd, ad, 1, devices, "local")
    (ad / "launch.json").write_text(json.dumps(launch))
    return launch


def _warm_runner(root: Path, imports: list[str], python: str = sys.executable) -> subprocess.Popen[bytes]:
    proto = build_launch("next", JobSpec(kind="cell", python=python), root / "n", root / "n" / "1", 1, [], "local")
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.attempt.runner", "-"], stdin=subprocess.PIPE,
                         env=runner_env(), start_new_session=True)
    assert p.stdin is not None
    p.stdin.write(json.dumps(warm_spec(python, proto["env"], imports)).encode() + b"\n")
    p.stdin.flush()
    return p


def _warm_pid(runner: subprocess.Popen[bytes]) -> int:
    def child() -> Optional[int]:
        kids = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
        return int(kids[0]) if kids else None

    return wait_until(child, 30, what="the warm job interpreter")


def _go(runner: subprocess.Popen[bytes], launch: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert runner.stdin is not None
    runner.stdin.write(launch["attempt_dir"].encode() + b"\n")
    runner.stdin.close()
    runner.wait(60)
    ad = Path(launch["attempt_dir"])
    records = [json.loads(x) for x in (ad / "events.jsonl").read_text().splitlines()]
    [rec] = [r["data"] for r in records if r["type"] == "runner"]
    return rec, records


def _seen(ad: Path) -> tuple:
    values, failed = unpack_results((ad / "result.pkl").read_bytes())
    assert not failed and values["x"] == 42
    return values["seen"]


def test_a_warm_interpreter_runs_the_cell_as_a_cold_start_would(tmp_path: Path, probe_path: Path) -> None:
    runner = _warm_runner(tmp_path, ["warm_probe"])
    warm = _warm_pid(runner)
    env = Path(f"/proc/{warm}/environ").read_bytes()
    assert b"s3cret" not in env  # the interpreter waiting for a job holds no credential
    time.sleep(3.0)  # its imports are done
    launch = _attempt(tmp_path, "j-warm", JobSpec(kind="cell", python=sys.executable, cwd=str(tmp_path)), [3])
    rec, _ = _go(runner, launch)
    assert rec["warm"] is True and rec["pid"] == warm
    cwd, path0, job_id, cuda, preloaded, creds = _seen(Path(launch["attempt_dir"]))
    assert (cwd, path0, job_id, cuda, preloaded, creds) == (str(tmp_path), str(tmp_path), "j-warm", "3", True, [])
    assert not Path(f"/proc/{warm}").exists()  # used once: it ended with its job

    cold = _attempt(tmp_path, "j-cold", JobSpec(kind="cell", python=sys.executable, cwd=str(tmp_path)), [3])
    subprocess.run([sys.executable, "-m", "gpuqueue.attempt.runner", cold["attempt_dir"]], env=runner_env(), timeout=60)
    # the same cell started cold sees the same, but for the module imported ahead
    assert _seen(Path(cold["attempt_dir"]))[:4] == (str(tmp_path), str(tmp_path), "j-cold", "3")


@pytest.mark.parametrize("case", ["own-env", "other-python", "still-importing", "shadowed", "cuda-touched"])
def test_a_launch_it_was_not_prepared_for_starts_cold(tmp_path: Path, probe_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    if case == "still-importing":
        monkeypatch.setenv("PROBE_SLEEP", "60")
        monkeypatch.setenv("GPUQUEUE_PASS_ENV", "PROBE_SLEEP")
    if case == "cuda-touched":  # an import that initialised CUDA (a stand-in torch says so)
        (probe_path / "warm_probe.py").write_text(
            "import sys, types\nt = types.ModuleType('torch')\n"
            "t.cuda = types.SimpleNamespace(is_initialized=lambda: True)\nsys.modules['torch'] = t\n")
    python = sys.executable
    if case == "other-python":  # the same interpreter under another name: not the one asked for
        python = str(tmp_path / "python")
        Path(python).symlink_to(sys.executable)
    runner = _warm_runner(tmp_path, ["warm_probe"], python=python)
    warm = _warm_pid(runner)
    time.sleep(3.0)
    if case == "shadowed":  # the job's folder has its own warm_probe.py: a cold start imports that one
        (tmp_path / "warm_probe.py").write_text("LOADED = 'local'\n")
    spec = JobSpec(kind="cell", python=sys.executable, cwd=str(tmp_path),
                   env={"OMP_NUM_THREADS": "1"} if case == "own-env" else {})
    launch = _attempt(tmp_path, "j", spec, [0])
    t0 = time.monotonic()
    rec, _ = _go(runner, launch)
    assert rec["warm"] is False and rec["pid"] != warm
    assert time.monotonic() - t0 < 20  # a cell that does not need the import never waits for it
    assert _seen(Path(launch["attempt_dir"]))[2:5] == ("j", "0", False)
    wait_until(lambda: not Path(f"/proc/{warm}").exists(), 10, what="the unused interpreter to end")


def test_a_runner_ended_before_its_launch_leaves_no_interpreter(tmp_path: Path, probe_path: Path) -> None:
    runner = _warm_runner(tmp_path, ["warm_probe"])
    warm = _warm_pid(runner)
    assert runner.stdin is not None
    runner.stdin.close()  # EOF: nothing to run
    assert runner.wait(30) == 0
    wait_until(lambda: not Path(f"/proc/{warm}").exists(), 10, what="the interpreter to end")


def test_warm_imports_must_be_module_names() -> None:
    cfg = QueueConfig(pools={"p": {"nodes": {"n": 1}}})
    assert cfg.warm_imports == ["torch"]
    with pytest.raises(ValueError, match="warm_imports"):
        QueueConfig(pools={"p": {"nodes": {"n": 1}}}, warm_imports=["os; rm -rf /"])
    with pytest.raises(ValueError, match="not a module name"):
        warm_spec(sys.executable, {}, ["-c"])
