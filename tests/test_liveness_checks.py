"""The simulator's liveness checks: one timer calls every link's check once a period, spread over it, none skipped."""

from collections import Counter

from twisted.internet import task

from simulator.liveness import LivenessChecks, checks_for


def _calls(checks: LivenessChecks, count: int) -> tuple[Counter, list]:
    seen: Counter = Counter()
    actions = []
    for n in range(count):
        action = (lambda n=n: seen.update([n]))
        checks.add(action)
        actions.append(action)
    return seen, actions


def test_each_action_is_called_once_a_period_and_the_period_is_shared_out():
    clock = task.Clock()
    seen, _ = _calls(checks_for(clock, 10.0), 20)
    per_turn = []
    for _ in range(10):
        before = sum(seen.values())
        clock.advance(1.0)
        per_turn.append(sum(seen.values()) - before)
    assert seen == Counter(range(20))  # every one once in its first period
    assert max(per_turn) < 20  # not all at once
    clock.advance(10.0)
    assert seen == Counter({n: 2 for n in range(20)})


def test_a_reactor_late_by_periods_calls_each_once_and_stays_in_step():
    clock = task.Clock()
    checks = checks_for(clock, 10.0)
    seen, _ = _calls(checks, 5)
    clock.advance(5.5)
    seen.clear()
    clock.advance(25.0)  # a busy reactor: 25 turns due at once
    assert seen == Counter(range(5))
    seen.clear()
    for _ in range(10):
        clock.advance(1.0)
    assert seen == Counter(range(5))


def test_a_discarded_action_is_not_called_and_the_last_one_stops_the_timer():
    clock = task.Clock()
    checks = checks_for(clock, 10.0)
    seen, actions = _calls(checks, 3)
    checks.discard(actions[0])
    clock.advance(10.0)
    assert seen == Counter([1, 2])
    checks.discard(actions[1])
    checks.discard(actions[2])
    checks.discard(actions[2])  # twice: nothing happens
    assert clock.getDelayedCalls() == []
    assert checks_for(clock, 10.0) is not checks  # a fresh checks next time


def test_an_action_that_fails_does_not_stop_the_others():
    clock = task.Clock()
    checks = checks_for(clock, 10.0)

    def broken():
        raise RuntimeError("a bug in one link's check")

    checks.add(broken)
    seen, _ = _calls(checks, 2)
    clock.advance(10.0)
    clock.advance(10.0)
    assert seen == Counter({0: 2, 1: 2})
