"""The arithmetic of what one user's finished jobs keep in the store (queue/bounds.py), and that
the new knobs travel in the config the scheduler publishes to the API."""

from __future__ import annotations

import json

from gpuqueue.queue.bounds import dropped_for_newer, oldest_to_drop, too_big_to_keep
from gpuqueue.queue.config import GROWING, QueueConfig

MB = 1_000_000


def test_the_oldest_results_go_first_until_the_new_one_fits() -> None:
    kept = {"b": (2 * MB, 20.0), "a": (2 * MB, 10.0), "c": (1 * MB, 30.0)}
    assert oldest_to_drop(kept, 1 * MB, 6) == []  # 6 MB: fits
    assert oldest_to_drop(kept, 2 * MB, 6) == ["a"]  # 7 MB: the oldest goes
    assert oldest_to_drop(kept, 4 * MB, 6) == ["a", "b"]
    assert oldest_to_drop(kept, 6 * MB, 6) == ["a", "b", "c"]
    assert oldest_to_drop(kept, 6 * MB + 1, 6) is None  # over the whole limit: only it is not kept
    assert oldest_to_drop({}, 0, 0.001) == []
    assert "max_results_mb" in dropped_for_newer(3 * MB, 2048) and "2048 MB" in dropped_for_newer(3 * MB, 2048)
    assert "delete finished jobs you no longer need (`gpuqueue rm JOB_ID`)" in dropped_for_newer(3 * MB, 2048)
    assert "over the 4 MB" in too_big_to_keep(5 * MB, 4)


def test_the_defaults_and_an_unlimited_rate_survive_publishing() -> None:
    cfg = QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}},
                                      "users": {"svc": {"submit_rate": "unlimited", "max_finished": 5}}})
    seen = QueueConfig.model_validate(json.loads(cfg.model_dump_json()), context=GROWING)  # as the API reads it
    assert seen.submit_limit_for("svc") is None and seen.limits_for("svc").max_finished == 5
    d = seen.limits_for("alice")
    assert (d.submit_rate, d.submit_burst, d.max_results_mb, d.max_finished) == (10.0, 100, 2048.0, 10_000)


def test_a_job_whose_logs_were_dropped_reads_as_a_notice_and_its_records_that_stay() -> None:
    """Readers of a job whose output was dropped (max_logs_mb) get, read from the start, one line
    that says why, then only the records that stay (its states, warnings, checkpoints, results):
    never an empty output that looks as if the job printed nothing. Until the store has removed
    them, its output records are left out here."""
    from gpuqueue.queue.bounds import logs_dropped_for_newer, visible_events
    from gpuqueue.queue.models import Event, JobRecord, JobSpec

    job = JobRecord(id="j-1", owner="ann", spec=JobSpec(kind="command", command=["true"]))
    evs = [Event(seq=i + 1, time=0.0, type=t, data={"line": "x"} if t == "log" else {})
           for i, t in enumerate(["state", "log", "metrics", "progress", "checkpoint", "log", "state"])]
    assert visible_events(job, evs, True) == evs  # kept: as stored
    job.logs_dropped = logs_dropped_for_newer(300 * MB, 4096)
    shown = visible_events(job, evs, True)
    assert shown[0].seq == 0 and shown[0].type == "log" and shown[0].data["stream"] == "stderr"
    assert "300.0 MB" in shown[0].data["line"] and "within 4096 MB (max_logs_mb in the queue config)" in shown[0].data["line"]
    assert "Delete finished jobs you no longer need (`gpuqueue rm JOB_ID`)" in shown[0].data["line"]
    assert [e.type for e in shown[1:]] == ["state", "checkpoint", "state"]
    assert [e.type for e in visible_events(job, evs[4:], False)] == ["checkpoint", "state"]  # a later page: no notice again


def test_a_job_end_reads_only_as_many_of_the_oldest_as_it_drops() -> None:
    """A store gives its kept set's total and walks it oldest first; ``keep_within`` reads only as
    far as it drops (a user with 10,000 kept jobs costs a job's end the same as one with 10), and
    says what each record says, naming the knob."""
    from gpuqueue.queue.bounds import LOGS, RESULTS, keep_within

    read: list[str] = []

    def oldest():
        for i in range(10_000):
            read.append(f"j{i}")
            yield f"j{i}", MB

    v = keep_within(RESULTS, 10_000 * MB, oldest(), 2 * MB, 10_000)  # 2 MB over: the two oldest go
    assert v.kept and [i for i, _, _ in v.drop] == ["j0", "j1"] and read == ["j0", "j1"]
    assert "max_results_mb" in v.drop[0][2] and "(1.0 MB)" in v.drop[0][2]
    assert v.log_line(RESULTS, "ann", 10_000) == "user ann: dropped the results of 2 older jobs to keep within max_results_mb = 10000"
    read.clear()
    assert keep_within(LOGS, 5 * MB, oldest(), MB, 10).drop == [] and read == []  # fits: nothing read
    big = keep_within(LOGS, 5 * MB, oldest(), 11 * MB, 10)
    assert not big.kept and big.drop == [] and read == [] and "over the 10 MB" in (big.too_big or "")
    assert big.too_big and "max_logs_mb" in big.too_big
