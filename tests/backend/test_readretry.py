"""When a client of the API asks again for a refused read (``gpuqueue.rest.readretry``): the one
rule the CLI/kernel client and a user's Jupyter server both follow."""

from __future__ import annotations

from gpuqueue.rest.readretry import MAX_PAUSE_S, READ_RETRY_S, read_retry_pause


def test_only_a_read_refused_429_is_asked_again_at_its_retry_after_within_10_s() -> None:
    assert read_retry_pause("GET", 429, "1", 0.0) == 1.0
    assert read_retry_pause("GET", 429, None, 0.0) == 1.0  # no Retry-After: a second
    assert read_retry_pause("GET", 429, "Wed, 21 Oct 2026 07:28:00 GMT", 0.0) == 1.0  # a proxy's date
    assert read_retry_pause("GET", 429, "nan", 0.0) == 1.0
    assert read_retry_pause("GET", 429, "10", 0.0) == MAX_PAUSE_S  # a follow's bound asks 10 s
    assert read_retry_pause("GET", 429, "0", 0.0) == 0.1
    assert read_retry_pause("GET", 429, "1", READ_RETRY_S - 0.5) == 0.5  # never past the total
    assert read_retry_pause("GET", 429, "1", READ_RETRY_S) is None  # then the 429 reaches the user
    # a write is never sent again by itself (a submit twice is two jobs), nor another error
    for method in ("POST", "DELETE", "PUT"):
        assert read_retry_pause(method, 429, "1", 0.0) is None
    for status in (200, 404, 500, 503):
        assert read_retry_pause("GET", status, "1", 0.0) is None
