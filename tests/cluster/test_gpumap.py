"""The queue summary's GPU map and share standing in cluster mode: real daemon, workers and API;
each user sees her own jobs, another user's GPUs only as busy, an admin everything."""

from __future__ import annotations

from helpers.servers import wait_until


def test_cluster_gpu_map_per_user(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 2, "n2": 1})
    a = c.submit("alice", ticks=300, gpus=2, name="alice-big")
    b = c.submit("bob", ticks=300, gpus=1, name="bob-secret")
    root = c.client("root")
    wait_until(lambda: all(root.get(j)["state"] == "running" for j in (a, b)), 30, 0.1, "both jobs running")

    def by_node(user: str) -> dict[str, list[dict]]:
        return {n["node"]: n["gpus"] for n in c.client(user).queue()["gpu_map"]}

    alice = wait_until(lambda: (m := by_node("alice")) and all(g["state"] != "free" for gs in m.values() for g in gs) and m,
                       10, 0.1, "the map to show both jobs")
    assert [g["state"] for g in alice["n1"]] == ["mine", "mine"] and alice["n2"][0]["state"] == "busy"
    assert alice["n1"][0]["job"]["name"] == "alice-big" and alice["n2"][0]["job"] is None
    bob = by_node("bob")
    assert [g["state"] for g in bob["n1"]] == ["busy", "busy"] and bob["n2"][0]["job"]["id"] == b
    assert "alice" not in repr(bob)
    admin = by_node("root")
    assert {g["job"]["owner"] for gs in admin.values() for g in gs} == {"alice", "bob"}
    # the share standing comes from the daemon's snapshot (published every 0.5 s)
    mine = wait_until(lambda: (s := c.client("alice").queue()["share"]) and s["gpus_held"] == 2 and s, 10, 0.1,
                      "alice's share to count her GPUs")
    assert mine["usage_gpu_hours"] > 0 and mine["of"] == 2 and mine["running"] == 1
    # a node that stops answering shows as down
    c.kill("worker-n2")
    wait_until(lambda: not {n["node"]: n for n in root.queue()["gpu_map"]}["n2"]["up"], 30, 0.2, "n2 down")
    for j in (a, b):
        root.cancel(j)
