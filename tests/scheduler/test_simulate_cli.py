"""The simulator CLI, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"jobs", "avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_wait_s", "p99_wait_s", "max_wait_s",
        "wait_by_priority", "utilization", "utilization_while_queued", "utilization_while_fits",
        "jain_fairness", "jain_users", "preemptions", "wasted_gpu_hours", "sim_wall_s", "wait_by_gpus"}


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "backend"))
    return subprocess.run([sys.executable, "-m", "gpuqueue.simulate", *args], capture_output=True, text=True, env=env, timeout=120)


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "t.csv"
    p.write_text(text)
    return str(p)


GOOD = """job_id,user,submit_time,duration,gpus,priority,pool,preemptible,time_limit
a,u1,0,100,2,high,prod,false,
b,u2,5,300,8,low,prod,true,600
c,u1,6,50,1,,,,
d,u3,7,60,1,medium,dev,false,
"""


def test_json_keys_and_both_policies(tmp_path):
    trace = write(tmp_path, GOOD)
    for policy in ("gpuqueue", "fifo"):
        out = tmp_path / f"{policy}.json"
        r = run(trace, "--cluster", "prod=2x8,dev=1x1", "--policy", policy, "--json", str(out), "--plot", str(tmp_path / "p.png"))
        assert r.returncode == 0, r.stderr
        d = json.loads(out.read_text())
        assert KEYS <= set(d)
        assert set(d["wait_by_priority"]) == {"high", "medium", "low"}
        assert set(d["wait_by_priority"]["high"]) >= {"avg", "p99", "max"}
        assert d["jobs"] == 4 and d["completed"] == 4
        assert (tmp_path / "p.png").stat().st_size > 1000


def test_bad_rows_name_the_line(tmp_path):
    cases = {
        "a,u1,0,100,2\nb,u1,x,100,1\n": "line 3",
        "a,u1,0,100,2\nb,u1,1,-5,1\n": "line 3",
        "a,u1,0,100,2,urgent\n": "line 2",
        "a,u1,0,100,1\na,u1,0,100,1\n": "line 3",
        "a,u1,0,100\n": "line 2",
        # bounded: an endless job, or one submitted past any float's precision, would never end
        "a,u1,0,100,1\nb,u1,0,1e300,1\n": "line 3: duration 1e+300 is over ten years",
        "a,u1,1e300,100,1\n": "line 2: submit_time 1e+300 is past 1e+12 s",
    }
    for body, where in cases.items():
        header = "job_id,user,submit_time,duration,gpus" + (",priority" if "urgent" in body else "") + "\n"
        r = run(write(tmp_path, header + body), "--cluster", "prod=1x8")
        assert r.returncode == 2, (body, r.stdout, r.stderr)
        assert where in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_bad_header_and_cluster(tmp_path):
    r = run(write(tmp_path, "id,user\n"), "--cluster", "prod=1x8")
    assert r.returncode == 2 and "line 1" in r.stderr
    r = run(write(tmp_path, GOOD), "--cluster", "prod=eight")
    assert r.returncode == 2 and "--cluster" in r.stderr and "Traceback" not in r.stderr
    # a size the simulator would build for minutes (10^8 nodes) is refused at once, saying the bound
    for big in ("prod=99999999x8", "prod=2x999999"):
        r = run(write(tmp_path, GOOD), "--cluster", big)
        assert r.returncode == 2 and "at most 100,000 nodes a pool and 4,096 GPUs a node" in r.stderr, r.stderr


def test_deterministic(tmp_path):
    trace = write(tmp_path, GOOD)
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.json"
        assert run(trace, "--cluster", "prod=1x8,dev=1x1", "--json", str(out)).returncode == 0
        d = json.loads(out.read_text())
        d.pop("sim_wall_s")
        outs.append(d)
    assert outs[0] == outs[1]


def test_water_fill_is_weighted_max_min():
    from gpuqueue.simulate import water_fill

    # 10 GPUs: a wants 1 (gets it all), b and c share the rest 2:1 by weight, d capped at 2
    got = water_fill(10, {"a": 1, "b": 20, "c": 20, "d": 2}, {"a": 1, "b": 2, "c": 1, "d": 1})
    assert got["a"] == 1 and got["d"] == 2
    assert abs(got["b"] - 14 / 3) < 1e-9 and abs(got["c"] - 7 / 3) < 1e-9
    assert abs(sum(got.values()) - 10) < 1e-9
    assert water_fill(10, {"a": 3, "b": 4}, {"a": 1, "b": 1}) == {"a": 3, "b": 4}  # all demand met


def test_fairness_and_fit_metrics_tell_fifo_from_fair_share(tmp_path):
    # one node of 4 GPUs; "flood" queues 40 one-GPU jobs at t=0, "late" queues 10 at t=1
    rows = [f"f{i},flood,0,100,1" for i in range(40)] + [f"l{i},late,1,100,1" for i in range(10)]
    trace = write(tmp_path, "job_id,user,submit_time,duration,gpus\n" + "\n".join(rows) + "\n")
    got = {}
    for policy in ("gpuqueue", "fifo"):
        out = tmp_path / f"{policy}.json"
        assert run(trace, "--cluster", "prod=1x4", "--policy", policy, "--json", str(out)).returncode == 0
        got[policy] = json.loads(out.read_text())
    # fair share serves "late" beside "flood" at once; FIFO makes it wait for all 40
    assert got["gpuqueue"]["jain_fairness"] > 0.95 > got["fifo"]["jain_fairness"]
    assert got["gpuqueue"]["jain_users"] == got["fifo"]["jain_users"] == 2
    # and who is short: "late" gets a third of its fair share under FIFO, the least served first
    assert list(got["fifo"]["fairness_by_user"]) == ["late", "flood"]
    late = {p: got[p]["fairness_by_user"]["late"] for p in got}
    assert late["fifo"]["received_share"] < 0.4 and late["gpuqueue"]["received_share"] > 0.75
    assert late["fifo"]["backlogged_hours"] > 2 * late["gpuqueue"]["backlogged_hours"]
    # both run all of its work (10 jobs of 100 s): FIFO is short on "late" because "late" waits,
    # backlogged and so entitled for longer, not because its jobs get fewer GPU-hours in the end
    for p in got:
        assert abs(late[p]["ran_gpu_hours"] - 1000 / 3600) < 1e-9
        assert abs(got[p]["fairness_by_user"]["flood"]["ran_gpu_hours"] - 4000 / 3600) < 1e-9
        assert late[p]["received_gpu_hours"] <= late[p]["ran_gpu_hours"]
    assert late["fifo"]["entitled_gpu_hours"] > 2 * late["gpuqueue"]["entitled_gpu_hours"]
    # nothing queued ever fits on idle GPUs while both policies keep the node full
    assert got["gpuqueue"]["utilization_while_queued"] == got["fifo"]["utilization_while_queued"] == 1.0


def test_hierarchical_fill_shares_by_group_then_user():
    from gpuqueue.simulate import hierarchical_fill

    # 12 GPUs, groups g (weight 2: a and b) and h (weight 1: c); everyone wants plenty
    got = hierarchical_fill(12, {"a": 20, "b": 20, "c": 20}, {"a": 1, "b": 3, "c": 1},
                            {"a": "g", "b": "g", "c": "h"}, {"g": 2, "h": 1})
    assert abs(got["c"] - 4) < 1e-9  # h gets a third
    assert abs(got["a"] - 2) < 1e-9 and abs(got["b"] - 6) < 1e-9  # g's 8 split 1:3


def test_hierarchical_fill_with_a_memo_follows_every_demand_change():
    from gpuqueue.simulate import hierarchical_fill

    # demands move one user at a time, as jobs come and go; a group whose share and members'
    # demands are as before reuses its split, and every split is what a fresh fill gives
    weight = {"a": 1, "b": 3, "c": 1, "d": 2}
    group_of = {"a": "g", "b": "g", "c": "h", "d": "h"}
    memo: dict = {}
    demand = {"a": 4, "b": 2, "c": 6, "d": 1}
    steps = [("a", 3), ("d", 8), ("a", -7), ("c", -5), ("a", 5), ("b", 10), ("d", -9), ("c", 20)]
    reused = 0
    for user, delta in steps:
        demand[user] = demand.get(user, 0) + delta
        if not demand[user]:
            del demand[user]
        before = dict(memo)
        got = hierarchical_fill(12, demand, weight, group_of, {"g": 2, "h": 1}, memo)
        assert got == hierarchical_fill(12, demand, weight, group_of, {"g": 2, "h": 1})
        reused += sum(1 for g in memo if before.get(g) is memo[g])
    assert reused > 0  # some splits were reused


def test_group_fill_kept_up_to_date_equals_hierarchical_fill_to_the_bit():
    import random

    from gpuqueue.simulate import GroupFill, hierarchical_fill

    # random demand changes, as jobs come and go; the incremental fill gives exactly (repr of
    # every float) what hierarchical_fill gives on the whole demand, as floats
    rnd = random.Random(7)
    users = [f"u{i}" for i in range(12)]
    weight = {u: rnd.choice([1.0, 0.1, 0.7, 1 / 3]) for u in users}  # any: their sums depend on order
    group_of = {u: rnd.choice(["g", "h", "k", f"user:{u}"]) for u in users}
    group_weight = {g: rnd.choice([1.0, 2.0, 3.0]) for g in set(group_of.values())}  # whole
    fill = GroupFill(37, weight, group_of, group_weight)
    demand: dict = {}
    for _ in range(2000):
        u = rnd.choice(users)
        old = demand.get(u, 0)
        new = max(0, old + rnd.choice([-3, -1, 1, 2, 8]))  # (never below 0 in the simulator)
        if new == old:
            continue
        demand[u] = new  # as the simulator keeps it: updated in place, added last, gone at 0
        if not new:
            del demand[u]
        fill.set(u, new)
        if demand:
            want = {u: repr(0.0 + x) for u, x in hierarchical_fill(37, demand, weight, group_of, group_weight).items()}
            assert {u: repr(x) for u, x in fill.shares().items()} == want


def test_groups_and_sizes_are_reported(tmp_path):
    # two groups of equal weight on one 4-GPU node: the lone member of "solo" gets as much as
    # the three members of "team" together, so the groups are fair and the users are not
    rows = [f"{u}{i},{u},0,100,1" for u in ("t1", "t2", "t3", "s1") for i in range(30)]
    rows.append("big,s1,0,100,4")
    trace = write(tmp_path, "job_id,user,submit_time,duration,gpus\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "g.toml"
    cfg.write_text('[pools.prod]\nnodes = { "x" = 4 }\n[groups.team]\nmembers = ["t1", "t2", "t3"]\n'
                   '[groups.solo]\nmembers = ["s1"]\n')
    out = tmp_path / "o.json"
    r = run(trace, "--cluster", "prod=1x4", "--config", str(cfg), "--json", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["jain_groups"] == 2 and d["jain_fairness_groups"] > 0.95
    assert set(d["fairness_by_user"]) == {"t1", "t2", "t3", "s1"} and set(d["fairness_by_group"]) == {"team", "solo"}
    assert all(g["received_share"] > 0.9 for g in d["fairness_by_group"].values())
    # a group's jobs ran its members' GPU-hours: team 90 jobs of 100 s, solo 30 and a 4-GPU one
    assert abs(d["fairness_by_group"]["team"]["ran_gpu_hours"] - 9000 / 3600) < 1e-9
    assert abs(d["fairness_by_group"]["solo"]["ran_gpu_hours"] - 3400 / 3600) < 1e-9
    assert d["wait_by_gpus"]["4"]["jobs"] == 1 and d["wait_by_gpus"]["1"]["jobs"] == 120
    assert d["wait_by_gpus"]["16+"]["jobs"] == 0


def test_a_user_in_no_group_is_a_group_of_its_own_in_the_fairness_figures(tmp_path):
    rows = [f"{u}{i},{u},0,100,1" for u in ("a", "b") for i in range(10)]
    trace = write(tmp_path, "job_id,user,submit_time,duration,gpus\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "g.toml"
    cfg.write_text('[pools.prod]\nnodes = { "x" = 2 }\n[groups.g]\nmembers = ["a"]\n')
    out = tmp_path / "o.json"
    assert run(trace, "--cluster", "prod=1x2", "--config", str(cfg), "--json", str(out)).returncode == 0
    d = json.loads(out.read_text())
    assert set(d["fairness_by_group"]) == {"g", "user:b"} and set(d["fairness_by_user"]) == {"a", "b"}
