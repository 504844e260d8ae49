"""What a warm import prints while the interpreter is started ahead is not the next job's
output: 100 KB printed at import (more than a pipe holds) neither shows in the cell's output
nor keeps the interpreter from serving its job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from gpuqueue.attempt.launch import build_launch, runner_env
from gpuqueue.attempt.warmjob import warm_spec
from gpuqueue.job.payload import build_payload
from gpuqueue.queue.models import JobSpec
from helpers.servers import wait_until

LOUD = ("import sys\nsys.stdout.write('IMPORT-NOISE ' * 8000 + '\\n')\n"
        "sys.stderr.write('IMPORT-ERR-NOISE ' * 500 + '\\n')\nLOADED = True\n")


def test_import_output_of_a_warm_interpreter_is_not_the_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "loud_probe.py").write_text(LOUD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]))
    proto = build_launch("next", JobSpec(kind="cell", python=sys.executable), tmp_path / "n", tmp_path / "n" / "1",
                         1, [], "local")
    runner = subprocess.Popen([sys.executable, "-m", "gpuqueue.attempt.runner", "-"], stdin=subprocess.PIPE,
                              env=runner_env(), start_new_session=True)
    assert runner.stdin is not None
    runner.stdin.write(json.dumps(warm_spec(sys.executable, proto["env"], ["loud_probe"])).encode() + b"\n")
    runner.stdin.flush()

    def child() -> Optional[int]:
        kids = Path(f"/proc/{runner.pid}/task/{runner.pid}/children").read_text().split()
        return int(kids[0]) if kids else None

    wait_until(child, 30, what="the warm job interpreter")
    time.sleep(3.0)  # its imports are done (or blocked on a full pipe)

    jd = tmp_path / "j"
    ad = jd / "attempt-1"
    ad.mkdir(parents=True)
    payload, _, outputs = build_payload("import sys\nprint('job says hi', 'loud_probe' in sys.modules)\n", {})
    (jd / "payload.pkl").write_bytes(payload)
    spec = JobSpec(kind="cell", python=sys.executable, cwd=str(tmp_path), outputs=outputs)
    launch = build_launch("j", spec, jd, ad, 1, [], "local")
    (ad / "launch.json").write_text(json.dumps(launch))
    runner.stdin.write(str(ad).encode() + b"\n")
    runner.stdin.close()
    runner.wait(60)  # it does not hang

    records = [json.loads(x) for x in (ad / "events.jsonl").read_text().splitlines()]
    [rec] = [r["data"] for r in records if r["type"] == "runner"]
    lines = [r["data"].get("line", "") for r in records if r["type"] == "log"]
    assert rec["warm"] is True
    assert "job says hi True" in lines
    assert not any("NOISE" in line for line in lines)
