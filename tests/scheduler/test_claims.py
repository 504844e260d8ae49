"""Claims.state / restore: holding the same reservations again gives the claims adding them did."""

from __future__ import annotations

from gpuqueue.scheduler.base import JobRequest
from gpuqueue.scheduler.fairshare.records import INF, Job
from gpuqueue.scheduler.fairshare.reservations import Claims, Reservation


def _res(i: int, shadow: float, spare: dict[str, int], starved: bool = True) -> Reservation:
    job = Job(JobRequest(f"j{i}", "u", "prod", gpus=4), i)
    return Reservation(job, starved, True, shadow, spare, list(spare))


def _view(c: Claims) -> tuple:
    return (list(c.by_node.items()), c.all, c.min_shadow, c.max_shadow, c.starved, c.version)


def test_restore_is_adding_them_again():
    made = [_res(1, 50.0, {"n1": 2, "n2": 0}), _res(2, INF, {"n3": 4}), _res(3, 20.0, {}),
            _res(4, 80.0, {"n4": 1}, starved=False)]
    added = Claims()
    for r in made:
        added.add(r)
    state = added.state()
    added.by_node["n9"] = made[0]  # what a pass does later changes neither the state ...
    added.all.append(made[0])
    again = Claims()
    for r in made:
        again.add(r)
    restored = Claims()
    restored.restore(state)
    assert _view(restored) == _view(again)
    restored.by_node.pop("n1")  # ... nor does the pass that restored it
    other = Claims()
    other.restore(state)
    assert _view(other) == _view(again)
