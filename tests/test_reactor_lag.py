"""ReactorLag: how late the reactor runs its timers (task.Clock: a turn that held the reactor is a jump)."""

from twisted.internet import task

from gateway.metrics import Metrics
from gateway.process.lag import ReactorLag


def lag_on_a_clock():
    clock, metrics = task.Clock(), Metrics()
    lag = ReactorLag(clock, metrics.reactor_lag)
    lag.start()
    return lag, clock, metrics


def test_a_reactor_on_time_is_not_late():
    lag, clock, metrics = lag_on_a_clock()
    clock.pump([lag.interval_s] * 10)
    clock.advance(0.1)  # the next timer is not due yet: early is not late
    assert lag.late_since(0.0) == 0.0
    assert metrics.value(metrics.reactor_lag) == 0.0


def test_a_turn_that_held_the_reactor_shows_as_lateness_in_the_gauge_and_since_then():
    lag, clock, metrics = lag_on_a_clock()
    clock.pump([lag.interval_s] * 4)  # 2.0 s, on time
    clock.advance(3.0)  # one turn took 3 s: the timer due at 2.5 runs at 5.0
    assert metrics.value(metrics.reactor_lag) == 2.5
    assert lag.late_since(1.5) == 2.5
    clock.pump([lag.interval_s] * 4)
    assert metrics.value(metrics.reactor_lag) == 0.0  # on time again
    assert lag.late_since(5.5) == 0.0 and lag.late_since(4.0) == 2.5


def test_a_timer_overdue_right_now_counts_before_it_ran():
    lag, clock, _ = lag_on_a_clock()
    clock.rightNow += 4.0  # the reactor is busy: time passed, the timer due at 0.5 has not run yet
    assert lag.late_since(0.0) == 3.5


def test_stopped_it_leaves_no_timer():
    lag, clock, _ = lag_on_a_clock()
    lag.stop()
    assert clock.getDelayedCalls() == []
