"""The GPU map and share standing of the queue summary, from job records as the stores hold them
(the builder is pure; tests/cluster/test_gpumap.py and the browser test read it from real
servers)."""

from __future__ import annotations

from gpuqueue.queue.config import QueueConfig
from gpuqueue.observability.gpumap import cluster_view, gpu_map, share
from gpuqueue.queue.models import Attempt, JobRecord, JobSpec
from gpuqueue.queue.verbs import Caller
from gpuqueue.queue.states import JobState

CONFIG = QueueConfig.model_validate({
    "pools": {"train": {"nodes": {"a100-1": 4, "a100-2": 4}}, "dev": {"nodes": {"t4-1": 2}}},
    "users": {"alice": {"weight": 2.0}},
})


def job(owner: str, name: str, state: JobState, placement: dict[str, list[int]]) -> JobRecord:
    node = next(iter(placement), "?")
    attempts = [Attempt(number=1, node=node, placement=placement, started_at=1.0)] if placement else []
    return JobRecord(id=f"j-{name}", owner=owner, spec=JobSpec(kind="command", command=["x"], name=name,
                                                                gpus=sum(map(len, placement.values()))),
                     state=state, attempts=attempts)


JOBS = [
    job("alice", "mine", JobState.RUNNING, {"a100-1": [0, 1]}),
    job("bob", "secret-project", JobState.STARTING, {"a100-2": [3]}),
    job("alice", "waiting", JobState.QUEUED, {}),
    job("bob", "old", JobState.SUCCEEDED, {"t4-1": [0]}),  # ended: holds nothing
]


def states(nodes: list[dict]) -> dict[str, str]:
    """node -> one letter per GPU: m(ine) b(usy) f(ree) d(own)."""
    return {n["node"]: "".join(g["state"][0] for g in n["gpus"]) for n in nodes}


def test_a_user_sees_her_jobs_and_only_that_others_are_busy():
    m = gpu_map(CONFIG, None, JOBS, Caller("alice"))
    assert [(n["node"], n["pool"], n["up"]) for n in m] == [("a100-1", "train", True), ("a100-2", "train", True),
                                                             ("t4-1", "dev", True)]
    assert states(m) == {"a100-1": "mmff", "a100-2": "fffb", "t4-1": "ff"}
    assert m[0]["gpus"][0]["job"] == {"id": "j-mine", "name": "mine", "owner": "alice", "priority": "medium"}
    assert m[1]["gpus"][3]["job"] is None  # bob's: no id, name or owner
    assert "secret-project" not in repr(m) and "bob" not in repr(m)


def test_an_admin_sees_every_job_and_down_nodes():
    m = gpu_map(CONFIG, {"a100-1": {"pool": "train", "gpus": 4}, "a100-2": {"pool": "train", "gpus": 4},
                         "extra-1": {"pool": "dev", "gpus": 1}}, JOBS, Caller("root", admin=True))
    assert states(m) == {"a100-1": "bbff", "a100-2": "fffb", "t4-1": "dd", "extra-1": "f"}
    assert m[1]["gpus"][3]["job"]["name"] == "secret-project" and m[1]["gpus"][3]["job"]["owner"] == "bob"
    assert [n["up"] for n in m] == [True, True, False, True]


def test_share_standing_is_usage_per_weight_among_known_users():
    users = {"alice": {"gpus": 2, "running": 1, "usage_gpu_hours": 3.0},
             "bob": {"gpus": 1, "running": 1, "usage_gpu_hours": 1.0},
             "carol": {"gpus": 0, "running": 0, "usage_gpu_hours": 2.0}}
    mine = share(CONFIG, users, Caller("alice"))
    # alice: 3.0 / weight 2 = 1.5 -> after bob (1.0), before carol (2.0)
    assert mine == {"usage_gpu_hours": 3.0, "weight": 2.0, "half_life_s": 7 * 86400.0, "gpus_held": 2,
                    "running": 1, "place": 2, "of": 3}
    newcomer = share(CONFIG, users, Caller("dave"))
    assert newcomer["place"] == 1 and newcomer["of"] == 4 and newcomer["usage_gpu_hours"] == 0.0
    assert share(CONFIG, None, Caller("alice")) is None  # a policy without usage (fifo)


def test_view_without_a_config_or_snapshot():
    view = cluster_view(None, {}, [], {}, Caller("alice"))
    assert view == {"gpu_map": [], "share": None}


def test_embedded_summary_maps_a_running_job(jupyter_server):
    import sys

    from helpers.servers import wait_until

    client = jupyter_server.client()
    j = client.submit({"kind": "command", "command": [sys.executable, "-c", "import time; time.sleep(30)"],
                       "gpus": 1, "name": "mapped"})
    wait_until(lambda: client.get(j["id"])["state"] == "running", 30, 0.1, "the job to run")
    q = client.queue()
    [node] = q["gpu_map"]
    assert node["node"] == "local" and node["pool"] == "default" and node["up"] is True
    assert [g["state"] for g in node["gpus"]] == ["mine", "free"]
    assert node["gpus"][0]["job"]["id"] == j["id"] and node["gpus"][0]["job"]["name"] == "mapped"
    assert q["share"]["usage_gpu_hours"] > 0 and q["share"]["place"] == 1 and q["share"]["weight"] == 1.0
    client.cancel(j["id"])
