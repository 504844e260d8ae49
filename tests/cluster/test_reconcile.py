"""The daemon compares the attempts it holds as running with the ones each worker's heartbeat
lists (cluster/daemon_reconcile.py): a job whose end never reached the store no longer stays
"running" for ever, holding its owner's quota, nor one whose start was lost too "starting" for ever;
one whose start alone was lost no longer shows "starting" for its whole run; an attempt still
being launched is left alone."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil

from gpuqueue.cluster.daemon_reconcile import MISSING_MIN_S
from helpers.servers import wait_until


def _state(c, job: str) -> str:
    return c.client("root").get(job)["state"]


def _leaves(c, job: str, state: str, lost: str) -> None:
    """The job, in ``state`` when the (resumed) daemon goes on, leaves it soon enough."""
    t0 = time.monotonic()
    assert _state(c, job) == state
    wait_until(lambda: _state(c, job) != state, MISSING_MIN_S + 20, 0.2, f"the job to leave {state.upper()}")
    took = time.monotonic() - t0
    print(f"left {state.upper()} {took:.1f} s after {lost}")
    assert took < MISSING_MIN_S + 20  # the rebuild (the frozen daemon lost its lock), a round, the API poll; 28 s seen under a loaded CI


def _lose(r, job: str, ops: tuple[str, ...]) -> None:
    """The reports ``ops`` of the job's first attempt, and their records, deleted as a failover to a
    replica that missed the last writes would lose them."""
    assert r.delete(*(f"gq:{op}:{job}:1" for op in ops)) == len(ops)
    gone = [mid for mid, f in r.xrange("gq:reports") if json.loads(f["m"]).get("job") == job
            and json.loads(f["m"]).get("op") in ops]
    assert len(gone) == len(ops) and r.xdel("gq:reports", *gone) == len(ops)


def test_a_job_whose_end_was_lost_leaves_running_and_runs_again(cluster_factory) -> None:
    """The exit report of a running job is lost as a store failover would lose it (the daemon
    frozen meanwhile, so that it cannot read it first): the job left RUNNING only by hand, and
    alice's next job waited behind her 1-GPU cap for ever. Now the daemon finds that the worker
    on n1 no longer runs it, ends the attempt as lost saying so, and runs the job again."""
    c = cluster_factory(nodes={"n1": 2}, config_extra="[defaults]\nmax_gpus = 1\n")
    job = c.submit("alice", ticks=30)
    wait_until(lambda: _state(c, job) == "running", 30, 0.05, "the job running")
    nxt = c.submit("alice", ticks=1)  # waits: alice may hold 1 GPU
    daemon = c.procs["daemon"].pid
    r = c.redis_client()
    os.kill(daemon, signal.SIGSTOP)
    try:
        wait_until(lambda: r.exists(f"gq:exit:{job}:1"), 30, 0.05, "the worker to report the job's end")
        _lose(r, job, ("exit",))  # its exit record and report
    finally:
        os.kill(daemon, signal.SIGCONT)
    _leaves(c, job, "running", "its end was lost")
    jobs = c.wait_done([job, nxt], 60)
    assert {j["state"] for j in jobs.values()} == {"succeeded"}, jobs
    first = jobs[job]["attempts"][0]
    assert first["outcome"] == "lost", first
    assert "the worker on node n1 does not run this attempt" in first["message"], first
    assert "its exit report never reached the queue's store" in first["message"], first
    assert len(jobs[job]["attempts"]) == 2 and len(jobs[nxt]["attempts"]) == 1
    warned = [e["data"]["message"] for e in c.client("alice").events(job) if e["type"] == "warning"]
    assert any("does not run this attempt" in w for w in warned), warned
    assert "does not run this attempt" in c.log("daemon")


def _frozen_fork_server(c) -> list[psutil.Process]:
    """The worker on n1's runner fork server and its children (started by a first job), suspended:
    a launch then stays claimed, as a slow pull of checkpoints would hold it."""
    warm = c.submit("bob", ticks=1)  # the fork server starts with the first launch
    assert c.wait_done([warm], 30)[warm]["state"] == "succeeded"
    worker = psutil.Process(c.procs["worker-n1"].pid)
    forks = [p for p in worker.children() if "gpuqueue.cluster.forkserver" in " ".join(p.cmdline())]
    assert forks, [p.cmdline() for p in worker.children()]
    frozen = forks + forks[0].children(recursive=True)
    for p in frozen:
        p.suspend()
    return frozen


def _start_while_the_daemon_is_frozen(c, r, ticks: int) -> str:
    """A job on n1 claimed, then the daemon frozen before the launch goes on (so that it reads no
    start report), then the launch let go. The daemon is left frozen: the caller resumes it
    (SIGCONT), also when it raises."""
    frozen = _frozen_fork_server(c)
    daemon = c.procs["daemon"].pid
    try:
        job = c.submit("alice", ticks=ticks)
        wait_until(lambda: r.exists(f"gq:claim:{job}:1"), 30, 0.05, "the worker to claim the attempt")
        os.kill(daemon, signal.SIGSTOP)  # before the launch goes on: the daemon reads no start report
        time.sleep(1)  # its blocking read of the reports (200 ms) ends empty: no report waits in its socket
    finally:
        for p in frozen:
            p.resume()
    return job


def _lose_start_and_end(c, r) -> str:
    """A job on n1 that started and ended while the daemon was frozen, with its start and exit
    records and reports lost. The daemon is left frozen: the caller resumes it (SIGCONT)."""
    job = _start_while_the_daemon_is_frozen(c, r, ticks=1)
    try:
        wait_until(lambda: r.exists(f"gq:exit:{job}:1"), 30, 0.05, "the worker to report the job's end")
        _lose(r, job, ("started", "exit"))
    except BaseException:
        os.kill(c.procs["daemon"].pid, signal.SIGCONT)
        raise
    return job


def test_a_job_whose_start_and_end_were_lost_leaves_starting_and_runs_again(cluster_factory) -> None:
    """A job starts and ends while the daemon is frozen, and both its start and its exit report
    are lost as a store failover would lose them: the job stayed STARTING for ever (claimed, so
    no start timeout). Now the daemon finds that the worker on n1, whose beats list the attempts
    it launches, neither launches nor runs it, ends the attempt as lost saying so, and runs the job
    again."""
    c = cluster_factory(nodes={"n1": 1})
    r = c.redis_client()
    job = _lose_start_and_end(c, r)
    os.kill(c.procs["daemon"].pid, signal.SIGCONT)
    _leaves(c, job, "starting", "its start and end were lost")
    final = c.wait_done([job], 60)[job]
    assert final["state"] == "succeeded" and len(final["attempts"]) == 2, final
    first = final["attempts"][0]
    assert first["outcome"] == "lost", first
    assert "the worker on node n1 claimed this attempt but neither launches nor runs it" in first["message"], first
    assert "its start and exit reports never reached the queue's store" in first["message"], first
    warned = [e["data"]["message"] for e in c.client("alice").events(job) if e["type"] == "warning"]
    assert any("neither launches nor runs it" in w for w in warned), warned
    assert "neither launches nor runs it" in c.log("daemon")


def test_a_running_job_whose_start_was_lost_shows_running(cluster_factory) -> None:
    """A job starts while the daemon is frozen, and its start report is lost as a store failover
    would lose it: the job showed STARTING for its whole run, though its worker's heartbeats
    listed it as running. Now the daemon moves it to RUNNING from those beats, with the start it
    can know (when it first saw it listed) and a note in the job's stream; the job runs on,
    once."""
    c = cluster_factory(nodes={"n1": 1})
    r = c.redis_client()
    job = _start_while_the_daemon_is_frozen(c, r, ticks=600)
    try:
        wait_until(lambda: r.exists(f"gq:started:{job}:1"), 30, 0.05, "the worker to report the job's start")
        began = json.loads(r.get(f"gq:started:{job}:1"))["t"]  # when its runner started the job
        _lose(r, job, ("started",))
    finally:
        os.kill(c.procs["daemon"].pid, signal.SIGCONT)
    _leaves(c, job, "starting", "its start report was lost")
    j = c.client("root").get(job)
    assert j["state"] == "running" and len(j["attempts"]) == 1, j
    a = j["attempts"][0]
    assert a["outcome"] is None and a["node"] == "n1", a
    assert began <= a["started_at"] <= time.time(), (a, began)  # the daemon saw it listed after it began
    noted = [e["data"]["message"] for e in c.client("alice").events(job) if e["type"] == "info"]
    assert any("runs this attempt" in n and "its start report never reached the queue's store" in n
               for n in noted), noted
    assert "its start report never reached" in c.log("daemon")
    assert c.client("alice").cancel(job)["id"] == job  # no need to wait for its 60 s
    final = c.wait_done([job], 30)[job]
    assert final["state"] == "cancelled" and len(final["attempts"]) == 1, final
    assert list(c.runs()[job]) == ["1"], c.runs()[job]  # it ran once: not started again


def test_a_start_report_that_comes_after_the_beats_moved_the_job_to_running_is_recorded(cluster_factory) -> None:
    """A job's start report is held up (not lost: a replica that catches up late, say) until the
    daemon has moved the job to RUNNING from its worker's beats. The report was ignored (the
    daemon took start reports of STARTING attempts only): `gpuqueue show` never had the runner's
    pid, and the start time stayed the beats' estimate. Now both are recorded from it, and the job
    does not change state again (one "running" in its stream). Then cancelled: in cluster mode
    too, `gpuqueue logs` says the stop once (the daemon's "info: stopping (cancelled); grace 3s"
    said it again)."""
    c = cluster_factory(nodes={"n1": 1})
    r = c.redis_client()
    job = _start_while_the_daemon_is_frozen(c, r, ticks=600)
    try:
        wait_until(lambda: r.exists(f"gq:started:{job}:1"), 30, 0.05, "the worker to report the job's start")
        report = r.get(f"gq:started:{job}:1")  # the report as the worker queued it
        _lose(r, job, ("started",))
    finally:
        os.kill(c.procs["daemon"].pid, signal.SIGCONT)
    _leaves(c, job, "starting", "its start report was held up")
    root = c.client("root")
    assert root.get(job)["attempts"][0]["pid"] is None
    r.set(f"gq:started:{job}:1", report)  # the report comes after all
    r.xadd("gq:reports", {"m": report})
    sent = json.loads(report)
    assert isinstance(sent["pid"], int), sent
    a = wait_until(lambda: (x := root.get(job)["attempts"][0])["pid"] == sent["pid"] and x, 10, 0.1,
                   "the daemon to record the runner's pid")
    assert a["started_at"] == sent["t"] and a["outcome"] is None, (a, sent)
    shown = json.loads(c.cli("alice", "show", job).stdout)
    assert shown["state"] == "running" and shown["attempts"][0]["pid"] == sent["pid"], shown
    states = [e["data"].get("state") for e in c.client("alice").events(job) if e["type"] == "state"]
    assert states.count("running") == 1, states
    assert c.client("alice").cancel(job)["id"] == job
    assert c.wait_done([job], 30)[job]["state"] == "cancelled"
    said = c.cli("alice", "logs", job).stderr.splitlines()
    assert [line for line in said if "stopping" in line or "grace" in line] == [
        "[gpuqueue] stopping (cancelled); it has 3s to save a checkpoint, then it is killed"], said


def test_an_older_workers_beats_never_end_a_starting_attempt(cluster_factory) -> None:
    """Mixed versions in a rolling upgrade: a worker whose heartbeats have no ``launching`` list
    (written here, as that older version writes them, while n1's worker is frozen) cannot tell
    a slow launch from a lost one, so the job whose start and end were lost stays STARTING
    however long; once the worker's own beats (with the list) come back, it is ended as lost."""
    c = cluster_factory(nodes={"n1": 1})
    r = c.redis_client()
    job = _lose_start_and_end(c, r)
    worker = c.procs["worker-n1"].pid
    wait_until(lambda: json.loads(r.get("gq:hb:n1"))["running"] == [], 10, 0.05, "n1's beats to list no attempt")
    os.kill(worker, signal.SIGSTOP)
    try:
        hb = json.loads(r.get("gq:hb:n1"))
        old = {k: hb[k] for k in ("instance", "pool", "gpus", "seq", "time", "running", "stopped")}
        os.kill(c.procs["daemon"].pid, signal.SIGCONT)
        t_end = time.monotonic() + MISSING_MIN_S + 8
        while time.monotonic() < t_end:
            old["seq"], old["time"] = old["seq"] + 1, time.time()
            r.set("gq:hb:n1", json.dumps(old), px=86_400_000)
            time.sleep(0.2)
        j = c.client("root").get(job)
        assert j["state"] == "starting" and len(j["attempts"]) == 1 and j["attempts"][0]["outcome"] is None, j
    finally:
        os.kill(worker, signal.SIGCONT)
    assert "neither launches nor runs it" not in c.log("daemon")
    wait_until(lambda: _state(c, job) != "starting", MISSING_MIN_S + 20, 0.2, "the job to leave STARTING")
    final = c.wait_done([job], 60)[job]
    assert final["state"] == "succeeded" and final["attempts"][0]["outcome"] == "lost", final


def test_a_slow_launch_is_not_taken_for_a_lost_attempt(cluster_factory) -> None:
    """A launch that takes long (here: the worker's runner fork server frozen, as a slow pull of
    checkpoints would hold it) is claimed, listed in the worker's beats as launching: it is not
    ended as lost, and the job runs once it starts."""
    c = cluster_factory(nodes={"n1": 1})
    frozen = _frozen_fork_server(c)
    try:
        job = c.submit("alice", ticks=1)
        r = c.redis_client()
        wait_until(lambda: r.exists(f"gq:claim:{job}:1"), 30, 0.05, "the worker to claim the attempt")
        wait_until(lambda: json.loads(r.get("gq:hb:n1")).get("launching") == [f"{job}:1"], 10, 0.05,
                   "the worker's heartbeat to list the attempt as launching")
        time.sleep(MISSING_MIN_S + 3)
        j = c.client("root").get(job)
        assert j["state"] == "starting" and len(j["attempts"]) == 1 and j["attempts"][0]["outcome"] is None, j
    finally:
        for p in frozen:
            p.resume()
    final = c.wait_done([job], 30)[job]
    assert final["state"] == "succeeded" and len(final["attempts"]) == 1, final
    assert "does not run this attempt" not in c.log("daemon")
    assert "neither launches nor runs it" not in c.log("daemon")
