"""The arithmetic of what one user's finished jobs keep in the store (queue/bounds.py), and that
the new knobs travel in the config the scheduler publishes to the API."""

from __future__ import annotations

import json

from gpuqueue.queue.bounds import dropped_for_newer, results_to_drop, too_big_to_keep
from gpuqueue.queue.config import GROWING, QueueConfig

MB = 1_000_000


def test_the_oldest_results_go_first_until_the_new_one_fits() -> None:
    kept = {"b": (2 * MB, 20.0), "a": (2 * MB, 10.0), "c": (1 * MB, 30.0)}
    assert results_to_drop(kept, 1 * MB, 6) == []  # 6 MB: fits
    assert results_to_drop(kept, 2 * MB, 6) == ["a"]  # 7 MB: the oldest goes
    assert results_to_drop(kept, 4 * MB, 6) == ["a", "b"]
    assert results_to_drop(kept, 6 * MB, 6) == ["a", "b", "c"]
    assert results_to_drop(kept, 6 * MB + 1, 6) is None  # over the whole limit: only it is not kept
    assert results_to_drop({}, 0, 0.001) == []
    assert "max_results_mb" in dropped_for_newer(3 * MB, 2048) and "2048 MB" in dropped_for_newer(3 * MB, 2048)
    assert "over the 4 MB" in too_big_to_keep(5 * MB, 4)


def test_the_defaults_and_an_unlimited_rate_survive_publishing() -> None:
    cfg = QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}},
                                      "users": {"svc": {"submit_rate": "unlimited", "max_finished": 5}}})
    seen = QueueConfig.model_validate(json.loads(cfg.model_dump_json()), context=GROWING)  # as the API reads it
    assert seen.submit_limit_for("svc") is None and seen.limits_for("svc").max_finished == 5
    d = seen.limits_for("alice")
    assert (d.submit_rate, d.submit_burst, d.max_results_mb, d.max_finished) == (10.0, 100, 2048.0, 10_000)
