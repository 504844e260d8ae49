"""What one user's finished jobs may keep in the queue's store, which every user shares (one
Redis in cluster mode): their stored results (``max_results_mb``) and their finished records
(``max_finished``). The arithmetic is here, pure; the stores carry it out."""

from __future__ import annotations

from typing import Optional

MB = 1_000_000


def results_to_drop(kept: dict[str, tuple[int, float]], new_bytes: int, limit_mb: float) -> Optional[list[str]]:
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
