"""What no scheduler can beat on a trace: lower bounds on waits, and whether issue 13's goals on
maximum wait and high-priority p99 wait can hold together there at all.

    python benchmarks/goal_bounds.py TRACE --cluster prod=64x8 [--time-scale F] [--fifo FIFO.json]
        [--slot 1800] [--json OUT]

The bounds come from a *relaxation* of the cluster: each pool is one pot of GPUs (no nodes, so
no fragmentation and no gangs), and a job may be paused, resumed and moved at no cost, on up to
its own number of GPUs at once. A job's wait is counted as the simulator counts it: its end
less its submit time less the time it ran (``gpuqueue.simulate``). Any schedule of the real
cluster in which every job runs once for its duration (or up to its time limit), paused or not,
is also a schedule of the relaxation with the same waits; so what the relaxation cannot reach,
no scheduler can. (A preempted job that resumes runs a little longer than its duration: the
grace before its checkpoint. The relaxation allows every job an extra ``--slot`` of time before
its deadline, which covers that as long as a job's preemptions cost it less than a slot.)

Whether a set of deadlines (job ``j`` done by ``submit_j + W_j + run_j``) can be met is a
transportation problem: time is cut into slots of ``--slot`` seconds; a job can use, in each
slot that meets its window, at most its GPUs for the whole slot; a pool gives each slot its
GPUs. It is solved as a maximum flow (source -> jobs -> slots -> sink): feasible exactly when
the flow carries every job's GPU-time. Windows are rounded outwards to whole slots, GPU-time
in a job is rounded down and capacities up, so rounding only makes the relaxation looser (the
bounds stay valid; coarser slots make them weaker).

Printed, for the trace:

* ``max_wait_lb``: the smallest maximum wait (to a slot) any schedule can have. Set against
  FIFO's maximum wait it says how much room the goal "max wait <= FIFO's" leaves for any
  reordering at all (priorities, fair share): FIFO gets close to this bound at load 1.0.
* ``high_p99_feasible``: with every job's wait at most FIFO's maximum (the goal) and high jobs'
  waits at most 0.2x FIFO's high p99 (the goal), except the share of high jobs a p99 lets wait
  longer: can that be met? Without the exemption it is a flow; with it, a linear program
  (HiGHS) whose exemptions may be fractional, which only loosens it. ``infeasible`` here means
  no scheduler meets both goals on this trace.
* ``high_wait_lb_all``: the smallest wait bound that *every* high job can keep with all jobs
  within FIFO's maximum (a flow; not a p99 bound, shown for scale).

FIFO's figures come from ``--fifo`` (the JSON ``gpuqueue simulate --policy fifo --json`` wrote
for the same trace and flags), else the script runs the simulator for them.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, csr_matrix, vstack
from scipy.sparse.csgraph import maximum_flow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from gpuqueue.simulate.trace import build_config, parse_cluster, read_trace  # noqa: E402
from gpuqueue.queue.config import load_config  # noqa: E402

UNIT = 60.0  # flow units are GPU-minutes (int32 capacities)


@dataclass
class Job:
    """What the relaxation needs of a trace job."""

    submit: float
    run: float  # seconds it runs: its duration, or its time limit when shorter
    gpus: int
    pool: int
    high: bool


def load_jobs(trace: str, cluster: str, config: Optional[str], time_scale: float) -> tuple[list[Job], list[int]]:
    """The trace's jobs as the simulator reads them, and each pool's GPUs (jobs too big for
    their pool, which the simulator rejects, are left out)."""
    base = load_config(config) if config else None
    cfg = build_config(parse_cluster(cluster), base)
    names = list(cfg.pools)
    gpus = [sum(cfg.pools[n].nodes.values()) for n in names]
    jobs = []
    for j in read_trace(trace, cfg, time_scale):
        p = names.index(j.pool)
        if j.gpus > gpus[p] or j.gpus <= 0:
            continue
        run = j.duration if j.time_limit is None else min(j.duration, j.time_limit)
        jobs.append(Job(j.submit, run, j.gpus, p, j.priority.value == "high"))
    return jobs, gpus


class Relaxation:
    """The transportation problem for one trace and slot length; ``edges`` builds the job ->
    slot edges for given wait deadlines."""

    def __init__(self, jobs: list[Job], pool_gpus: list[int], slot: float):
        self.jobs, self.pool_gpus, self.slot = jobs, pool_gpus, slot
        self.t0 = min(j.submit for j in jobs)
        self.submit = np.array([j.submit - self.t0 for j in jobs])
        self.run = np.array([j.run for j in jobs])
        self.gpus = np.array([j.gpus for j in jobs], dtype=np.int64)
        self.pool = np.array([j.pool for j in jobs], dtype=np.int64)
        self.high = np.array([j.high for j in jobs])
        self.work = np.floor(self.gpus * self.run / UNIT).astype(np.int64)  # rounded down
        self.cap_job_slot = np.ceil(self.gpus * slot / UNIT).astype(np.int64)  # rounded up
        self.cap_slot = [int(math.ceil(g * slot / UNIT)) for g in pool_gpus]

    def windows(self, waits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each job's first slot and one past its last, for these wait bounds (outwards, plus
        one slot of slack)."""
        first = np.floor(self.submit / self.slot).astype(np.int64)
        last = np.ceil((self.submit + waits + self.run) / self.slot).astype(np.int64) + 1
        return first, last

    def feasible(self, waits: np.ndarray) -> bool:
        """Whether every job can end by ``submit + waits + run`` (a maximum flow)."""
        first, last = self.windows(waits)
        n, n_slots = len(self.jobs), int(last.max())
        n_pools = len(self.pool_gpus)
        src, job0 = 0, 1
        slot0 = job0 + n
        sink = slot0 + n_pools * n_slots
        lens = last - first
        rows = [np.zeros(n, dtype=np.int64), np.repeat(np.arange(n) + job0, lens)]
        cols = [np.arange(n) + job0]
        caps = [self.work, np.repeat(self.cap_job_slot, lens)]
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        cols.append(slot0 + np.repeat(self.pool, lens) * n_slots + np.repeat(first, lens) + offs)
        slot_ids = np.arange(n_pools * n_slots)
        rows.append(slot0 + slot_ids)
        cols.append(np.full(len(slot_ids), sink))
        caps.append(np.repeat(np.array(self.cap_slot, dtype=np.int64), n_slots))
        r, c, d = np.concatenate(rows), np.concatenate(cols), np.concatenate(caps)
        assert d.max() < 2**31, "capacities overflow int32: use a shorter --slot"
        g = csr_matrix((d.astype(np.int32), (r, c)), shape=(sink + 1, sink + 1))
        flow = maximum_flow(g, src, sink, method="dinic").flow_value
        return int(flow) >= int(self.work.sum())

    def smallest(self, make: Any, lo: float, hi: float) -> float:
        """The smallest ``w`` in [lo, hi] (to a tenth of a slot) for which ``make(w)`` is
        feasible, by bisection (feasibility only grows with ``w``); ``hi`` if none below."""
        if not self.feasible(make(hi)):
            return math.inf
        while hi - lo > self.slot / 10:
            mid = (lo + hi) / 2
            if self.feasible(make(mid)):
                hi = mid
            else:
                lo = mid
        return hi

    def exempt_lp(self, w_all: float, w_high: float, exempt: int) -> tuple[bool, float]:
        """Every job within ``w_all``, high jobs within ``w_high`` except at most ``exempt`` of
        them (fractionally): a linear program. Returns (feasible, the least total exemption a
        solution needs), the second by minimising the exemptions instead of capping them."""
        waits = np.full(len(self.jobs), w_all)
        first, last = self.windows(waits)
        _, high_last = self.windows(np.full(len(self.jobs), w_high))
        n, n_slots = len(self.jobs), int(last.max())
        lens = last - first
        m = int(lens.sum())
        job_of = np.repeat(np.arange(n), lens)
        offs = np.arange(m) - np.repeat(np.cumsum(lens) - lens, lens)
        slot_of = np.repeat(first, lens) + offs
        col_slot = np.repeat(self.pool, lens) * n_slots + slot_of
        highs = np.flatnonzero(self.high)
        z_of = -np.ones(n, dtype=np.int64)
        z_of[highs] = np.arange(len(highs))
        late = self.high[job_of] & (slot_of >= high_last[job_of])
        nz = len(highs)
        # variables: x (one per job-slot edge, 0..cap), then z (one per high job, 0..1)
        # rows: each job's GPU-time (==), each slot's capacity (<=), each high job's late
        # GPU-time <= its work * z
        a_eq = coo_matrix((np.ones(m), (job_of, np.arange(m))), shape=(n, m + nz))
        b_eq = self.work.astype(float)
        slot_rows = coo_matrix((np.ones(m), (col_slot, np.arange(m))), shape=(len(self.pool_gpus) * n_slots, m + nz))
        b_slot = np.repeat(np.array(self.cap_slot, dtype=float), n_slots)
        li = np.flatnonzero(late)
        late_rows = coo_matrix(
            (np.concatenate([np.ones(len(li)), -self.work[highs].astype(float)]),
             (np.concatenate([z_of[job_of[li]], np.arange(nz)]), np.concatenate([li, m + np.arange(nz)]))),
            shape=(nz, m + nz))
        a_ub = vstack([slot_rows, late_rows]).tocsr()
        b_ub = np.concatenate([b_slot, np.zeros(nz)])
        bounds = np.zeros((m + nz, 2))
        bounds[:m, 1] = np.repeat(self.cap_job_slot, lens)
        bounds[m:, 1] = 1.0
        cost = np.concatenate([np.zeros(m), np.ones(nz)])  # least total exemption
        res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq.tocsr(), b_eq=b_eq, bounds=bounds, method="highs")
        if res.status == 2:  # infeasible even with every high job exempt
            return False, math.inf
        least = float(res.fun)
        return least <= exempt + 1e-6, least


def fifo_figures(args: argparse.Namespace) -> dict[str, Any]:
    """FIFO's simulator JSON for the same trace and flags (``--fifo``, else run it)."""
    if args.fifo:
        return json.loads(Path(args.fifo).read_text())
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "fifo.json"
        cmd = [sys.executable, "-m", "gpuqueue.simulate", args.trace, "--cluster", args.cluster,
               "--policy", "fifo", "--time-scale", str(args.time_scale), "--json", str(out)]
        if args.config:
            cmd += ["--config", args.config]
        subprocess.run(cmd, check=True, cwd=ROOT / "backend", stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--config")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--fifo", help="FIFO's JSON from gpuqueue simulate for this trace and flags")
    ap.add_argument("--slot", type=float, default=1800.0, help="slot length, seconds")
    ap.add_argument("--no-lp", action="store_true", help="skip the linear program (the p99 exemption)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    t = time.perf_counter()
    jobs, pool_gpus = load_jobs(a.trace, a.cluster, a.config, a.time_scale)
    fifo = fifo_figures(a)
    rel = Relaxation(jobs, pool_gpus, a.slot)
    n = len(jobs)
    fifo_max = float(fifo["max_wait_s"])
    fifo_high_p99 = float(fifo["wait_by_priority"]["high"]["p99"])
    n_high = int(rel.high.sum())
    exempt = n_high - math.ceil(0.99 * n_high)  # nearest-rank p99: this many may wait longer
    w_high = 0.2 * fifo_high_p99
    out: dict[str, Any] = {"trace": a.trace, "jobs": n, "high_jobs": n_high, "slot_s": a.slot,
                           "fifo_max_wait_s": fifo_max, "fifo_high_p99_s": fifo_high_p99}
    out["max_wait_lb_s"] = round(rel.smallest(lambda w: np.full(n, w), 0.0, fifo_max + a.slot), 1)
    out["max_wait_lb_vs_fifo"] = round(out["max_wait_lb_s"] / fifo_max, 3) if fifo_max else None
    cap = np.full(n, fifo_max)
    out["high_wait_lb_all_s"] = round(rel.smallest(lambda w: np.where(rel.high, np.minimum(w, fifo_max), cap),
                                                   0.0, fifo_max), 1)
    all_high = rel.feasible(np.where(rel.high, min(w_high, fifo_max), cap))
    out["goal_high_wait_s"] = round(w_high, 1)
    out["feasible_every_high_within_goal"] = all_high
    if all_high:
        out["high_p99_feasible"] = True
    elif not a.no_lp:
        ok, least = rel.exempt_lp(fifo_max, w_high, exempt)
        out["high_p99_feasible"] = ok
        out["high_jobs_over_goal_lb"] = round(least, 1)
        out["high_jobs_p99_allows"] = exempt
    out["seconds"] = round(time.perf_counter() - t, 1)
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
