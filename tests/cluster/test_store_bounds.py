"""What one user may keep in the store every user shares (one Redis), by default: the results of
their finished cell jobs (``max_results_mb``), their finished job records (``max_finished``), and
how fast they may make new ones (``submit_rate``), also before any scheduler has published its
config. Real processes: redis-server, the API service, the scheduler daemon, a Celery worker."""

from __future__ import annotations

import sys

import requests

from gpuqueue.job.payload import build_payload, unpack_results
from gpuqueue.queue.errors import GPUQueueError, NotFound
from helpers.servers import wait_until

from .conftest import TOKENS


def _cell(c, user: str, nbytes: int) -> str:
    """A cell job that returns ``x``, ``nbytes`` bytes long."""
    payload, inputs, outputs = build_payload(f"x = b'r' * {nbytes}", {}, inputs=[], outputs=["x"])
    return c.client(user).submit({"kind": "cell", "gpus": 0, "retries": 0, "inputs": inputs, "outputs": outputs},
                                 payload)["id"]


def _run(c, user: str, nbytes: int) -> str:
    job = _cell(c, user, nbytes)
    assert c.wait_done([job], 60)[job]["state"] == "succeeded", c.client(user).get(job)
    return job


def test_a_users_stored_results_are_bounded_oldest_dropped_first(cluster_factory) -> None:
    """Each succeeded cell job's results (up to 200 MB) stayed in Redis for --keep-finished (30
    days), with no total per user: a loop of such jobs filled the store for everybody. Now a
    user's stored results are at most ``max_results_mb``; a new result drops that user's oldest
    first, and a job whose result was dropped says so, naming the knob."""
    c = cluster_factory(nodes={"n1": 1}, config_extra="[defaults]\nmax_results_mb = 4\n")
    alice, r = c.client("alice"), c.redis_client()
    first = _run(c, "alice", 1_500_000)
    bobs = _run(c, "bob", 1_500_000)  # another user's results count for that user only
    second = _run(c, "alice", 1_500_000)
    assert r.exists(f"gq:result:{first}", f"gq:result:{second}") == 2  # 3 MB: within 4 MB
    third = _run(c, "alice", 1_500_000)  # 4.5 MB: the oldest goes
    assert not r.exists(f"gq:result:{first}")
    assert unpack_results(alice.result(third))[0] == {"x": b"r" * 1_500_000}
    assert unpack_results(alice.result(second))[0] == {"x": b"r" * 1_500_000}
    assert unpack_results(c.client("bob").result(bobs))[0] == {"x": b"r" * 1_500_000}
    try:
        alice.result(first)
        raise AssertionError("a dropped result came back")
    except GPUQueueError as e:
        assert e.http_status == 410, (e.http_status, str(e))
        assert "max_results_mb" in str(e) and "4 MB" in str(e), str(e)
    rec = alice.get(first)
    assert rec["state"] == "succeeded" and "max_results_mb" in rec["result_dropped"], rec

    # a result larger than the whole allowance is not kept at all; the others stay
    big = _run(c, "alice", 5_000_000)
    assert not r.exists(f"gq:result:{big}") and r.exists(f"gq:result:{second}", f"gq:result:{third}") == 2
    assert "max_results_mb" in alice.get(big)["result_dropped"]


def _kept_index_agrees(r, kind: str, user: str) -> None:
    """The daemon's index of a kept set (ZSET by end time, running total) says what its hash says."""
    held = r.hgetall(f"gq:{kind}:{user}")
    assert sorted(r.zrange(f"gq:{kind}at:{user}", 0, -1)) == sorted(held), (held, r.zrange(f"gq:{kind}at:{user}", 0, -1))
    assert int(r.get(f"gq:{kind}sum:{user}") or 0) == sum(int(v.split()[0]) for v in held.values())


def test_results_kept_by_the_previous_version_count_after_an_upgrade_and_a_failover(cluster_factory) -> None:
    """A job's end read its owner's whole ``results:<user>`` hash (10,000 finished jobs: 10,000
    fields per end); now it reads a running total and the oldest entries it drops. What the
    previous version stored (the hash alone) still counts: the new daemon indexes it at the
    owner's next end, also when it took over from a killed leader. Jobs deleted by
    ``max_finished`` leave the total too, so a kept result is never dropped for bytes that are
    gone."""
    c = cluster_factory(nodes={"n1": 1}, config_extra="[defaults]\nmax_results_mb = 3.5\nmax_finished = 3\n")
    alice, r = c.client("alice"), c.redis_client()
    a = _run(c, "alice", 1_500_000)
    b = _run(c, "alice", 1_500_000)
    r.delete("gq:resultsat:alice", "gq:resultssum:alice")  # the hash alone, as the previous version left it
    c.kill("daemon")
    c.start_daemon("daemon2")  # the leader lock lapses (1.5 s) and the new daemon leads
    cc = _run(c, "alice", 1_500_000)  # 4.5 MB with a and b: a goes, b stays
    assert not r.exists(f"gq:result:{a}") and "max_results_mb" in alice.get(a)["result_dropped"]
    assert unpack_results(alice.result(b))[0] == {"x": b"r" * 1_500_000}
    _kept_index_agrees(r, "results", "alice")
    d = _run(c, "alice", 100_000)  # fits; over max_finished: a (dropped already) is deleted
    e = _run(c, "alice", 100_000)  # fits; over max_finished: b, whose results were kept, is deleted
    wait_until(lambda: not r.exists(f"gq:job:{b}"), 10, 0.1, "the oldest finished jobs deleted")
    _kept_index_agrees(r, "results", "alice")
    assert sorted(r.hkeys("gq:results:alice")) == sorted([cc, d, e])
    for job, n in ((cc, 1_500_000), (d, 100_000), (e, 100_000)):
        assert unpack_results(alice.result(job))[0] == {"x": b"r" * n}


def test_a_users_finished_jobs_are_bounded_oldest_deleted_first(cluster_factory) -> None:
    """Finished job records were kept for --keep-finished (30 days) whatever their number: a
    submit-and-cancel loop made records without end. Now each user keeps at most
    ``max_finished`` finished jobs; past it the oldest finished are deleted (running and queued
    jobs never)."""
    c = cluster_factory(nodes={"n1": 1}, config_extra="[defaults]\nmax_finished = 3\n")
    alice, r = c.client("alice"), c.redis_client()
    running = c.submit("alice", ticks=200)  # holds the GPU: what follows waits, then is cancelled
    wait_until(lambda: alice.get(running)["state"] == "running", 30, 0.1, "the first job running")
    bobs = [c.submit("bob", ticks=1, gpus=0)]
    ids = [c.submit("alice", ticks=1) for _ in range(6)]
    for i in ids:
        assert alice.cancel(i)["state"] == "cancelled"
    c.wait_done(bobs)

    def gone(i: str) -> bool:
        try:
            alice.get(i)
            return False
        except NotFound:
            return True

    wait_until(lambda: all(gone(i) for i in ids[:3]), 10, 0.1, "the oldest finished jobs deleted")
    listed = [j["id"] for j in alice.list()]
    assert sorted(listed) == sorted([running, *ids[3:]]), listed
    assert not r.keys(f"gq:*{ids[0]}*"), r.keys(f"gq:*{ids[0]}*")
    assert alice.get(running)["state"] == "running"  # a live job is never deleted
    assert c.client("bob").get(bobs[0])["state"] == "succeeded"  # another user's jobs stay


def _submit(c, user: str) -> requests.Response:
    body = {"spec": {"kind": "command", "gpus": 1, "command": [sys.executable, "-c", "pass"]}}
    return requests.post(f"{c.url}gpuqueue/api/jobs", json=body, headers={"Authorization": f"token {TOKENS[user]}"},
                         timeout=30)


def _until_refused(c, user: str, most: int = 400) -> tuple[int, requests.Response]:
    for n in range(most):
        resp = _submit(c, user)
        if resp.status_code != 201:
            return n, resp
    raise AssertionError(f"{most} submissions in a row were all taken")


def _assert_rate_limited(c, user: str) -> None:
    n, refused = _until_refused(c, user)
    assert 100 <= n < 200, n  # the default bucket: 100 at once, then 10 a second
    assert refused.status_code == 429, (refused.status_code, refused.text)
    assert int(refused.headers["Retry-After"]) >= 1
    msg = refused.json()["message"]
    assert msg.startswith("you are submitting faster than your limit of 10/s (bursts of 100)") and "submit_rate" in msg, msg


def test_a_default_submit_rate_holds_without_configuration(cluster_factory) -> None:
    """No ``submit_rate`` in the queue file was no limit: a tight loop made job records as fast
    as the API could write them. The default bucket (100 at once, 10 a second) is one no person
    at a notebook fills."""
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.start_daemon()
    c.start_api()
    wait_until(lambda: c.redis_client().exists("gq:config"), 30, 0.1, "the scheduler's config")
    _assert_rate_limited(c, "alice")
    assert _submit(c, "bob").status_code == 201  # each user has a bucket of their own


def test_the_api_applies_the_default_limits_before_any_config_is_published(cluster_factory) -> None:
    """Before a scheduler had published its config the API applied no submit rate and no
    ``max_queued`` at all. Now it applies the config's defaults."""
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.start_api()
    _assert_rate_limited(c, "bob")
    assert not c.redis_client().exists("gq:config")


def test_the_inputs_a_users_unfinished_cells_hold_are_bounded(cluster_factory) -> None:
    """A cell's payload (up to --max-payload-mb, 64 MB) stays in Redis until its job ends, and a
    user may have max_queued (1000) jobs waiting: 64 GB of one user's inputs. Now the inputs of
    a user's unfinished jobs take at most ``max_inputs_mb`` together; a submit past it is
    refused (400, nothing stored, no token spent) naming the knob, and a job that ends frees
    its room."""
    c = cluster_factory(nodes={"n1": 1}, config_extra="[defaults]\nmax_inputs_mb = 10\n")
    bob, r = c.client("bob"), c.redis_client()
    blocker = c.submit("alice", ticks=200, gpus=1)  # holds the only GPU: bob's cells wait
    wait_until(lambda: c.client("alice").get(blocker)["state"] == "running", 30, 0.1, "alice's job to run")
    payload, inputs, outputs = build_payload("y = len(x)", {"x": b"p" * 4_000_000})
    spec = {"kind": "cell", "gpus": 1, "inputs": inputs, "outputs": outputs}
    ids = [bob.submit(spec, payload)["id"] for _ in range(2)]
    try:
        bob.submit(spec, payload)
        raise AssertionError("a third 4 MB cell was taken")
    except GPUQueueError as e:
        assert e.http_status == 400 and "max_inputs_mb" in str(e) and "10 MB" in str(e), str(e)
    assert len(bob.list()) == 2 and len(r.keys("gq:payload:*")) == 2  # nothing stored
    assert c.client("alice").submit(spec, payload)["id"]  # another user's room is their own
    bob.cancel(ids[0])
    wait_until(lambda: not r.exists(f"gq:payload:{ids[0]}"), 10, 0.1, "the cancelled cell's payload to go")
    assert bob.submit(spec, payload)["id"]
    assert bob.submit({"kind": "command", "gpus": 1, "command": ["true"]})["id"]  # a command holds no input


def _printer(c, user: str, tag: str, lines: int) -> str:
    """A command job that logs a metric and a checkpoint, then prints ``lines`` lines of about 210
    bytes, each starting ``<tag> <n>``."""
    code = (f"import gpuqueue; from gpuqueue.job import jobapi; gpuqueue.log(step=1, loss=0.5); "
            f"jobapi.emit('checkpoint', {{'step': 1, 'path': '/ck/{tag}', 'name': 'default'}}); "
            f"[print('{tag} %d ' % i + 'x' * 200) for i in range({lines})]")
    return c.client(user).submit({"kind": "command", "gpus": 0, "retries": 0, "command": [sys.executable, "-c", code]})["id"]


def _printed(c, user: str, tag: str, lines: int) -> str:
    job = _printer(c, user, tag, lines)
    assert c.wait_done([job], 60)[job]["state"] == "succeeded", c.client(user).get(job)
    return job


def test_a_users_stored_output_is_bounded_oldest_logs_dropped_first(cluster_factory) -> None:
    """Each attempt may keep up to GPUQUEUE_MAX_OUTPUT_MB (256 MB) of output in Redis, and a
    user max_finished (10,000) finished jobs: terabytes in the one store everyone shares. Now
    the output of a user's finished jobs takes at most ``max_logs_mb`` together: a new job's
    drops that user's oldest first. Reading a dropped job's logs (``gpuqueue logs``, the REST
    events) says so, naming the knob; its state records stay, and its stream in Redis is
    rewritten without its log lines."""
    c = cluster_factory(nodes={"n1": 1}, config_extra="[defaults]\nmax_logs_mb = 2.5\n")
    alice, r = c.client("alice"), c.redis_client()
    first = _printed(c, "alice", "first", 3000)  # about 1 MB of records each
    bobs = _printed(c, "bob", "bobs", 3000)  # another user's output counts for that user only
    second = _printed(c, "alice", "second", 3000)
    assert 700_000 < alice.get(first)["log_bytes"] < 1_200_000, alice.get(first)["log_bytes"]  # what Redis holds
    assert r.hexists("gq:logs:alice", first) and not alice.get(first)["logs_dropped"]
    third = _printed(c, "alice", "third", 3000)  # over 2.5 MB: the oldest goes
    rec = alice.get(first)
    assert rec["state"] == "succeeded" and "max_logs_mb" in rec["logs_dropped"], rec
    assert sorted(r.hkeys("gq:logs:alice")) == sorted([second, third])

    shown = c.cli("alice", "logs", first)
    assert shown.returncode == 0, shown.stderr
    said = shown.stdout + shown.stderr
    assert "the logs of this job" in said and "were dropped to keep your stored output within 2.5 MB " \
           "(max_logs_mb in the queue config)" in said, said
    assert "first 0 " not in said
    kept = c.cli("alice", "logs", second)
    assert "second 0 " in kept.stdout and "second 2999 " in kept.stdout and "dropped" not in kept.stdout + kept.stderr
    assert "bobs 2999 " in c.cli("bob", "logs", bobs).stdout

    events = alice.events(first)  # the REST endpoint: the notice first, then its state records
    assert events[0]["type"] == "log" and "max_logs_mb" in events[0]["data"]["line"], events[:2]
    assert not [e for e in events[1:] if e["type"] in ("log", "progress", "metrics")]
    assert [e["data"]["state"] for e in events if e["type"] == "state"][-1] == "succeeded"
    assert [e["data"]["path"] for e in events if e["type"] == "checkpoint"] == ["/ck/first"]  # kept: it is no output
    assert [e["type"] for e in alice.events(second)].count("metrics") == 1  # a kept job's metrics stay

    def pruned() -> bool:  # the daemon rewrites the stream without the log lines, a chunk at a time
        return not r.exists("gq:evkeep:" + first) and not r.zscore("gq:logprune", first) \
            and not [f for _, f in r.xrange(f"gq:ev:{first}") if f["type"] == "log"]

    wait_until(pruned, 20, 0.1, "the dropped job's log lines to leave its stream")
    assert [f["type"] for _, f in r.xrange(f"gq:ev:{first}")].count("state") >= 3  # queued, starting, ... succeeded
    assert r.memory_usage(f"gq:ev:{first}") < 20_000
    assert alice.events(first) == events  # what readers see did not change with it

    # output over the whole allowance is not kept at all; the others stay
    big = _printed(c, "alice", "big", 12000)
    assert "were dropped as it ended: they are over the 2.5 MB" in alice.get(big)["logs_dropped"]
    assert not alice.get(second)["logs_dropped"] and not alice.get(third)["logs_dropped"]
    assert "third 2999 " in c.cli("alice", "logs", third).stdout


def test_a_result_over_what_one_job_may_return_fails_at_once(cluster_factory) -> None:
    """A cell whose results were over the 200 MB one job may return failed as an ordinary
    failure: its retries ran the cell again, only to make the same results. Now the attempt's
    outcome is ``result_too_big``, which no retry follows, and the error names the limit and
    the fix."""
    c = cluster_factory(nodes={"n1": 1})
    alice = c.client("alice")
    payload, inputs, outputs = build_payload("x = b'r' * 201_000_000", {}, inputs=[], outputs=["x"])
    job = alice.submit({"kind": "cell", "gpus": 0, "retries": 2, "inputs": inputs, "outputs": outputs}, payload)["id"]
    rec = c.wait_done([job], 120)[job]
    assert rec["state"] == "failed", rec
    assert [a["outcome"] for a in rec["attempts"]] == ["result_too_big"], rec["attempts"]
    assert "over the 200 MB that one job may return" in rec["error"], rec["error"]
    assert "save big objects" in rec["error"] and "shared storage" in rec["error"] and "return" in rec["error"]
    assert not c.redis_client().exists(f"gq:result:{job}")
