"""The Scheduler protocol: both policies implement all of it, with the same signatures, so no
shell needs to probe a policy (issue 12)."""

from __future__ import annotations

import inspect
import json

import pytest

from gpuqueue.scheduler import make_scheduler
from gpuqueue.scheduler.base import NodeView, PoolPending, Scheduler, Start
from gpuqueue.queue.states import Outcome

from schedtools import config, job

POLICIES = ["gpuqueue", "fifo"]


def protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(f) for name, f in vars(Scheduler).items()
            if callable(f) and not name.startswith("_")}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_protocol_method_is_implemented_with_its_signature(policy):
    s = make_scheduler(config({"p": {"n1": 2}}), policy)
    methods = protocol_methods()
    assert {"next_wakeup", "export_state", "import_state", "pending_summary", "node_views"} <= set(methods)
    for name, sig in methods.items():
        impl = getattr(type(s), name)
        assert list(inspect.signature(impl).parameters) == list(sig.parameters), name


@pytest.mark.parametrize("policy", POLICIES)
def test_pending_summary_counts_waiting_jobs_by_priority_and_backoff(policy):
    s = make_scheduler(config({"p": {"n1": 1}, "q": {"n2": 1}}), policy)
    s.submit(job("run", t=0), 0)
    assert [d.job_id for d in s.tick(0) if isinstance(d, Start)] == ["run"]
    s.submit(job("h", pr="high", t=5), 5)
    s.submit(job("l1", pr="low", t=7), 7)
    s.submit(job("l2", pr="low", t=3), 8)
    retry = s.finished("run", Outcome.FAILED, 10)  # retried after a backoff
    assert retry and retry[0].at > 10
    summary = s.pending_summary(10)
    assert set(summary) == {"p", "q"} and summary["q"] == PoolPending()
    p = summary["p"]
    assert p.depth == {"high": 1, "low": 2, "medium": 1}
    assert p.oldest_submit == {"high": 5, "low": 3, "medium": 0}
    assert (p.eligible, p.backoff) == (3, 1)


@pytest.mark.parametrize("policy", POLICIES)
def test_node_views_show_free_gpus_and_down_nodes(policy):
    s = make_scheduler(config({"p": {"a": 4, "b": 2}}), policy)
    s.submit(job("j", gpus=3), 0)
    s.tick(0)
    s.node_down("b", 1)
    assert s.node_views() == [NodeView("a", "p", 4, 1, True), NodeView("b", "p", 2, 0, False)]


@pytest.mark.parametrize("policy", POLICIES)
def test_next_wakeup_after_events_and_at_time_limits(policy):
    s = make_scheduler(config({"p": {"n1": 1}}), policy)
    assert s.next_wakeup() is None
    s.submit(job("a", time_limit=1000), 5)
    s.submit(job("b", t=6), 6)
    assert s.next_wakeup() == 6  # events since the last pass: tick now
    for _ in range(3):  # a start may call for one more pass at the same time
        s.tick(6)
        if (w := s.next_wakeup()) != 6:
            break
    assert w is not None and 6 < w <= 1006  # a's time limit (the fair share also warns before)
    state = json.loads(json.dumps(s.export_state()))
    make_scheduler(config({"p": {"n1": 1}}), policy).import_state(state)
