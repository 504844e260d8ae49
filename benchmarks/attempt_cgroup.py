"""What a cgroup per attempt costs (``gpuqueue.attempt.cgroup``): per attempt, the worker makes
the cgroup, the runner enters it (one write), and at the attempt's end the worker kills and
removes it. Measured with a forked child standing in for the runner, against the same child
without a cgroup.

    python benchmarks/attempt_cgroup.py [--attempts 300]

Needs a writable cgroup v2 (root, or a delegated subtree); says why not otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

from gpuqueue.attempt.cgroup import AttemptCgroups, CgroupsUnavailable, end, enter


def _one(cgroups: Optional[AttemptCgroups], i: int) -> tuple[float, float]:
    """(ms from before the cgroup is made to the child's exit, ms of the end: kill and rmdir)."""
    t = time.perf_counter()
    cg = cgroups.create("bench", i) if cgroups is not None else None
    pid = os.fork()
    if pid == 0:
        if cg is not None:
            enter(str(cg))
        os._exit(0)
    os.waitpid(pid, 0)
    started = time.perf_counter()
    if cg is not None:
        end(cg)
    return (started - t) * 1e3, (time.perf_counter() - started) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=300)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="gq-cgroup-bench-"))
    try:
        cgroups = AttemptCgroups.open(state, "bench")
    except CgroupsUnavailable as e:
        print(f"no cgroup per attempt here: {e}")
        return
    try:
        for name, cgs in (("without a cgroup", None), ("with a cgroup", cgroups)):
            runs = [_one(cgs, i) for i in range(args.attempts)]
            start = statistics.median(r[0] for r in runs)
            stop = statistics.median(r[1] for r in runs)
            print(f"{name:17s}: fork+enter+exit {start:.3f} ms, end (kill+rmdir) {stop:.3f} ms (median of {args.attempts})")
    finally:
        cgroups.close()
        os.rmdir(state)


if __name__ == "__main__":
    main()
