"""``gpuqueue simulate``: the command line."""

from __future__ import annotations

import argparse
import json
import sys

from ..queue.config import load_config
from ..queue.errors import GPUQueueError
from .engine import Simulation
from .report import plot
from .trace import TraceError, build_config, parse_cluster, read_trace


def cli_main(argv: list[str]) -> int:
    """``gpuqueue simulate``: returns the exit code (2 for bad input, with one line on stderr)."""
    ap = argparse.ArgumentParser(prog="gpuqueue simulate", description="Trace-driven simulator: replays a job trace through the very scheduler the service uses.")
    ap.add_argument("trace", help="CSV: job_id,user,submit_time,duration,gpus[,priority,pool,preemptible,time_limit]")
    ap.add_argument("--cluster", required=True, help="pools, e.g. prod=64x8,dev=2x1")
    ap.add_argument("--config", help="TOML config: pool rules, users, policy knobs")
    ap.add_argument("--policy", default="gpuqueue", choices=["gpuqueue", "fifo"])
    ap.add_argument("--json", help="write the metrics here")
    ap.add_argument("--plot", help="write a PNG plot here")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="divide submit times by this (compress arrivals to add load)")
    ap.add_argument("--preempt", choices=["resume", "restart"], default="resume",
                    help="preempted jobs resume from their grace-period checkpoint, or restart")
    args = ap.parse_args(argv)
    try:
        if args.time_scale <= 0:
            raise TraceError("--time-scale must be positive")
        base = load_config(args.config) if args.config else None
        config = build_config(parse_cluster(args.cluster), base)
        jobs = read_trace(args.trace, config, args.time_scale)
    except (TraceError, GPUQueueError) as e:
        print(f"gpuqueue simulate: error: {e}", file=sys.stderr)
        return 2
    sim = Simulation(config, args.policy, jobs, resume_on_preempt=args.preempt == "resume")
    result = sim.run()
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.plot:
        plot(sim, args.plot)
    return 0
