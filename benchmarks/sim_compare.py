"""The gpuqueue policy against strict FIFO on the traces it is judged on: the goal table of
issue 13 for each.

    python benchmarks/sim_compare.py                 # the suite: openb and the generated traces
    python benchmarks/sim_compare.py --jobs 6000     # the generated ones shortened
    python benchmarks/sim_compare.py --seeds 1,2,3   # each generated shape with several seeds
    python benchmarks/sim_compare.py TRACE --cluster prod=64x8 [--time-scale F] [--config FILE]

The suite is openb (the Alibaba 2023 trace in ../shared/traces, arrivals x8 on 16 nodes of 8
GPUs) and two traces ``benchmarks/make_trace.py`` writes (seed 1, 64 nodes of 8 GPUs):
``whole-node`` (3 heavy users with 8- and 16-GPU jobs, 8 light ones with 1-GPU jobs, load 1.0,
2 weeks) and ``bursty`` (4 tenants as groups, sweeps of jobs, load 1.0, 2 weeks); with
``--seeds`` each shape is generated once per seed (the regression tests run seeds 1 and 2: a
result that holds on one draw of a shape only is not a result). Each trace
runs ``python -m gpuqueue.simulate`` once per policy (as a user would; one process per CPU at
once, the longest first) and prints
a Markdown table: the figures the scheduler is judged on with the ratio and the goal, then the
longest wait by job size, then the users that got the least and the most of their fair share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_trace import make_trace  # noqa: E402

SIZES = ("1", "2", "4", "8", "16+")


def find_openb() -> Optional[Path]:
    """The shared openb trace: $GPUQUEUE_TRACES, or shared/traces beside this checkout or above."""
    places = [Path(os.environ["GPUQUEUE_TRACES"])] if os.environ.get("GPUQUEUE_TRACES") else []
    places += [p / "shared" / "traces" for p in ROOT.parents]
    return next((p / "openb.csv" for p in places if (p / "openb.csv").exists()), None)


def suite(folder: Path, jobs: Optional[int] = None, seeds: tuple[int, ...] = (1,)) -> list[dict[str, Any]]:
    """The traces of the suite, generated into ``folder`` (``jobs``: shorter, same shapes and
    load over a proportionally shorter span; ``seeds``: each generated shape once per seed).
    Names: ``openb``, ``whole-node (24000 jobs)``, ``whole-node seed 2 (24000 jobs)``..."""
    out: list[dict[str, Any]] = []
    openb = find_openb()
    if openb is not None:
        out.append({"name": "openb", "trace": str(openb), "cluster": "prod=16x8", "time_scale": 8.0, "config": None})
    n = jobs or 24000
    days = 14.0 * n / 24000
    for seed in seeds:
        for shape in ("whole-node", "bursty"):
            tag = "" if seed == 1 else f"-seed{seed}"
            path = folder / f"{shape}-{n}{tag}.csv"
            if not path.exists():
                make_trace(str(path), shape, n, 50, 512, 1.0, seed, days)
            config = str(path.with_suffix(".toml")) if shape == "bursty" else None
            name = f"{shape} ({n} jobs)" if seed == 1 else f"{shape} seed {seed} ({n} jobs)"
            out.append({"name": name, "trace": str(path), "cluster": "prod=64x8", "time_scale": 1.0, "config": config})
    return out


def simulate_all(runs: list[dict[str, Any]], workers: Optional[int] = None) -> list[dict[str, dict[str, Any]]]:
    """Both policies on each run's trace; returns, per run in order, {policy: the simulator's
    JSON}. Runs ``python -m gpuqueue.simulate`` as a user would, ``workers`` processes at once
    (default: one per CPU), the biggest traces first, so that no core idles while one long
    simulation ends (each process is single-threaded; the figures are the same either way)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "backend"))
    width = max(1, workers or os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as d:
        todo: list[tuple[int, str, list[str], Path]] = []
        for i, r in enumerate(runs):
            for policy in ("gpuqueue", "fifo"):
                out = Path(d) / f"{i}-{policy}.json"
                cmd = [sys.executable, "-m", "gpuqueue.simulate", r["trace"], "--policy", policy,
                       "--cluster", r["cluster"], "--time-scale", str(r["time_scale"]), "--json", str(out)]
                if r["config"]:
                    cmd += ["--config", r["config"]]
                todo.append((i, policy, cmd, out))
        # the fair-share policy costs more than FIFO; bigger traces cost more
        todo.sort(key=lambda t: (t[1] != "gpuqueue", -Path(runs[t[0]]["trace"]).stat().st_size))
        with ThreadPoolExecutor(width) as pool:  # each thread waits on one process
            done = list(pool.map(lambda t: subprocess.run(t[2], env=env, stderr=subprocess.PIPE, text=True), todo))
        for (i, policy, cmd, out), proc in zip(todo, done):
            if proc.returncode != 0:
                sys.exit(f"simulating {' '.join(cmd[3:5])} failed: {proc.stderr.strip()}")
        results: list[dict[str, dict[str, Any]]] = [{} for _ in runs]
        for i, policy, _, out in todo:
            results[i][policy] = json.loads(out.read_text())
        return results


def goals(g: dict[str, Any], f: dict[str, Any]) -> list[tuple[str, float, float, str, Optional[bool]]]:
    """(metric, gpuqueue, fifo, goal, met or None) rows of the issue's goal table."""
    hp = lambda d: d["wait_by_priority"]["high"]["p99"]  # noqa: E731
    rows = [
        ("avg JCT (s)", g["avg_jct_s"], f["avg_jct_s"], "≤ 0.6×", g["avg_jct_s"] <= 0.6 * f["avg_jct_s"]),
        ("max wait (s)", g["max_wait_s"], f["max_wait_s"], "≤ 1×", g["max_wait_s"] <= f["max_wait_s"]),
        ("high p99 wait (s)", hp(g), hp(f), "≤ 0.2×", hp(g) <= 0.2 * hp(f)),
        ("utilization while a queued job fits", g["utilization_while_fits"], f["utilization_while_fits"], "≥ 0.95",
         g["utilization_while_fits"] >= 0.95),
        (f"Jain among backlogged users ({g['jain_users']})", g["jain_fairness"], f["jain_fairness"], "≥ 0.95",
         g["jain_fairness"] >= 0.95),
    ]
    if "jain_fairness_groups" in g:
        rows.append((f"Jain among backlogged groups ({g['jain_groups']})", g["jain_fairness_groups"],
                     f["jain_fairness_groups"], "", None))
    rows += [
        ("utilization while anything is queued", g["utilization_while_queued"], f["utilization_while_queued"], "", None),
        ("preemptions", g["preemptions"], f["preemptions"], "", None),
        ("simulation wall time (s)", g["sim_wall_s"], f["sim_wall_s"], "", None),
    ]
    return rows


def table(name: str, args: str, res: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of one trace."""
    g, f = res["gpuqueue"], res["fifo"]
    lines = [f"**{name}**, {g['jobs']} jobs, `{args}`", "",
             "| metric | gpuqueue | fifo | ratio | goal |", "| --- | --- | --- | --- | --- |"]
    for metric, x, y, goal, ok in goals(g, f):
        ratio = f"{x / y:.3f}" if y and "×" in goal else ""
        fmt = (lambda v: f"{v:,.0f}") if max(abs(x), abs(y)) >= 100 else (lambda v: f"{v:.3f}")
        mark = "" if ok is None else (" ✔" if ok else " ✘")
        lines.append(f"| {metric} | {fmt(x)} | {fmt(y)} | {ratio} | {goal}{mark} |")
    lines += ["", "| max wait by job size (h) | " + " | ".join(f"{s} GPU{'s' if s != '1' else ''}" for s in SIZES) + " |",
              "| --- |" + " --- |" * len(SIZES)]
    for policy, d in (("gpuqueue", g), ("fifo", f)):
        cells = [f"{d['wait_by_gpus'][s]['max'] / 3600:.1f}" if d["wait_by_gpus"][s]["jobs"] else "-" for s in SIZES]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", "Users' received / entitled GPU-time while backlogged, least served first "
              "(the three at each end):", ""]
    lines += [f"* {policy}: {served(d['fairness_by_user'])}" for policy, d in (("gpuqueue", g), ("fifo", f))]
    return "\n".join(lines) + "\n"


def served(by_user: dict[str, dict[str, float]]) -> str:
    """``u1 0.37, u2 0.48, u3 0.51 … u9 1.54, u7 1.96`` from the simulator's ``fairness_by_user``
    (least served first)."""
    shares = [f"{u} {v['received_share']:.2f}" for u, v in by_user.items()]
    return ", ".join(shares) if len(shares) <= 6 else ", ".join(shares[:3]) + " … " + ", ".join(shares[-3:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", help="one trace instead of the suite")
    ap.add_argument("--cluster", help="with TRACE: pools, e.g. prod=64x8")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--config")
    ap.add_argument("--jobs", type=int, help="suite: jobs of each generated trace (default 24,000)")
    ap.add_argument("--out", help="suite: folder for the generated traces (default: a temporary one)")
    ap.add_argument("--seeds", default="1", help="suite: seeds of the generated traces, e.g. 1,2,3 (default 1)")
    a = ap.parse_args()
    if a.trace:
        if not a.cluster:
            sys.exit("give --cluster with a trace, e.g. --cluster prod=64x8")
        runs = [{"name": Path(a.trace).name, "trace": a.trace, "cluster": a.cluster, "time_scale": a.time_scale,
                 "config": a.config}]
    else:
        folder = Path(a.out or tempfile.mkdtemp(prefix="gpuqueue-traces-"))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            seeds = tuple(int(x) for x in a.seeds.split(","))
        except ValueError:
            sys.exit(f"--seeds takes whole numbers separated by commas, e.g. 1,2,3 (not {a.seeds!r})")
        runs = suite(folder, a.jobs, seeds)
    for r, res in zip(runs, simulate_all(runs)):
        args = f"--cluster {r['cluster']} --time-scale {r['time_scale']:g}" + (" --config (its groups)" if r["config"] else "")
        print(table(r["name"], args, res))


if __name__ == "__main__":
    main()
