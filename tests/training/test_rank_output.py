"""What a `%%train --gpus 2` cell (two ranks under torchrun, gloo on CPU, real Jupyter server and
kernel) shows: when rank 1 dies without a line (SIGKILL, as the kernel's out-of-memory killer
sends), rank 0's line says how it ended instead of pointing at `[rank1]` lines that do not exist;
a cell that succeeds shows its ranks' own output only, not torchrun's OMP_NUM_THREADS banner."""

from __future__ import annotations

import sys

from training.jobs import logs, wait_done

OOM = "killed by signal 9 (SIGKILL), e.g. the kernel's out-of-memory killer"


def _shown(text: str) -> list[str]:
    """The lines as a notebook shows them (each in the state its \\r redraws end in)."""
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()]


def test_rank_0_says_how_a_silent_rank_1_ended_not_to_look_above(jupyter_server) -> None:
    """Rank 1 is killed by SIGKILL before it prints anything: rank 0 says `stopped: rank 1
    failed: killed by signal 9 (SIGKILL), ...; it printed nothing` (before: `stopped: rank 1
    failed (see [rank1] above)`, with no [rank1] line in the output), and the launcher's line and
    the cell's error name the signal."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --gpus 2\nimport os, time\nif os.environ['RANK'] == '1':\n"
                "    time.sleep(1)\n    os.kill(os.getpid(), 9)\ntime.sleep(30)\n", timeout=180)
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    assert res.error["evalue"].endswith(f"failed: rank 1 failed: {OOM}"), res.error
    shown = _shown(res.stderr)
    assert not [line for line in shown if line.startswith("[rank1]")], res.stderr
    assert not [line for line in shown if "see [rank1] above" in line], res.stderr
    assert f"gpuqueue: stopped: rank 1 failed: {OOM}; it printed nothing" in shown, res.stderr
    assert f"gpuqueue: rank 1 failed: {OOM}; the other ranks were stopped" in shown, res.stderr


def test_a_rank_that_printed_before_it_was_killed_is_still_pointed_at(jupyter_server) -> None:
    """Rank 1 prints a line to stdout, then is killed by SIGKILL: rank 0 points at its lines."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --gpus 2\nimport os, time\nif os.environ['RANK'] == '1':\n"
                "    print('step 1', flush=True)\n    time.sleep(1)\n    os.kill(os.getpid(), 9)\n"
                "time.sleep(30)\n", timeout=180)
    assert res.error is not None, res.text
    assert "[rank1] step 1" in _shown(res.stdout) + _shown(res.stderr), res.text
    assert "gpuqueue: stopped: rank 1 failed (see [rank1] above)" in _shown(res.stderr), res.stderr


def test_a_2_rank_cell_that_succeeds_shows_only_its_ranks_output(jupyter_server) -> None:
    """A 2-rank cell that prints one line per rank: the cell shows those two lines and nothing
    of torchrun's (before: its `Setting OMP_NUM_THREADS environment variable for each process
    to be 1 in default ...` warning between lines of `*****` on stderr); each rank runs with
    OMP_NUM_THREADS=1 as torchrun's default gave it, and a job that sets it keeps its own."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --gpus 2\nimport os\nprint(f\"rank {os.environ['RANK']}: \"\n"
                "      f\"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\", flush=True)\n", timeout=180)
    assert res.error is None, res.text
    ranks = sorted(line for line in _shown(res.stdout) if not line.startswith("[gpuqueue]"))
    assert ranks == ["[rank1] rank 1: OMP_NUM_THREADS=1", "rank 0: OMP_NUM_THREADS=1"], res.text
    assert res.stderr.strip() == "", res.stderr
    c = jupyter_server.client()
    job = c.submit({"kind": "command", "gpus": 2, "retries": 0,
                    "command": [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                    "env": {"GPUQUEUE_LAUNCHER": "torchrun", "OMP_NUM_THREADS": "3"}}, new=True)["id"]
    assert wait_done(jupyter_server, job, 120)["state"] == "succeeded"
    assert sorted(logs(c.events(job)).splitlines()) == ["3", "[rank1] 3"], logs(c.events(job))


def test_rank_0_says_why_it_stopped_when_rank_1_fails_while_rank_0_still_loads(jupyter_server) -> None:
    """Rank 1 fails at once while rank 0 is still loading the cell's inputs (here a notebook
    value whose loading takes a minute on rank 0; a slow start under load is the same): torchrun
    stops rank 0, which says why (before: it ended without a word, its stop handler not yet in
    place, and the cell did not say why rank 0 stopped)."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    assert k.run("import os, time\ndef _load():\n    if os.environ.get('RANK') == '0':\n        time.sleep(60)\n"
                 "    return 'data'\nclass Slow:\n    def __reduce__(self):\n        return (_load, ())\n"
                 "slow = Slow()").error is None
    res = k.run("%%train --gpus 2\nimport os\nif os.environ['RANK'] == '1':\n    raise ValueError('rank 1 fails')\n"
                "print(slow)\n", timeout=180)
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    shown = _shown(res.stderr)
    assert "[rank1] ValueError: rank 1 fails" in shown, res.stderr
    assert "gpuqueue: stopped: rank 1 failed (see [rank1] above)" in shown, res.stderr
    assert "gpuqueue: rank 1 failed: ValueError: rank 1 fails; the other ranks were stopped" in shown, res.stderr
    for noise in ("JobStopped", "Traceback", "asked to stop"):
        assert noise not in res.stderr, (noise, res.stderr)
