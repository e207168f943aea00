"""protocol.wheel.TimerWheel: keys due at their deadline rounded up to the granularity, never early."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.wheel import TimerWheel

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (key, deadline) to set, or (key, None) to discard
_operations = st.lists(st.tuples(st.integers(0, 15), st.one_of(st.none(), st.floats(0, 100, allow_nan=False))), max_size=60)


def _wanted(operations) -> dict[int, float]:
    """What a plain dict of deadlines says each key is due at after the operations."""
    wanted: dict[int, float] = {}
    for key, deadline in operations:
        if deadline is None:
            wanted.pop(key, None)
        else:
            wanted[key] = deadline
    return wanted


def _wheel(operations, granularity_s: float) -> TimerWheel:
    wheel: TimerWheel[int] = TimerWheel(granularity_s)
    for key, deadline in operations:
        if deadline is None:
            wheel.discard(key)
        else:
            wheel.set(key, deadline)
    return wheel


@BOUNDED
@given(_operations, st.sampled_from([0.25, 0.1, 1.0, 0.3]))
def test_a_punctual_caller_gets_each_key_once_within_a_granularity_after_its_deadline(operations, granularity_s):
    wanted = _wanted(operations)
    wheel = _wheel(operations, granularity_s)
    assert len(wheel) == len(wanted) and all(key in wheel for key in wanted)
    got: dict[int, float] = {}
    last = -1.0
    while (now := wheel.next_deadline()) is not None:
        assert now > last  # each instant once, in order
        last = now
        due = wheel.pop_due(now)
        assert due, "the timer ran to an instant with nothing due"
        for key in due:
            assert key not in got
            got[key] = now
    assert got.keys() == wanted.keys() and len(wheel) == 0
    for key, at in got.items():
        assert wanted[key] <= at and at - wanted[key] <= granularity_s


@BOUNDED
@given(_operations, st.floats(0, 120, allow_nan=False))
def test_a_late_caller_gets_everything_due_and_nothing_early(operations, now):
    wanted = _wanted(operations)
    wheel = _wheel(operations, 0.25)
    due = wheel.pop_due(now)
    assert len(due) == len(set(due))
    assert all(wanted[key] <= now for key in due)  # never early
    assert {key for key, deadline in wanted.items() if deadline <= now - 0.25} <= set(due)  # at most a granularity late
    assert all(key not in wheel for key in due) and len(wheel) == len(wanted) - len(due)


def test_setting_a_key_again_moves_it_and_a_discarded_key_never_falls_due():
    wheel: TimerWheel[str] = TimerWheel(0.25)
    wheel.set("a", 10.0)
    wheel.set("b", 5.0)
    wheel.set("a", 3.1)  # sooner: a request sent after a liveness check was set
    assert wheel.next_deadline() == 3.25
    wheel.discard("a")
    wheel.discard("a")  # twice: nothing happens
    assert wheel.next_deadline() == 5.0  # the emptied slot is not a wake-up
    assert wheel.pop_due(100.0) == ["b"]
    assert wheel.next_deadline() is None and len(wheel) == 0


def test_a_deadline_on_the_grid_is_due_on_its_own_tick_despite_floating_point():
    wheel: TimerWheel[int] = TimerWheel(0.1)
    wheel.set(1, 3 * 0.1)  # 0.30000000000000004, and 0.30000000000000004 / 0.1 is 3.0000000000000004
    wheel.set(2, 0.7)  # 0.7 / 0.1 is 6.999999999999999
    assert wheel.next_deadline() == 3 * 0.1
    assert wheel.pop_due(3 * 0.1) == [1]
    assert wheel.pop_due(0.6) == [] and wheel.pop_due(7 * 0.1) == [2]


def test_keys_due_in_one_slot_come_out_in_the_order_they_were_set():
    wheel: TimerWheel[int] = TimerWheel(1.0)
    for key in (3, 1, 2):
        wheel.set(key, 4.5)
    assert wheel.pop_due(5.0) == [3, 1, 2]


def test_a_granularity_must_be_positive():
    with pytest.raises(ValueError):
        TimerWheel(0.0)
