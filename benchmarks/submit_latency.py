"""Submit-to-first-log-line latency on an idle embedded queue.

Starts a real ``jupyter server`` with the extension (in a temporary folder), then, N times:
submits a cell job through the REST API exactly as ``%%train`` does, and times until the first
log line arrives on the job's SSE stream. Also times a cell that imports torch against a bare
``python -c "import torch"``.

    python benchmarks/submit_latency.py [--runs 20] [--torch-runs 5]

Prints JSON. Goals (issue 2): light cell median <= 300 ms; torch cell <= 1.2x the bare import.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.servers import JupyterServer  # noqa: E402

from gpuqueue.job.payload import build_payload  # noqa: E402


def first_line_latency(client, source: str, marker: str) -> float:
    """Seconds from the submit call to the first log line containing ``marker``."""
    payload, inputs, outputs = build_payload(source, {})
    spec = {"kind": "cell", "python": sys.executable, "inputs": inputs, "outputs": outputs}
    t0 = time.perf_counter()
    job = client.submit(spec, payload)
    for ev in client.follow(job["id"]):
        if ev["type"] == "log" and marker in ev["data"].get("line", ""):
            dt = time.perf_counter() - t0
            break
    else:
        raise RuntimeError(f"job {job['id']} ended without printing {marker!r}")
    for _ in client.follow(job["id"]):  # let it finish before the next run
        pass
    return dt


def bare_import_torch() -> float:
    """Seconds from starting ``python -c "import torch; print('ready')"`` to reading its line
    (the same end point as the queued measure: the first line, not the process exit)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-u", "-c", "import torch; print('ready')"], stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline()
    dt = time.perf_counter() - t0
    p.wait()
    assert line.strip() == b"ready", line
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--torch-runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = JupyterServer(Path(tmp), gpus=0).start()
        try:
            client = server.client()
            first_line_latency(client, "print('warm-up')", "warm-up")
            light = [first_line_latency(client, "print('first line')", "first line") for _ in range(args.runs)]
            torch_q = [first_line_latency(client, "import torch\nprint('ready')", "ready") for _ in range(args.torch_runs)]
        finally:
            server.stop()
            server.kill_jobs()
    bare = [bare_import_torch() for _ in range(args.torch_runs)]
    med = statistics.median
    out = {
        "light_cell_first_line_ms": {"median": round(med(light) * 1000, 1), "p90": round(sorted(light)[int(0.9 * (len(light) - 1))] * 1000, 1), "min": round(min(light) * 1000, 1), "runs": len(light)},
        "torch_cell_first_line_s": round(med(torch_q), 3),
        "bare_import_torch_s": round(med(bare), 3),
        "torch_ratio": round(med(torch_q) / med(bare), 3),
        "goals": {"light_median_ms": 300, "torch_ratio": 1.2},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
