"""The policy against strict FIFO on the suite of benchmarks/sim_compare.py: the real openb trace
(Alibaba 2023, in ../shared/traces) and the two traces benchmarks/make_trace.py writes
(whole-node and bursty, 24,000 jobs each over two weeks), each generated with seeds 1 and 2. Each
asserts the goals of issue 13 that the policy meets there; the ones it misses (docs/scheduling.md,
"Known gaps") are held to where they are now, so that they cannot get worse unnoticed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sim_compare import find_openb, simulate_all, suite  # noqa: E402

SIZES = ("1", "2", "4", "8", "16+")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    runs = suite(folder, seeds=(1, 2))
    return {r["name"].split(" (")[0]: res for r, res in zip(runs, simulate_all(runs))}


def ratios(res):
    g, f = res["gpuqueue"], res["fifo"]
    hp = lambda d: d["wait_by_priority"]["high"]["p99"]  # noqa: E731
    return g, f, g["avg_jct_s"] / f["avg_jct_s"], g["max_wait_s"] / f["max_wait_s"], hp(g) / hp(f)


def no_size_waits_longer_than_fifo_at_most(g, f):
    for s in SIZES:
        if g["wait_by_gpus"][s]["jobs"]:
            assert g["wait_by_gpus"][s]["max"] <= f["max_wait_s"], (s, g["wait_by_gpus"][s])


@pytest.mark.skipif(find_openb() is None, reason="the shared trace folder is not beside this checkout")
def test_openb(results):
    g, f, jct, max_wait, high_p99 = ratios(results["openb"])
    assert g["jobs"] == f["jobs"] == 6203 and g["completed"] == 6203
    assert jct <= 0.6 and max_wait <= 0.6 and high_p99 <= 0.2  # max wait 0.49x FIFO
    assert g["utilization_while_fits"] >= 0.95
    assert g["jain_fairness"] >= 0.90  # goal 0.95: missed (Known gaps; 0.915 here, 0.889 before drain_age)
    no_size_waits_longer_than_fifo_at_most(g, f)


def test_whole_node(results):
    g, f, jct, max_wait, high_p99 = ratios(results["whole-node"])
    assert g["completed"] == f["completed"] == 24000
    assert jct <= 0.6 and max_wait <= 1.0
    assert high_p99 <= 0.25  # goal 0.2: missed since the multi-node planner fixes (0.216, 0.192 before; Known gaps)
    assert g["utilization_while_fits"] >= 0.95 and g["jain_fairness"] >= 0.95
    no_size_waits_longer_than_fifo_at_most(g, f)


def test_bursty(results):
    g, f, jct, max_wait, high_p99 = ratios(results["bursty"])
    assert g["completed"] == f["completed"] == g["jobs"]
    assert jct <= 0.6 and max_wait <= 1.0 and g["utilization_while_fits"] >= 0.95
    assert high_p99 <= 0.45  # goal 0.2: missed (Known gaps)
    assert g["jain_fairness"] >= 0.85 and g["jain_fairness_groups"] >= 0.88  # goal 0.95: missed
    no_size_waits_longer_than_fifo_at_most(g, f)


def test_whole_node_seed_2(results):
    g, f, jct, max_wait, high_p99 = ratios(results["whole-node seed 2"])
    assert g["completed"] == f["completed"] == 24000
    assert jct <= 0.6 and max_wait <= 1.0
    assert high_p99 <= 0.25  # goal 0.2: missed here (0.218; Known gaps)
    assert g["utilization_while_fits"] >= 0.95 and g["jain_fairness"] >= 0.95
    no_size_waits_longer_than_fifo_at_most(g, f)


def test_bursty_seed_2(results):
    g, f, jct, max_wait, high_p99 = ratios(results["bursty seed 2"])
    assert g["completed"] == f["completed"] == g["jobs"]
    assert jct <= 0.6 and g["utilization_while_fits"] >= 0.95
    assert max_wait <= 1.2  # goal 1.0: missed here (1.105: 2-node low and medium jobs; Known gaps)
    assert high_p99 <= 0.65  # goal 0.2: missed (0.576; 0.441 before the multi-node planner fixes)
    assert g["jain_fairness"] >= 0.82 and g["jain_fairness_groups"] >= 0.95  # users' goal 0.95: missed (0.855)
