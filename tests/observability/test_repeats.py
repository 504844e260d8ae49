"""The one "log a failure once, then count it" (observability/repeats.py) that the worker, the
scheduler daemon and the embedded server's tail loop use: what their logs read when a condition
comes again and again, changes, and ends."""

from __future__ import annotations

import logging

import pytest

from gpuqueue.observability.repeats import Repeats


def test_a_condition_is_logged_once_per_message_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Five failures, two messages: two lines for them, one count, and the end naming all five
    tries (it named only the last message's two, as if the outage had begun with it)."""
    log = logging.getLogger("gpuqueue.test_repeats")
    r = Repeats(log)
    with caplog.at_level(logging.INFO, logger=log.name):
        for text in ("down (refused)", "down (refused)", "down (refused)", "down (timeout)", "down (timeout)"):
            r.seen(text)
        assert r.again == 1 and r.rounds == 5
        assert r.over("up again")
        assert not r.over("up again")  # said once
    said = [rec.getMessage() for rec in caplog.records]
    assert said == ["down (refused)", "(the message before came 2 more times)", "down (timeout)",
                    "up again (after 5 failed tries)"], said


def test_the_wait_before_the_next_try_doubles_up_to_its_limit() -> None:
    """The wait after each failure in a row: 0.1 s doubled up to 10 s, whatever the message, and
    still 10 s after thousands of failures (0.1 * 2 ** 1100 raised OverflowError)."""
    r = Repeats(logging.getLogger("gpuqueue.test_repeats"))
    waits = []
    for i in range(1100):
        r.seen(f"error {i % 3}")
        waits.append(r.backoff(0.1, 10.0))
    assert waits[:8] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0] and waits[-1] == 10.0, waits[:8]


def test_a_caller_words_its_own_lines(caplog: pytest.LogCaptureFixture) -> None:
    """The embedded tail loop's lines: the error with its traceback once, how often it came when
    it changes, and its end with how many rounds failed, in how long, and the last error."""
    log = logging.getLogger("gpuqueue.test_repeats")
    r = Repeats(log, before="reading job events: the error before came %d more times")
    with caplog.at_level(logging.INFO, logger=log.name):
        for e in (OSError("disk"), OSError("disk"), KeyError("x")):
            r.seen(f"{type(e).__name__}: {e}", logging.ERROR, line=f"reading job events failed: {e}", exc_info=e)
        r.over("job events are read again", after=", after {rounds} failed rounds (last: {last})")
    said = [(rec.levelname, rec.getMessage(), rec.exc_info is not None) for rec in caplog.records]
    assert said == [("ERROR", "reading job events failed: disk", True),
                    ("WARNING", "reading job events: the error before came 1 more times", False),
                    ("ERROR", "reading job events failed: 'x'", True),
                    ("INFO", "job events are read again, after 3 failed rounds (last: KeyError: 'x')", False)], said
