"""The embedded queue's SQLite store (``gpuqueue.embedded.store``), without HTTP: records, the
per-job event stream with its seqs, tail offsets written with their events, metadata, and
what survives reopening the file."""

from __future__ import annotations

from pathlib import Path

from gpuqueue.embedded.store import SqliteStore
from gpuqueue.queue.models import JobRecord, JobSpec
from gpuqueue.queue.states import LIVE_STATES, JobState


def record(job_id: str, owner: str, state: JobState, created: float) -> JobRecord:
    return JobRecord(id=job_id, owner=owner, spec=JobSpec(kind="command", command=["true"]), state=state,
                     created_at=created)


def test_jobs_list_newest_first_by_owner_and_state(tmp_path: Path) -> None:
    st = SqliteStore(tmp_path / "q.sqlite")
    st.put(record("j-1", "ana", JobState.QUEUED, 1.0))
    st.put(record("j-2", "ana", JobState.SUCCEEDED, 2.0))
    st.put(record("j-3", "bo", JobState.RUNNING, 3.0))
    assert [j.id for j in st.list()] == ["j-3", "j-2", "j-1"]
    assert [j.id for j in st.list(owner="ana")] == ["j-2", "j-1"]
    assert [j.id for j in st.list(states=LIVE_STATES)] == ["j-3", "j-1"]
    job = st.get("j-1")
    assert job is not None and job.state == JobState.QUEUED
    job.state = JobState.CANCELLED
    st.put(job)  # replaces
    assert st.get("j-1").state == JobState.CANCELLED and len(st.list()) == 3
    assert st.get("j-9") is None


def test_events_get_seqs_per_job_and_replay_after_an_offset(tmp_path: Path) -> None:
    st = SqliteStore(tmp_path / "q.sqlite")
    assert st.append_events("j-1", [(1.0, "stdout", {"line": "a"}), (2.0, "stdout", {"line": "b"})]) == 2
    assert st.append_events("j-2", [(1.0, "state", {"state": "queued"})]) == 1
    assert st.append_events("j-1", [(3.0, "metrics", {"loss": 0.5})]) == 3
    assert [(e.seq, e.type, e.data) for e in st.read_events("j-1", after=1)] == [
        (2, "stdout", {"line": "b"}), (3, "metrics", {"loss": 0.5})]
    assert st.last_seq("j-1") == 3 and st.last_seq("j-3") == 0
    assert [e.seq for e in st.read_events("j-1", limit=1)] == [1]


def test_a_tail_offset_is_written_with_its_events_and_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    st = SqliteStore(path)
    st.put(record("j-1", "ana", JobState.RUNNING, 1.0))
    assert st.tail_offset("j-1", 1) == 0
    st.append_events("j-1", [(1.0, "stdout", {"line": "x"})], tail=(1, 120))
    st.set_meta("scheduler_state", {"usage": {"ana": 1.5}})
    st.close()
    st = SqliteStore(path)
    assert st.tail_offset("j-1", 1) == 120 and st.tail_offset("j-1", 2) == 0
    assert [e.data for e in st.read_events("j-1")] == [{"line": "x"}]
    assert st.get_meta("scheduler_state") == {"usage": {"ana": 1.5}} and st.get_meta("nothing") is None
    assert st.get("j-1").state == JobState.RUNNING
