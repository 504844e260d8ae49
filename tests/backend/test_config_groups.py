"""A user's fair-share group (``QueueConfig.group_of``): the group whose ``members`` list the
user, else the first group in file order named as one of the user's JupyterHub groups, else
none; a job's record keeps the group it was submitted in (``lifecycle.job_request``)."""

from __future__ import annotations

from typing import Any

import pytest

from gpuqueue.queue.config import QueueConfig, load_config
from gpuqueue.queue.errors import BadRequest
from gpuqueue.queue.lifecycle import job_request
from gpuqueue.queue.models import JobRecord, JobSpec
from gpuqueue.queue.ratelimit import SubmitLimit


def cfg(**groups: dict[str, Any]) -> QueueConfig:
    return QueueConfig.model_validate({"pools": {"p": {"nodes": {"n": 4}}}, "groups": groups})


def test_members_are_optional_and_a_group_without_any_is_filled_from_the_hub(tmp_path):
    p = tmp_path / "queue.toml"
    p.write_text('[pools.p]\nnodes = { n = 4 }\n[groups.ml]\nmax_gpus = 2\n[groups.cv]\nmembers = ["carol"]\n')
    c = load_config(p)
    assert c.groups["ml"].members == []
    assert c.group_of("alice") is None  # no hub groups: no group
    assert c.group_of("alice", ["ml"]) == "ml"


def test_explicit_members_win_over_hub_groups():
    c = cfg(ml={}, cv={"members": ["carol"]})
    assert c.group_of("carol", ["ml"]) == "cv"


def test_the_first_group_in_file_order_among_the_users_hub_groups():
    c = cfg(zeta={}, alpha={}, mid={})
    assert c.group_of("u", ["mid", "alpha"]) == "alpha"  # alpha comes before mid in the file
    assert c.group_of("u", ["alpha", "zeta"]) == "zeta"  # and zeta before both
    assert c.group_of("u", ["nobody", "admins"]) is None  # hub groups the config does not name


def test_a_user_in_two_member_lists_is_still_refused(tmp_path):
    p = tmp_path / "queue.toml"
    p.write_text('[pools.p]\nnodes = { n = 4 }\n[groups.a]\nmembers = ["u"]\n[groups.b]\nmembers = ["u"]\n')
    with pytest.raises(BadRequest, match="a user belongs to at most one group"):
        load_config(p)


def test_a_hub_group_gives_its_submit_rate():
    c = cfg(ml={"submit_rate": "6/min"})
    assert c.submit_limit_for("alice", ["ml"]) == SubmitLimit(0.1, 100)  # the group's rate, the default burst
    assert c.submit_limit_for("alice") == SubmitLimit(10.0, 100)  # in no group: the built-in default


def test_the_scheduler_is_told_the_group_the_record_holds():
    c = cfg(ml={}, cv={"members": ["carol"]})
    spec = JobSpec(kind="command", command=["true"])
    assert job_request(JobRecord(id="j", owner="alice", spec=spec, group="ml"), c).group == "ml"
    assert job_request(JobRecord(id="j", owner="carol", spec=spec, group=""), c).group == ""  # none
    # a record made before groups were stored: the config's members
    assert job_request(JobRecord(id="j", owner="carol", spec=spec), c).group == "cv"
