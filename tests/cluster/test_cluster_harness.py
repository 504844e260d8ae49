"""The cluster fixture's start of the API service (conftest.py ``Cluster.start_api``): a port
picked free and taken by another process before the API binds it (another test's server, on a
busy CI machine) does not fail the test; an API that cannot start fails the test at once with
its own words; one that never answers fails with what it was doing."""

from __future__ import annotations

import socket

import pytest


def test_a_port_taken_before_the_api_binds_it_is_replaced(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1}, start=False)
    taken = c.api_port
    with socket.socket() as other:  # not HTTP: as a redis-server of another test would
        other.bind(("127.0.0.1", taken))
        other.listen()
        c.start()
        assert c.api_port != taken
        assert "Address already in use" in c.log("api")
        assert c.client("root").queue() is not None


def test_an_api_that_exits_at_start_fails_with_its_own_message(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.users.write_text("[[user]]\nname = 'alice'\n")  # no token
    with pytest.raises(AssertionError) as e:
        c.start_api()
    assert "exited with 2" in str(e.value) and "gpuqueue api:" in str(e.value), str(e.value)


def test_a_taken_port_on_a_restart_is_not_replaced(cluster_factory) -> None:
    """A restart keeps its port (clients and user servers hold the URL): it fails, naming why."""
    c = cluster_factory(nodes={"n1": 1}, start=False)
    with socket.socket() as other:
        other.bind(("127.0.0.1", c.api_port))
        other.listen()
        with pytest.raises(AssertionError) as e:
            c.start_api()
    assert "Address already in use" in str(e.value), str(e.value)


def test_an_api_that_never_answers_fails_with_its_stacks(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.redis.kill()  # /healthz answers 503 until redis is back
    with pytest.raises(AssertionError) as e:
        c.start_api(timeout=5)
    msg = str(e.value)
    assert "timed out after 5s" in msg and "503" in msg and "redis unavailable" in msg, msg
    assert "Current thread" in msg or "Thread 0x" in msg, msg  # faulthandler's dump of its threads
