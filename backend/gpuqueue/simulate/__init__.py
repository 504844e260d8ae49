"""Trace-driven simulator: replays a job trace through the very scheduler the service uses.

``gpuqueue simulate TRACE.csv --cluster prod=64x8[,dev=2x1] [--config FILE]
[--policy gpuqueue|fifo] [--json OUT] [--plot OUT.png]``

Event-driven: submissions and finishes are events; the scheduler is ticked at every event time
and at its own ``next_wakeup``. The scheduler never sees durations: the simulator alone knows
when a job ends. Metric definitions are in docs/scheduling.md.
"""

from .command import cli_main
from .engine import Simulation
from .report import SIZES, plot
from .tallies import FitTracker, GroupFill, UserAcct, hierarchical_fill, water_fill, whole_weight
from .trace import SimJob, TraceError, build_config, parse_cluster, read_trace

__all__ = ["SIZES", "FitTracker", "GroupFill", "SimJob", "Simulation", "TraceError", "UserAcct",
           "build_config", "cli_main", "hierarchical_fill", "parse_cluster", "plot", "read_trace",
           "water_fill", "whole_weight"]
