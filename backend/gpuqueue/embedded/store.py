"""The embedded mode's job store: one SQLite file in WAL mode.

The store, not a process, owns a job's state. It holds the job records, each job's event
stream (append-only, ``seq`` from 1 with no gaps), how far each attempt's ``events.jsonl`` has
been copied in (so a restarted server goes on exactly where the last one stopped), and small
key/value metadata (e.g. the scheduler's fair-share state).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional  # List: in the class, ``list`` is a method

from ..queue.models import Event, JobRecord
from ..queue.states import JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS tails (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_TERMINAL = ", ".join(f"'{s.value}'" for s in JobState if s.is_terminal)
_FINISHED = f"state IN ({_TERMINAL})"
# Partial indexes, by owner and end, of the finished jobs (``max_finished``) and of those whose
# results / output are kept (``max_results_mb`` / ``max_logs_mb``): a job's end reads its
# owner's count, total and oldest from them, not from every record the owner has (10,000
# finished jobs: some 60 ms -> 2). A query uses one only if its WHERE holds the same terms.
_KEPT = {
    "result": (f"state = '{JobState.SUCCEEDED.value}' AND json_extract(record, '$.result_bytes') > 0"
               " AND json_extract(record, '$.result_dropped') IS NULL"),
    "log": (f"{_FINISHED} AND json_extract(record, '$.log_bytes') > 0"
            " AND json_extract(record, '$.logs_dropped') IS NULL"),
}
_INDEXES = (f"CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(owner, json_extract(record, '$.updated_at'), id)"
            f" WHERE {_FINISHED};\n") + "".join(
    f"CREATE INDEX IF NOT EXISTS jobs_kept_{what} ON jobs(owner, json_extract(record, '$.updated_at'), id,"
    f" json_extract(record, '$.{what}_bytes')) WHERE {cond};\n" for what, cond in _KEPT.items())


class SqliteStore:
    """Job records and event streams in one SQLite file. Use from one thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA + _INDEXES)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    # -- jobs -----------------------------------------------------------------------------
    def put(self, job: JobRecord, touch: bool = True) -> None:
        """Insert or replace a job record (``touch``: its ``updated_at`` is now)."""
        if touch:
            job.updated_at = time.time()
        self.db.execute(
            "INSERT OR REPLACE INTO jobs (id, owner, state, created_at, record) VALUES (?,?,?,?,?)",
            (job.id, job.owner, job.state.value, job.created_at, job.model_dump_json(exclude={"pending"})),
        )

    def get(self, job_id: str) -> Optional[JobRecord]:
        """The job, or None."""
        row = self.db.execute("SELECT record FROM jobs WHERE id=?", (job_id,)).fetchone()
        return JobRecord.model_validate_json(row[0]) if row else None

    def list(
        self,
        owner: Optional[str] = None,
        states: Optional[Iterable[JobState]] = None,
        limit: int = 1000,
    ) -> List[JobRecord]:
        """Jobs, newest first, optionally of one owner and in some states."""
        sql = "SELECT record FROM jobs WHERE 1=1"
        args: List[Any] = []
        if owner is not None:
            sql += " AND owner=?"
            args.append(owner)
        if states is not None:
            st = [s.value for s in states]
            sql += f" AND state IN ({','.join('?' * len(st))})"
            args += st
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [JobRecord.model_validate_json(r[0]) for r in self.db.execute(sql, args)]

    def finished_before(self, cutoff: float, limit: int = 500) -> List[str]:
        """Ids of finished jobs whose last change (their end) is before ``cutoff`` (epoch
        seconds), oldest first, at most ``limit``."""
        done = [s.value for s in JobState if s.is_terminal]
        rows = self.db.execute(
            f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(done))}) AND created_at < ?"
            " AND json_extract(record, '$.updated_at') < ? ORDER BY created_at LIMIT ?",
            (*done, cutoff, cutoff, limit),
        )
        return [r[0] for r in rows]

    def kept_results(self, owner: str, without: str = "") -> tuple[int, Iterator[tuple[str, int]]]:
        """The owner's succeeded jobs whose results are kept (``max_results_mb``), but
        ``without``: their bytes, and (id, bytes) oldest end first, read a page at a time as far
        as iterated."""
        return self._kept(owner, "result", without)

    def kept_logs(self, owner: str, without: str = "") -> tuple[int, Iterator[tuple[str, int]]]:
        """The owner's finished jobs whose output is kept (``max_logs_mb``), but ``without``:
        their bytes, and (id, bytes) oldest end first, read a page at a time as far as iterated."""
        return self._kept(owner, "log", without)

    def _kept(self, owner: str, what: str, without: str) -> tuple[int, Iterator[tuple[str, int]]]:
        # the partial index jobs_kept_<what> (_KEPT) holds exactly these rows, in this order
        where = f" FROM jobs WHERE owner=? AND id != ? AND {_KEPT[what]}"
        (total,) = self.db.execute(f"SELECT COALESCE(SUM(json_extract(record, '$.{what}_bytes')), 0)" + where,
                                   (owner, without)).fetchone()

        def oldest() -> Iterator[tuple[str, int]]:
            after: tuple[Any, str] = (-1.0, "")
            while True:
                rows = self.db.execute(
                    f"SELECT id, json_extract(record, '$.{what}_bytes'), json_extract(record, '$.updated_at')" + where
                    + " AND (json_extract(record, '$.updated_at'), id) > (?, ?)"
                    " ORDER BY json_extract(record, '$.updated_at'), id LIMIT 64", (owner, without, *after)).fetchall()
                yield from ((r[0], int(r[1])) for r in rows)
                if len(rows) < 64:
                    return
                after = (rows[-1][2], rows[-1][0])

        return int(total), oldest()

    def oldest_finished(self, owner: str, keep: int, limit: int = 500) -> List[str]:
        """Ids of the owner's finished jobs beyond the newest ``keep`` (by end), oldest first,
        at most ``limit``."""
        (n,) = self.db.execute(f"SELECT COUNT(*) FROM jobs WHERE owner=? AND {_FINISHED}", (owner,)).fetchone()
        if n <= keep:
            return []
        rows = self.db.execute(  # from the partial index jobs_finished
            f"SELECT id FROM jobs WHERE owner=? AND {_FINISHED} ORDER BY json_extract(record, '$.updated_at'), id LIMIT ?",
            (owner, min(n - keep, limit)),
        )
        return [r[0] for r in rows]

    def delete(self, job_ids: List[str]) -> None:
        """Forget jobs: their records, event streams and tail offsets, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for table, key in (("jobs", "id"), ("events", "job_id"), ("tails", "job_id")):
                self.db.executemany(f"DELETE FROM {table} WHERE {key}=?", [(j,) for j in job_ids])

    # -- events ---------------------------------------------------------------------------
    def append_events(
        self,
        job_id: str,
        events: List[tuple[float, str, dict[str, Any]]],
        tail: Optional[tuple[int, int]] = None,
    ) -> int:
        """Append (time, type, data) events and, in the same transaction, an attempt's
        ``events.jsonl`` offset. Returns the last seq."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id=?", (job_id,)
            ).fetchone()
            seq = row[0]
            rows = []
            for t, type_, data in events:
                seq += 1
                rows.append((job_id, seq, t, type_, json.dumps(data, default=str)))
            self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?)", rows)
            if tail is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO tails VALUES (?,?,?)", (job_id, tail[0], tail[1])
                )
        return seq

    def delete_events_chunk(self, job_id: str, types: Iterable[str], limit: int) -> int:
        """Delete up to ``limit`` of the job's events of ``types`` (the rest keep their seq); how
        many went. A job's output may be a million rows: deleted a chunk at a time, it never
        holds the server's event loop for long."""
        kinds = sorted(types)
        cur = self.db.execute(
            f"DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE job_id=? AND type IN"
            f" ({','.join('?' * len(kinds))}) LIMIT ?)", (job_id, *kinds, limit))
        return int(cur.rowcount)

    def logs_left_to_drop(self, types: Iterable[str]) -> List[str]:
        """Jobs whose logs were dropped (``logs_dropped``) and whose stream still holds events of
        ``types`` (the server stopped before it had deleted them all)."""
        kinds = sorted(types)
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE json_extract(record, '$.logs_dropped') IS NOT NULL AND EXISTS"
            f" (SELECT 1 FROM events WHERE job_id=jobs.id AND type IN ({','.join('?' * len(kinds))}))", kinds)
        return [r[0] for r in rows]

    def read_events(self, job_id: str, after: int = 0, limit: int = 10_000) -> List[Event]:
        """Events with seq > ``after``, in order."""
        rows = self.db.execute(
            "SELECT seq, time, type, data FROM events WHERE job_id=? AND seq>? ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        )
        return [Event(seq=s, time=t, type=ty, data=json.loads(d)) for s, t, ty, d in rows]

    def last_seq(self, job_id: str) -> int:
        """The newest event's seq (0 when none)."""
        row = self.db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id=?", (job_id,)
        ).fetchone()
        return int(row[0])

    def tail_offset(self, job_id: str, attempt: int) -> int:
        """How many bytes of the attempt's events.jsonl are already in the stream."""
        row = self.db.execute(
            "SELECT offset FROM tails WHERE job_id=? AND attempt=?", (job_id, attempt)
        ).fetchone()
        return int(row[0]) if row else 0

    # -- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str) -> Optional[Any]:
        """A stored JSON value, or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value)))
