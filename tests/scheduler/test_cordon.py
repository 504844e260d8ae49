"""A node whose worker is stopping is cordoned (``Scheduler.node_cordon``): no job starts there any
more, its running jobs go on until they end, and ``node_up`` brings it back. Both policies."""

from __future__ import annotations

import pytest

from gpuqueue.queue.config import QueueConfig
from gpuqueue.queue.states import Outcome
from gpuqueue.scheduler import make_scheduler
from gpuqueue.scheduler.base import JobRequest, Retry, Start


def _starts(decisions) -> dict[str, list[str]]:
    return {d.job_id: sorted(d.placement) for d in decisions if isinstance(d, Start)}


@pytest.mark.parametrize("policy", ["gpuqueue", "fifo"])
def test_a_cordoned_node_takes_no_new_job_and_its_jobs_go_on(policy: str) -> None:
    cfg = QueueConfig.model_validate({"pools": {"gpu": {"nodes": {"n1": 2, "n2": 1}}}})
    s = make_scheduler(cfg, policy)
    s.node_up("n1", "gpu", 2, 0.0)
    s.node_up("n2", "gpu", 1, 0.0)
    for i, t in enumerate((1.0, 2.0, 3.0)):
        s.submit(JobRequest(id=f"j{i}", user="ana", pool="gpu", gpus=1, submit_time=t), t)
    assert _starts(s.tick(4.0)) == {"j0": ["n2"], "j1": ["n1"], "j2": ["n1"]}  # best fit: n2 first
    s.node_cordon("n1", 5.0)
    # its worker stopped j1 (a lost attempt, requeued): it goes to no node while n1 is cordoned
    # and n2 is full, and n1's freed GPU is not offered to it
    assert [type(d) for d in s.finished("j1", Outcome.LOST, 6.0)] == [Retry]
    assert _starts(s.tick(7.0)) == {}
    # j0 ends on n2: j1 starts there, not on n1
    s.finished("j0", Outcome.SUCCEEDED, 8.0)
    assert _starts(s.tick(9.0)) == {"j1": ["n2"]}
    # j2 still runs on n1 until the node is gone: then it is lost and comes back
    assert [d.job_id for d in s.node_down("n1", 10.0) if isinstance(d, Retry)] == ["j2"]
    # the worker back: n1 takes work again
    s.node_up("n1", "gpu", 2, 11.0)
    assert _starts(s.tick(12.0)) == {"j2": ["n1"]}
