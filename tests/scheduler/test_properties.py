"""Property tests over random clusters and job streams (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuqueue.queue.config import UserLimits
from gpuqueue.scheduler import FairShareScheduler
from gpuqueue.scheduler.base import Preempt, Start
from gpuqueue.queue.states import Outcome

from schedtools import Shell, config, job

USERS = ["u0", "u1", "u2", "u3"]


@st.composite
def scenarios(draw):
    nodes = draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=4))
    cluster = {f"n{i}": g for i, g in enumerate(nodes)}
    biggest = max(nodes)
    n = draw(st.integers(1, 40))
    jobs = []
    t = 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 1.0, 30.0, 400.0, 2000.0]))
        g = draw(st.integers(1, biggest))
        jobs.append(dict(
            id=f"j{i}", user=draw(st.sampled_from(USERS)), gpus=g,
            pr=draw(st.sampled_from(["high", "medium", "low"])), t=t,
            preemptible=draw(st.booleans()),
            time_limit=draw(st.sampled_from([None, 500.0, 5000.0])),
            duration=draw(st.sampled_from([10.0, 300.0, 1000.0, 7000.0])),
            fail=draw(st.integers(0, 9)) == 0,
        ))
    quota = draw(st.sampled_from([None, 2, 4]))
    running = draw(st.sampled_from([None, 1, 3]))
    return cluster, jobs, quota, running


def simulate(cluster, jobs, quota, running):
    users = {u: UserLimits(max_gpus=quota, max_running=running) for u in USERS}
    cfg = config({"p": cluster}, users=users, min_runtime=100, grace=20, half_life=3600)
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    spec = {j["id"]: j for j in jobs}
    ends: dict[str, float] = {}
    events = sorted((j["t"], 1, j["id"]) for j in jobs)
    schedule = []
    stops: dict[str, float] = {}
    now = 0.0
    horizon = 10**6
    while now < horizon:
        times = [e[0] for e in events] + list(ends.values()) + list(stops.values())
        w = s.next_wakeup()
        if w is not None:
            times.append(w)
        times = [x for x in times if x >= now]
        if not times:
            break
        now = min(times)
        for e in [e for e in events if e[0] <= now]:
            events.remove(e)
            j = spec[e[2]]
            r = s.submit(job(j["id"], user=j["user"], gpus=j["gpus"], pr=j["pr"], t=j["t"],
                             preemptible=j["preemptible"], time_limit=j["time_limit"]), now)
            assert r is None or "quota" in r.reason
        for jid in [k for k, t in ends.items() if t <= now]:
            del ends[jid]
            out = "failed" if spec[jid]["fail"] else "ok"
            sh.finish(jid, Outcome.FAILED if out == "failed" else Outcome.SUCCEEDED, now)
            stops.pop(jid, None)
        for jid in [k for k, t in stops.items() if t <= now]:
            del stops[jid]
            ends.pop(jid, None)
            sh.finish(jid, Outcome.PREEMPTED, now)
        out = s.tick(now)
        sh.apply(out, now)
        for _ in range(50):
            if (w := s.next_wakeup()) is None or w > now:
                break
            more = s.tick(now)
            sh.apply(more, now)
            out += more
        for d in out:
            schedule.append((now, type(d).__name__, d.job_id, str(getattr(d, "placement", ""))))
            if isinstance(d, Start):
                ends[d.job_id] = now + spec[d.job_id]["duration"]
            if isinstance(d, Preempt):
                stops[d.job_id] = now + 5
                assert spec[d.job_id]["preemptible"], "a non-preemptible job was preempted"
        for jid in list(ends):
            if jid not in sh.running:
                del ends[jid]  # timed out
    return s, sh, schedule


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenarios())
def test_invariants_hold_and_every_job_ends(sc):
    s, sh, schedule = simulate(*sc)  # Shell.check asserts GPUs/gang/quotas after every step
    assert not sh.running
    assert not s.jobs, f"jobs left over: {list(s.jobs)}"


@SETTINGS
@given(scenarios())
def test_same_input_same_schedule(sc):
    assert simulate(*sc)[2] == simulate(*sc)[2]


@SETTINGS
@given(scenarios())
def test_no_preemption_cycles(sc):
    _, sh, _ = simulate(*sc)
    pairs = set()
    for victim, preemptor in sh.preempted_by:
        pairs.add((victim, preemptor))
    for victim, preemptor in pairs:
        assert (preemptor, victim) not in pairs, "two jobs preempted each other"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=4), st.integers(1, 8), st.sampled_from(["high", "medium", "low"]))
def test_a_job_that_fits_starts_at_the_next_tick(nodes, g, pr):
    cluster = {f"n{i}": x for i, x in enumerate(nodes)}
    s = FairShareScheduler(config({"p": cluster}))
    r = s.submit(job("j", gpus=g, pr=pr, t=5), 5)
    if g > max(nodes):
        assert r is not None
        return
    assert r is None
    assert [d.job_id for d in s.tick(5) if isinstance(d, Start)] == ["j"]


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5))
def test_big_job_is_not_starved_by_a_stream_of_small_ones(n_small, seed):
    # 1 node of 4 GPUs; a stream of 1-GPU jobs keeps arriving; a 4-GPU job must start in bound
    s = FairShareScheduler(config({"p": {"n": 4}}))
    sh = Shell(s)
    ends = {}
    started_big = None
    for step in range(400):
        now = step * 60.0
        for k in range(n_small):
            s.submit(job(f"s{step}-{k}", user=f"u{(step + k + seed) % 3}", t=now), now)
        if step == 2:
            s.submit(job("big", user="u9", gpus=4, t=now), now)
        for d in sh.step(ends, now, 300):
            if d.job_id == "big":
                started_big = now
        if started_big is not None:
            break
    assert started_big is not None and started_big <= 120 + 300 + 60  # drains one job length


# ------------------------------------------------------------------------------ the wait bound
L = 3000.0  # the pool's max_runtime: no job holds GPUs longer
T = 600.0  # starvation_timeout (several GPUs a node) and oldest_first_after (one GPU)
CREDIT = 4 * 3600.0  # starved_priority_credit (the default)


@st.composite
def streams(draw):
    nodes = draw(st.lists(st.sampled_from([2, 4, 8]), min_size=1, max_size=4))
    biggest = max(nodes)
    jobs, t = [], 0.0
    for i in range(draw(st.integers(5, 30))):
        t += draw(st.sampled_from([0.0, 10.0, 60.0, 300.0, 900.0]))
        jobs.append(dict(
            id=f"j{i}", user=draw(st.sampled_from(USERS)), t=t,
            gpus=draw(st.sampled_from([g for g in (1, 1, 1, 2, 4, 8) if g <= biggest])),
            pr=draw(st.sampled_from(["high", "medium", "low"])),
            time_limit=draw(st.sampled_from([None, 500.0, 2000.0])),
            duration=draw(st.sampled_from([30.0, 400.0, 1500.0, 2900.0, 9000.0])),  # 9000: times out at L
        ))
    return {f"n{i}": g for i, g in enumerate(nodes)}, jobs


def run_stream(cluster, jobs):
    """Replay a stream with no preemption and no failure; returns (submit, start) per job."""
    cfg = config({"p": cluster}, oldest_first_after=T, min_runtime=0)
    cfg.pools["p"].max_runtime = L
    cfg.pools["p"].allow_preemption = False
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    spec = {j["id"]: j for j in jobs}
    started: dict[str, float] = {}
    ends: dict[str, float] = {}
    arrivals = sorted((j["t"], j["id"]) for j in jobs)
    now = 0.0
    while arrivals or ends or s.jobs:
        times = [a[0] for a in arrivals] + list(ends.values())
        w = s.next_wakeup()
        if w is not None:
            times.append(w)
        now = max(now, min(times))
        while arrivals and arrivals[0][0] <= now:
            j = spec[arrivals.pop(0)[1]]
            assert s.submit(job(j["id"], user=j["user"], gpus=j["gpus"], pr=j["pr"], t=j["t"],
                                time_limit=j["time_limit"]), now) is None
        for jid in [k for k, e in ends.items() if e <= now]:
            del ends[jid]
            sh.finish(jid, Outcome.SUCCEEDED, now)
        for _ in range(5):
            out = s.tick(now)
            sh.apply(out, now)  # a TimeOut is finished at once
            for d in out:
                if isinstance(d, Start):
                    started[d.job_id] = now
                    ends[d.job_id] = now + spec[d.job_id]["duration"]
            for jid in [k for k in ends if k not in sh.running]:
                del ends[jid]  # timed out
            if (w := s.next_wakeup()) is None or w > now:
                break
    return started


def credited(j):
    """The starved order: submit time less the credit of each priority step above low, then
    submission order."""
    return (j["t"] - {"high": 2, "medium": 1, "low": 0}[j["pr"]] * CREDIT, int(j["id"][1:]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_every_job_starts_within_the_stated_bound(stream):
    # docs/scheduling.md, "The wait bound": with every job's runtime bounded by L (the pool's
    # max_runtime) and nothing preempted, a job that starved at s (T after it was submitted)
    # starts by s + (m + 1) * L, where m counts the starved jobs ahead of it (earlier in the
    # starved order) that started while it waited
    cluster, jobs = stream
    started = run_stream(cluster, jobs)
    assert set(started) == {j["id"] for j in jobs}  # every job ran
    for j in jobs:
        starved_at = j["t"] + T
        if started[j["id"]] <= starved_at:
            continue
        ahead = sum(1 for k in jobs if k is not j and credited(k) < credited(j)
                    and starved_at <= started[k["id"]] <= started[j["id"]])
        assert started[j["id"]] <= starved_at + (ahead + 1) * L + 1e-6, (j, ahead, started[j["id"]])
