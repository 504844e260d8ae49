"""A trace for the simulator: its CSV rows as jobs, the ``--cluster`` spec and the pools it makes."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..queue.config import PoolConfig, QueueConfig, UserLimits
from ..queue.states import Priority

REQUIRED = ("job_id", "user", "submit_time", "duration", "gpus")
OPTIONAL = ("priority", "pool", "preemptible", "time_limit")
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": None}


class TraceError(ValueError):
    """A bad trace row or argument: the message names the line and the fix."""


@dataclass
class SimJob:
    """One trace row plus what happened to it."""

    id: str
    user: str
    submit: float
    duration: float
    gpus: int
    priority: Priority
    pool: str
    preemptible: bool
    time_limit: Optional[float]
    remaining: float = 0.0
    run_s: float = 0.0
    start: Optional[float] = None  # current attempt's start
    attempt: int = 0
    end: Optional[float] = None
    outcome: str = ""
    rejected: str = ""
    preemptions: int = 0
    stopping: bool = False
    placement: Optional[dict[str, tuple[int, ...]]] = None


MAX_SUBMIT = 1e12
"""Latest submit time, in seconds (30,000 years: Unix times fit; float times stay exact to
a millisecond, so every later event is a later time)."""
MAX_DURATION = 10 * 365 * 86400.0
"""Longest run time or time limit of a trace's job: a job's usage is charged each
``charge_ahead`` while it runs, which a near-endless job would do for ever."""
MAX_NODES = 100_000
"""Nodes a simulated pool may have (each is a structure of the policy's and the simulator's)."""
MAX_NODE_GPUS = 4096
"""GPUs a simulated node may have: the most a job may ask for."""


def parse_cluster(spec: str) -> dict[str, tuple[int, int]]:
    """``prod=64x8,dev=2x1`` -> {pool: (nodes, gpus per node)}."""
    out: dict[str, tuple[int, int]] = {}
    for part in spec.split(","):
        part = part.strip()
        try:
            pool, size = part.split("=")
            n, g = size.lower().split("x")
            out[pool.strip()] = (int(n), int(g))
        except ValueError:
            raise TraceError(f"--cluster {spec!r}: write POOL=NODESxGPUS[,POOL=NODESxGPUS], e.g. prod=64x8,dev=2x1") from None
        nodes, gpus = out[pool.strip()]
        if nodes < 1 or gpus < 1 or not pool.strip():
            raise TraceError(f"--cluster {part!r}: need at least one node with at least one GPU")
        if nodes > MAX_NODES or gpus > MAX_NODE_GPUS:
            raise TraceError(f"--cluster {part!r}: at most {MAX_NODES:,} nodes a pool and "
                             f"{MAX_NODE_GPUS:,} GPUs a node")
    return out


def build_config(cluster: dict[str, tuple[int, int]], base: Optional[QueueConfig]) -> QueueConfig:
    """Pools sized by ``--cluster``; their rules from ``base``'s pool of the same name, else the
    product defaults (``dev``: preemptible, 1 h max; others: not preemptible, no max)."""
    pools: dict[str, PoolConfig] = {}
    for name, (n, g) in cluster.items():
        nodes = {f"{name}-{i:04d}": g for i in range(n)}
        if base is not None and name in base.pools:
            pools[name] = base.pools[name].model_copy(update={"nodes": nodes})
        elif name == "dev":
            pools[name] = PoolConfig(nodes=nodes, preemptible=True, max_runtime=3600.0, max_queued=10**9)
        else:
            pools[name] = PoolConfig(nodes=nodes, max_queued=10**9)
    if base is None:
        return QueueConfig(pools=pools, defaults=UserLimits(max_queued=10**9))
    return base.model_copy(update={"pools": pools})


def read_trace(path: str, config: QueueConfig, time_scale: float = 1.0) -> list[SimJob]:
    """Parse the CSV; raises TraceError naming the line of the first bad row."""
    try:
        f = open(path, newline="")
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror}") from None
    jobs: list[SimJob] = []
    seen: set[str] = set()
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TraceError(f"{path}: empty file; the header needs {','.join(REQUIRED)}") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise TraceError(f"{path} line 1: header lacks {', '.join(missing)} (need {','.join(REQUIRED)}; optional {','.join(OPTIONAL)})")
        col = {c: i for i, c in enumerate(header)}
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            try:
                jobs.append(_row(row, col, config, time_scale, seen))
            except TraceError as e:
                raise TraceError(f"{path} line {line}: {e}") from None
    jobs.sort(key=lambda j: j.submit)
    return jobs


def _row(row: list[str], col: dict[str, int], config: QueueConfig, scale: float, seen: set[str]) -> SimJob:
    """One trace row as a SimJob; raises TraceError saying what is wrong with it."""
    if len(row) != len(col):
        raise TraceError(f"{len(row)} fields, the header has {len(col)}")
    cell = {c: row[i].strip() for c, i in col.items()}  # by column name; get(c, ""): a column not there
    get = cell.get
    jid, user = get("job_id", ""), get("user", "")
    if not jid or not user:
        raise TraceError("job_id and user must not be empty")
    if jid in seen:
        raise TraceError(f"job_id {jid!r} appears twice")
    seen.add(jid)
    submit, duration = _number(cell, "submit_time"), _number(cell, "duration")
    gpus = _number(cell, "gpus", int)
    if submit < 0:
        raise TraceError(f"submit_time {submit} is negative")
    if submit / scale > MAX_SUBMIT:
        raise TraceError(f"submit_time {submit:g} is past {MAX_SUBMIT:g} s"
                         + (" once divided by --time-scale" if scale != 1 else ""))
    if duration <= 0:
        raise TraceError(f"duration {duration} must be positive (seconds)")
    if duration > MAX_DURATION:
        raise TraceError(f"duration {duration:g} is over ten years ({MAX_DURATION:g} s)")
    if gpus < 0:
        raise TraceError(f"gpus {gpus} is negative")
    pr = get("priority", "").lower() or "medium"
    if pr not in _PRIORITY:
        raise TraceError(f"priority {pr!r} is not high, medium or low")
    pool = get("pool", "") or config.default_pool
    if pool not in config.pools:
        raise TraceError(f"pool {pool!r} is not in the cluster ({', '.join(config.pools)})")
    pre = get("preemptible", "").lower()
    if pre not in _BOOL:
        raise TraceError(f"preemptible {pre!r} is not true or false")
    tl = _number(cell, "time_limit") if get("time_limit") else None
    if tl is not None and tl <= 0:
        raise TraceError(f"time_limit {tl} must be positive (seconds)")
    if tl is not None and tl > MAX_DURATION:
        raise TraceError(f"time_limit {tl:g} is over ten years ({MAX_DURATION:g} s)")
    return SimJob(jid, user, submit / scale, duration, gpus, _PRIORITY[pr], pool,
                  bool(_BOOL[pre]), tl, remaining=duration)


_PRIORITY = {p: Priority(p) for p in ("high", "medium", "low")}
"""The trace's priority names (lower case), as Priority."""


def _number(cell: dict[str, str], c: str, kind: type = float) -> Any:
    """Column ``c`` of a row as a number of this kind; a TraceError if it is not a finite one."""
    v = cell.get(c, "")
    try:
        x = kind(v)
    except ValueError:
        raise TraceError(f"{c} {v!r} is not a {'whole ' if kind is int else ''}number") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise TraceError(f"{c} {v!r} is not finite")
    return x
