"""A token given back (a refused submit) returns to the bucket, never above its burst."""

from __future__ import annotations

from gpuqueue.queue.ratelimit import MemoryBuckets, SubmitLimit


def test_a_given_back_token_is_there_again_but_never_above_the_burst() -> None:
    b = MemoryBuckets()
    limit = SubmitLimit(rate=1 / 3600, burst=2)
    assert b.apply("u", limit, 0.0) is None
    b.give_back("u", limit, 0.0)
    assert b.apply("u", limit, 1.0) is None and b.apply("u", limit, 1.0) is None  # both of the burst
    assert b.apply("u", limit, 1.0) is not None
    b.give_back("v", limit, 0.0)
    b.give_back("v", limit, 0.0)  # a full bucket stays full
    assert [b.apply("v", limit, 1.0) is None for _ in range(3)] == [True, True, False]
