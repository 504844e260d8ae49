"""Config files and durations: bad input gets a message naming the fix."""

from __future__ import annotations

import pytest

from gpuqueue.queue.config import load_config, single_node_config
from gpuqueue.queue.durations import format_duration, parse_duration
from gpuqueue.queue.errors import BadRequest


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("2d", 172800), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "2x", "", "-5", "0", "1h-", "inf", "nan", "1e9"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("value", ["9" * 400, "400000d", float("inf"), float("nan"), 10**400, "367d"])
def test_durations_are_finite_and_bounded(value):
    with pytest.raises(ValueError, match="too long|positive") as e:
        parse_duration(value, max_s=366 * 86400)
    assert len(str(e.value)) < 160  # a 400-digit number is not echoed back whole


def test_format_duration():
    assert format_duration(45) == "45s" and format_duration(3900) == "1h05m"


def test_config_file(tmp_path):
    p = tmp_path / "q.toml"
    p.write_text('[pools.dev]\nnodes = { "dev-1" = 2 }\npreemptible = true\nmax_runtime = "1h"\n'
                 '[pools.prod]\nnodes = { "gpu-1" = 8, "gpu-2" = 8 }\nmax_runtime = "48h"\n')
    cfg = load_config(p)
    assert cfg.default_pool == "dev"
    assert cfg.pools["dev"].max_runtime == 3600 and cfg.pools["prod"].total_gpus == 16


@pytest.mark.parametrize(
    "text, message",
    [
        ("[pools.dev\n", "not valid TOML"),
        ("[pools.dev]\nnodes = {}\n", "at least one node"),
        ('[pools.dev]\nnodes = { "a" = 2 }\nmax_runtime = "soon"\n', "max_runtime"),
        ('[pools.dev]\nnodes = { "a" = 2 }\ncolour = "red"\n', "colour"),
        ('[pools.a]\nnodes = { "n" = 2 }\n[pools.b]\nnodes = { "n" = 2 }\n', "is in pools"),
        ('[pools.dev]\nnodes = { "a" = 2 }\nmax_runtime = inf\n', "max_runtime"),
        ('[defaults]\nweight = nan\n[pools.dev]\nnodes = { "a" = 2 }\n', "defaults.weight"),
        ('max_lost_attempts = 0\n[pools.dev]\nnodes = { "a" = 2 }\n', "max_lost_attempts"),
        # periods too short to mean anything ran the scheduler's timers away, or divided by 0
        ('[pools.dev]\nnodes = { "a" = 2 }\n[policy]\nhalf_life = 0\n', "policy.half_life: must be at least 60 s"),
        ('[pools.dev]\nnodes = { "a" = 2 }\n[policy]\ncharge_ahead = 0.001\n',
         "policy.charge_ahead: must be at least 60 s, e.g. 1h"),
        ('[pools.dev]\nnodes = { "a" = 2 }\nstarvation_timeout = 1e-300\n',
         "pools.dev.starvation_timeout: must be at least 1 s, e.g. 1h, or 0"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    p = tmp_path / "q.toml"
    p.write_text(text)
    with pytest.raises(BadRequest) as e:
        load_config(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_zero_turns_starvation_and_charging_ahead_off(tmp_path):
    p = tmp_path / "q.toml"
    p.write_text('[pools.dev]\nnodes = { "a" = 2 }\nstarvation_timeout = 0\n[policy]\ncharge_ahead = 0\n')
    cfg = load_config(p)
    assert cfg.pools["dev"].starvation_timeout == 0 and cfg.policy.charge_ahead == 0


def test_missing_config_file(tmp_path):
    with pytest.raises(BadRequest, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_single_node_default():
    cfg = single_node_config(4)
    assert cfg.pools["default"].nodes == {"local": 4}


def test_a_jobs_pool_defaults_fill_what_it_left_unset(tmp_path):
    """docs/config.md: a pool's default_timeout is the time limit of a job that sets none, and its
    preemptible flag the job's; the file's retries (default 3) a job's that sets none
    (docs/job-states.md); the first pool is the default one. What the job sets stays."""
    from gpuqueue.queue.lifecycle import with_defaults
    from gpuqueue.queue.models import JobSpec

    (tmp_path / "q.toml").write_text('[pools.dev]\nnodes = { n1 = 1 }\ndefault_timeout = "30m"\npreemptible = true\n'
                                     '[pools.prod]\nnodes = { n2 = 1 }\n')
    cfg = load_config(tmp_path / "q.toml")
    bare = with_defaults(JobSpec(kind="command", command=["true"]), cfg)
    assert (bare.pool, bare.timeout_s, bare.preemptible, bare.retries) == ("dev", 1800, True, 3)
    own = with_defaults(JobSpec(kind="command", command=["true"], timeout_s=60, retries=0, preemptible=False), cfg)
    assert (own.timeout_s, own.preemptible, own.retries) == (60, False, 0)
    prod = with_defaults(JobSpec(kind="command", command=["true"], pool="prod"), cfg)
    assert (prod.timeout_s, prod.preemptible) == (None, False)
