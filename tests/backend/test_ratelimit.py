"""The token bucket's arithmetic and the submit_rate keys of the queue file."""

from __future__ import annotations

import pytest

from gpuqueue.queue.config import QueueConfig, load_config
from gpuqueue.queue.errors import BadRequest, RateLimited
from gpuqueue.queue.ratelimit import MemoryBuckets, SubmitLimit, SubmitLimiter, format_rate, parse_rate, take


def test_take_spends_the_burst_then_refills_at_the_rate() -> None:
    lim = SubmitLimit(rate=0.5, burst=2)
    t, s, wait = take(None, None, 100.0, lim)
    assert (t, wait) == (1.0, None)
    t, s, wait = take(t, s, 100.0, lim)
    assert (t, wait) == (0.0, None)
    t, s, wait = take(t, s, 100.5, lim)
    assert wait == pytest.approx(1.5)  # a quarter token back: 1.5 s to a whole one
    t, s, wait = take(0.0, 100.0, 102.0, lim)
    assert wait is None and t == pytest.approx(0.0)
    assert take(0.0, 100.0, 10_000.0, lim)[0] == 1.0  # never more than the burst
    assert take(0.0, 100.0, 50.0, lim)[2] == pytest.approx(2.0)  # a clock stepping back adds nothing


def test_limiter_per_user_and_admin_exemption() -> None:
    cfg = QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}}, "exempt_admins_from_submit_rate": True,
                                      "defaults": {"submit_rate": "1/h", "submit_burst": 1}})
    now = [0.0]
    lim = SubmitLimiter(MemoryBuckets(), clock=lambda: now[0])
    lim.check("alice", False, cfg)
    with pytest.raises(RateLimited) as e:
        lim.check("alice", False, cfg)
    assert e.value.http_status == 429 and e.value.retry_after == pytest.approx(3600)
    assert str(e.value) == ("you are submitting faster than your limit of 1/h (bursts of 1): try again in 3600.0 s "
                            "(the admin sets this limit: submit_rate and submit_burst in the queue config)")
    lim.check("bob", False, cfg)  # his own bucket
    for _ in range(5):
        lim.check("root", True, cfg)


def test_rates_and_their_errors(tmp_path) -> None:
    assert parse_rate("30/min") == 0.5 and parse_rate(2) == 2.0 and parse_rate("100/h") == pytest.approx(100 / 3600)
    assert format_rate(0.5) == "30/min" and format_rate(2.0) == "2/s" and format_rate(1 / 7200) == "0.5/h"
    cfg = QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}},
                                      "defaults": {"submit_rate": 1, "submit_burst": 4},
                                      "users": {"bob": {"max_queued": 5}},
                                      "groups": {"team": {"members": ["carol"], "submit_rate": "6/min"},
                                                 "bulk": {"members": ["dan"], "submit_burst": 50}}})
    assert cfg.submit_limit_for("alice") == SubmitLimit(1.0, 4)
    assert cfg.submit_limit_for("bob") == SubmitLimit(10.0, 100)  # his own table sets no rate: the built-in default
    assert cfg.submit_limit_for("carol") == SubmitLimit(0.1, 4)  # the group's rate, the defaults' burst
    assert cfg.submit_limit_for("dan") == SubmitLimit(1.0, 50)  # the defaults' rate, the group's burst
    f = tmp_path / "q.toml"
    f.write_text('[defaults]\nsubmit_rate = "fast"\n[pools.p]\nnodes = { n = 1 }\n')
    with pytest.raises(BadRequest, match=r"defaults.submit_rate: rate 'fast': write e.g. \"2/s\", \"30/min\" or \"100/h\""):
        load_config(f)
    f.write_text('[defaults]\nsubmit_rate = 0\n[pools.p]\nnodes = { n = 1 }\n')
    with pytest.raises(BadRequest, match="give more than 0 submits"):
        load_config(f)


def test_a_default_rate_holds_unless_lifted() -> None:
    """Without configuration every user has a bucket (100 at once, 10 a second); "unlimited"
    lifts it for everyone or for one user, and a group cannot lift it."""
    cfg = QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}},
                                      "users": {"svc": {"submit_rate": "unlimited"}, "eve": {"max_queued": 5}}})
    assert cfg.submit_limit_for("alice") == SubmitLimit(10.0, 100)
    assert cfg.submit_limit_for("eve") == SubmitLimit(10.0, 100)
    assert cfg.submit_limit_for("svc") is None
    off = QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}}, "defaults": {"submit_rate": "unlimited"}})
    assert off.submit_limit_for("alice") is None
    with pytest.raises(ValueError, match="a group cannot lift its members' limit"):
        QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 1}}},
                                    "groups": {"g": {"members": ["a"], "submit_rate": "unlimited"}}})


def test_the_reference_section_is_true(tmp_path) -> None:
    """docs/config.md "Submit rate limits": its example file and its message."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    section = text.split("## Submit rate limits", 1)[1].split("\n## ", 1)[0]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "q.toml"
    f.write_text(example + '\n[pools.p]\nnodes = { n = 1 }\n')
    cfg = load_config(f)
    assert cfg.submit_limit_for("alice") == SubmitLimit(0.5, 10)
    assert cfg.submit_limit_for("carol") == SubmitLimit(1 / 6, 10)
    lim = SubmitLimiter(MemoryBuckets(), clock=lambda: 0.0)
    for _ in range(10):
        lim.check("alice", False, cfg)
    with pytest.raises(RateLimited) as e:
        lim.check("alice", False, cfg)
    shown = section.split("```\n", 1)[1].split("```", 1)[0].strip()
    assert shown.startswith(f"gpuqueue: {str(e.value).split(' in ')[0]} in ")
