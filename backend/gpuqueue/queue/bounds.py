"""What one user's finished jobs may keep in the queue's store, which every user shares (one
Redis in cluster mode): their stored results (``max_results_mb``), their output (``max_logs_mb``)
and their finished records (``max_finished``). The arithmetic is here, pure; the stores carry it
out.

Both shells keep, per user and per bound, the *kept set*: the finished jobs whose results (or
output) are still stored, with their sizes, in the order they ended. When a job ends, its bytes
join its owner's set and :func:`keep_within` says what goes: the oldest first, until the total
fits the limit, or the new one itself when it alone is over the limit. A store only has to give
the set's running total and walk it from its oldest end, so a job's end costs the few oldest
entries it drops, not a read of the whole set (a user may keep thousands of finished jobs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Optional, Sequence

from .models import Event, JobRecord

MB = 1_000_000


def oldest_to_drop_within(total: int, oldest: Iterable[tuple[str, int]], new_bytes: int,
                          limit_mb: float) -> Optional[list[tuple[str, int]]]:
    """Which kept entries go so that a new one of ``new_bytes`` fits ``limit_mb``: ``total`` is
    what the kept set holds now (without the new one); ``oldest`` walks it oldest first as (id,
    bytes), and is read only as far as needed. Returns the (id, bytes) that go, in that order;
    None when the new one alone is over the limit (it is not kept, and nothing else goes)."""
    limit = limit_mb * MB
    if new_bytes > limit:
        return None
    total += new_bytes
    drop: list[tuple[str, int]] = []
    if total <= limit:
        return drop
    for job_id, nbytes in oldest:
        drop.append((job_id, nbytes))
        total -= nbytes
        if total <= limit:
            break
    return drop


def oldest_to_drop(kept: dict[str, tuple[int, float]], new_bytes: int, limit_mb: float) -> Optional[list[str]]:
    """:func:`oldest_to_drop_within` over a whole kept set given at once: ``kept`` is id ->
    (bytes, stored at); ties in time go by id. Returns the ids that go, or None."""
    order = sorted(kept.items(), key=lambda kv: (kv[1][1], kv[0]))
    drop = oldest_to_drop_within(sum(b for b, _ in kept.values()), ((i, b) for i, (b, _) in order),
                                 new_bytes, limit_mb)
    return None if drop is None else [i for i, _ in drop]


def dropped_for_newer(nbytes: int, limit_mb: float) -> str:
    """Why an older job's results are gone (``JobRecord.result_dropped``)."""
    return (f"its results ({nbytes / MB:.1f} MB) were dropped to make room for newer ones: your stored "
            f"results are kept within {limit_mb:g} MB (max_results_mb in the queue config), newest first; fetch "
            f"results soon after a job ends, delete finished jobs you no longer need (`gpuqueue rm JOB_ID`) "
            f"to make room, or save big objects to shared storage and return their path")


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
            f"output is kept first; its state, errors and checkpoints are still here. Delete finished jobs "
            f"you no longer need (`gpuqueue rm JOB_ID`) to make room, and write what you must keep to a "
            f"file in shared storage")


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


EVENTS_PAGE = 10_000  # events a reader gets per request (the stores' read_events limit)
DROPPED_SCAN = EVENTS_PAGE  # stored records one page of a dropped job's events reads at most: what a page of any job costs
_SCAN_BATCH = 2000


@dataclass
class DroppedPage:
    """A page of a dropped job's events (:func:`dropped_page`): ``next_after`` is where the next
    page starts when this one stopped before the end of the stream (the REST answer's ``next``),
    else None."""

    events: list[Event]
    next_after: Optional[int] = None


def dropped_page(read: Callable[[int, int], Sequence[Event]], job: JobRecord, after: int,
                 limit: int = EVENTS_PAGE, scan: int = DROPPED_SCAN) -> DroppedPage:
    """A page of what a reader is given of ``job``, whose logs were dropped, after ``after``;
    ``read(after, n)`` is the store's ``read_events`` of the job. Its output records may still be
    stored (they are deleted a chunk at a time, in the background): the page walks past them
    for up to ``limit`` visible events, but reads at most ``scan`` stored records, so a request
    costs the same few milliseconds however many are left (a job's output may be millions of
    records: a walk to its end held a shared API server for seconds per request). A page that
    stopped before the end says where the next starts (``next_after``); readers follow it
    (``gpuqueue.rest.client.Client.events``) even when it is short."""
    page: list[Event] = []
    scanned = 0
    from_start = after == 0
    while scanned < scan:
        batch = read(after, min(_SCAN_BATCH, scan - scanned))
        if not batch:
            return DroppedPage(page)
        scanned += len(batch)
        for ev in visible_events(job, batch, from_start):
            page.append(ev)
            if len(page) >= limit:
                return DroppedPage(page, ev.seq)
        from_start = False
        after = batch[-1].seq
    return DroppedPage(page, after)


async def dropped_page_of(events: AsyncIterator[Optional[Event]], limit: int = EVENTS_PAGE) -> list[Event]:
    """:func:`dropped_page` where the service holds no store of its own (the Jupyter server's
    relay to a cluster's API): up to ``limit`` visible events taken from ``events`` (its
    ``follow`` of the job, a finished job's stream walked to its end)."""
    page: list[Event] = []
    try:
        async for ev in events:
            if ev is None:  # a keep-alive: the job is not finished after all, the page ends here
                break
            page.append(ev)
            if len(page) >= limit:
                break
    finally:
        close: Any = getattr(events, "aclose", None)
        if close is not None:
            await close()
    return page


@dataclass(frozen=True)
class Bound:
    """One per-user bound on what finished jobs keep: its knob and what a record says when its
    bytes go (made room for newer ones) or are not kept at all (over the whole limit)."""

    knob: str  # the config knob, e.g. "max_results_mb"
    what: str  # what is kept, for the server's log: "results" / "output"
    dropped_for_newer: Callable[[int, float], str]
    too_big_to_keep: Callable[[int, float], str]


RESULTS = Bound("max_results_mb", "results", dropped_for_newer, too_big_to_keep)
LOGS = Bound("max_logs_mb", "output", logs_dropped_for_newer, logs_too_big_to_keep)


@dataclass
class Verdict:
    """What :func:`keep_within` decided for a job that ended: whether its own bytes are kept
    (else ``too_big`` is what its record says) and which older jobs' bytes go, each with what
    its record says."""

    kept: bool
    too_big: Optional[str] = None
    drop: list[tuple[str, int, str]] = field(default_factory=list)  # (job id, bytes, its record's message)

    def log_line(self, bound: Bound, owner: str, limit_mb: float) -> Optional[str]:
        """The server's log line for the older jobs dropped, if any."""
        if not self.drop:
            return None
        return (f"user {owner}: dropped the {bound.what} of {len(self.drop)} older jobs to keep within "
                f"{bound.knob} = {limit_mb:g}")


def keep_within(bound: Bound, total: int, oldest: Iterable[tuple[str, int]], new_bytes: int,
                limit_mb: float) -> Verdict:
    """Add ``new_bytes`` to a user's kept set for ``bound`` (``total`` bytes now, walked oldest
    first by ``oldest``, without the new job) and keep it within ``limit_mb``: see
    :func:`oldest_to_drop_within`."""
    drop = oldest_to_drop_within(total, oldest, new_bytes, limit_mb)
    if drop is None:
        return Verdict(kept=False, too_big=bound.too_big_to_keep(new_bytes, limit_mb))
    return Verdict(kept=True, drop=[(i, b, bound.dropped_for_newer(b, limit_mb)) for i, b in drop])


def inputs_over_limit(held: int, nbytes: int, limit_mb: float) -> str:
    """Why a cell job is refused at submit (HTTP 400): its inputs (``nbytes``) with those the
    owner's unfinished jobs hold (``held``) would pass ``max_inputs_mb``."""
    return (f"the inputs of your unfinished cell jobs take {held / MB:.1f} MB in the queue's store; "
            f"this cell's ({nbytes / MB:.1f} MB) would pass your limit of "
            f"{limit_mb:g} MB (max_inputs_mb in the queue config): wait for some to end or "
            f"cancel some, or pass big data as a file path on shared storage")
