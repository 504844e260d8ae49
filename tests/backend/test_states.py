"""The groups of job states (``gpuqueue.queue.states``), defined once: every state is in exactly
one of waiting, active and terminal; live is waiting plus active; the JSON the API sends
matches the enums."""

from __future__ import annotations

from gpuqueue.queue.states import (
    ACTIVE_STATES,
    LIVE_STATES,
    STATE_GROUPS,
    TERMINAL_STATES,
    WAITING_STATES,
    JobState,
)


def test_every_state_is_in_exactly_one_group() -> None:
    groups = [set(WAITING_STATES), set(ACTIVE_STATES), set(TERMINAL_STATES)]
    for state in JobState:
        assert sum(state in g for g in groups) == 1, state


def test_live_is_waiting_then_active_and_flags_agree() -> None:
    assert LIVE_STATES == WAITING_STATES + ACTIVE_STATES
    for state in JobState:
        assert state.is_active == (state in ACTIVE_STATES)
        assert state.is_terminal == (state in TERMINAL_STATES)


def test_the_api_groups_are_the_enum_values_in_order() -> None:
    assert STATE_GROUPS == {
        "waiting": ["queued", "retrying", "preempted"],
        "active": ["starting", "running"],
        "live": ["queued", "retrying", "preempted", "starting", "running"],
        "terminal": ["succeeded", "failed", "cancelled", "timed_out"],
    }
