"""What one user's finished jobs may keep in the queue's store, which every user shares (one
Redis in cluster mode): their stored results (``max_results_mb``), their output (``max_logs_mb``)
and their finished records (``max_finished``). The arithmetic is here, pure; the stores carry it
out."""

from __future__ import annotations

from typing import Iterable, Optional

from .models import Event, JobRecord

MB = 1_000_000


def oldest_to_drop(kept: dict[str, tuple[int, float]], new_bytes: int, limit_mb: float) -> Optional[list[str]]:
    """Which stored results go so that a new one of ``new_bytes`` fits the owner's
    ``limit_mb``: the oldest of ``kept`` (id -> (bytes, stored at)) first, until the total fits.
    None: the new one alone is over the limit, so it is not kept (and nothing else goes)."""
    limit = limit_mb * MB
    if new_bytes > limit:
        return None
    total = new_bytes + sum(b for b, _ in kept.values())
    drop = []
    for job_id, (nbytes, _) in sorted(kept.items(), key=lambda kv: (kv[1][1], kv[0])):
        if total <= limit:
            break
        drop.append(job_id)
        total -= nbytes
    return drop


def dropped_for_newer(nbytes: int, limit_mb: float) -> str:
    """Why an older job's results are gone (``JobRecord.result_dropped``)."""
    return (f"its results ({nbytes / MB:.1f} MB) were dropped to make room for newer ones: your stored "
            f"results are kept within {limit_mb:g} MB (max_results_mb in the queue config); fetch results "
            f"soon after a job ends, or save big objects to shared storage and return their path")


def too_big_to_keep(nbytes: int, limit_mb: float) -> str:
    """Why a job's own results were not kept at all."""
    return (f"its results ({nbytes / MB:.1f} MB) were not kept: they are over the {limit_mb:g} MB that all "
            f"your stored results may take (max_results_mb in the queue config); save big objects to "
            f"shared storage and return their path")


# What of a finished job's event stream goes when its logs are dropped (``max_logs_mb``): its
# output. Its ``state`` records (the attempts' ends, errors and tracebacks), ``warning`` and
# ``info`` records, ``checkpoint`` records (``%gpuqueue checkpoints``) and ``result`` record stay.
DROPPED_LOG_TYPES = frozenset({"log", "progress", "metrics"})


def logs_dropped_for_newer(nbytes: int, limit_mb: float) -> str:
    """Why an older job's logs are gone (``JobRecord.logs_dropped``)."""
    return (f"the logs of this job ({nbytes / MB:.1f} MB of output, progress and metrics) were dropped to keep "
            f"your stored output within {limit_mb:g} MB (max_logs_mb in the queue config): newer jobs' "
            f"output is kept first; its state, errors and checkpoints are still here. Write what you "
            f"must keep to a file in shared storage")


def logs_too_big_to_keep(nbytes: int, limit_mb: float) -> str:
    """Why a job's own logs were not kept at all."""
    return (f"the logs of this job ({nbytes / MB:.1f} MB of output, progress and metrics) were dropped as it "
            f"ended: they are over the {limit_mb:g} MB that all your stored output may take (max_logs_mb in "
            f"the queue config); its state, errors and checkpoints are still here. Write what you must "
            f"keep to a file in shared storage")


def logs_notice(job: JobRecord) -> Event:
    """The line that stands for a job's dropped logs where they are read (seq 0: before the
    first event; a reader reads it once, at the start)."""
    return Event(seq=0, time=job.updated_at, type="log",
                 data={"stream": "stderr", "line": f"[gpuqueue] {job.logs_dropped}"})


def visible_events(job: JobRecord, events: Iterable[Event], from_start: bool) -> list[Event]:
    """What a reader is given of ``events`` (read from ``job``'s stream): for a job whose logs
    were dropped, none of its output records (the store may still hold some until they are
    removed) and, read ``from_start``, the notice that says why there are none."""
    if not job.logs_dropped:
        return list(events)
    kept = [e for e in events if e.type not in DROPPED_LOG_TYPES]
    return ([logs_notice(job)] if from_start else []) + kept
