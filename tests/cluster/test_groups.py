"""With the users file (``--users FILE``) a user's group comes only from ``members`` lists: the
job record keeps the group the user was in at submit, "" for none."""

from __future__ import annotations

import time

from gpuqueue.rest.client import Client, ServerInfo

from .conftest import PY, TOKENS


def test_groups_come_from_members_lists_only(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1}, config_extra='[groups.ml]\n[groups.team]\nmembers = ["bob"]\n')
    time.sleep(2.1)  # the API has read the daemon's config (cached 2 s)
    spec = {"kind": "command", "gpus": 0, "command": [PY, "-c", "pass"]}
    groups = {user: Client(ServerInfo(c.url, TOKENS[user]), timeout=10).submit(spec)["group"]
              for user in ("alice", "bob")}
    assert groups == {"alice": "", "bob": "team"}  # ml, a group without members, takes no one here
