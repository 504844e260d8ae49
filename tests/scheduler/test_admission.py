"""What a rebuild checks again (``admission.never_runs``): what can never run under the config
as it is now, and not the limits that change with time."""

from __future__ import annotations

from gpuqueue.queue.config import QueueConfig
from gpuqueue.scheduler.admission import never_runs
from gpuqueue.scheduler.base import JobRequest

CONFIG = QueueConfig.model_validate({
    "defaults": {"max_gpus": 6, "max_queued": 1},  # queue depths: not checked again
    "groups": {"ml": {"members": ["ana"], "max_gpus": 3}},
    "pools": {"gpu": {"nodes": {"a": 8, "b": 4}, "max_gpus_per_user": 5, "max_queued": 1}},
})


def _job(gpus: int, user: str = "bob", nodes: int = 1, group: str | None = None) -> JobRequest:
    return JobRequest(id="j", user=user, pool="gpu", gpus=gpus, nodes=nodes, group=group)


def test_a_rebuild_fails_what_can_never_run_and_keeps_what_may_wait() -> None:
    assert never_runs(_job(2), CONFIG) is None
    assert never_runs(_job(4, nodes=2), CONFIG) is None
    # what the job asked per node, and what the pool has: not read as the nodes' sizes
    assert never_runs(_job(16, nodes=2), CONFIG) == (
        "2 nodes with 8 GPUs each do not fit pool 'gpu': it has 1 node with 8 or more GPUs; ask for at most 1 node")
    assert never_runs(_job(0, nodes=3), CONFIG) == "3 nodes do not fit pool 'gpu': it has 2 nodes; ask for at most 2 nodes"
    assert never_runs(_job(18, nodes=2), CONFIG) == (
        "9 GPUs on each node do not fit pool 'gpu' (its largest node has 8); ask for at most 8 GPUs per node "
        "(--gpus 16 over 2 nodes)")
    assert never_runs(_job(9), CONFIG) == ("9 GPUs do not fit on one node of pool 'gpu' (its largest node has 8); "
                                           "ask for at most 8, or spread over nodes with --nodes")
    assert never_runs(_job(7), CONFIG) == "7 GPUs is over your quota of 6 GPUs; ask for at most 6"
    assert never_runs(_job(6, user="cy"), CONFIG.model_copy(update={"defaults": CONFIG.defaults.model_copy(
        update={"max_gpus": None})})) == "6 GPUs is over pool 'gpu''s per-user limit of 5; ask for at most 5"
    assert never_runs(_job(4, user="ana"), CONFIG) == "4 GPUs is over group 'ml''s quota of 3 GPUs; ask for at most 3"
    assert never_runs(_job(4, user="ana", group=""), CONFIG) is None  # its record says: no group
    plain = QueueConfig.model_validate({"pools": {"gpu": {"nodes": {"a": 8}}}})
    assert never_runs(_job(9), plain) is not None
    assert never_runs(_job(9), plain, nodes_known=False) is None  # the pools are the workers that beat now
    assert never_runs(JobRequest(id="j", user="bob", pool="train", gpus=1), CONFIG) == (
        "unknown pool 'train': the pools are gpu")
