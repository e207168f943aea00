"""LinkTimers: one reactor timer runs to the wheel's next deadline and calls every session due."""

from twisted.internet import task

from gateway.native.link_timers import GRANULARITY_S, LinkTimers


def test_one_timer_runs_to_the_earliest_deadline_and_moves_when_a_sooner_one_comes():
    clock = task.Clock()
    timers = LinkTimers(clock)
    calls = []
    timers.set(lambda: calls.append("later"), 10.0)
    timers.set(lambda: calls.append("sooner"), 3.1)
    (timer,) = clock.getDelayedCalls()
    assert timer.getTime() == 3.25  # rounded up to the granularity
    clock.advance(3.25)
    assert calls == ["sooner"]
    (timer,) = clock.getDelayedCalls()
    assert timer.getTime() == 10.0
    clock.advance(10.0)
    assert calls == ["sooner", "later"] and clock.getDelayedCalls() == []


def test_an_action_that_fails_does_not_stop_the_others_and_what_they_set_again_is_kept():
    clock = task.Clock()
    timers = LinkTimers(clock)
    calls, soon_calls = [], []

    def broken():
        raise RuntimeError("a bug in one session's look at the time")

    def again():
        calls.append(clock.seconds())
        timers.set(again, clock.seconds() + 1.0)

    def soon():  # due in the same turns, then sooner than ``again``: the timer must move to it once
        soon_calls.append(clock.seconds())
        timers.set(soon, clock.seconds() + 0.5)

    for action in (broken, again, soon):
        timers.set(action, 1.0)
    armed = []
    call_later = clock.callLater
    clock.callLater = lambda *args: armed.append(args[0]) or call_later(*args)
    clock.pump([GRANULARITY_S] * 12)
    assert calls == [1.0, 2.0, 3.0] and soon_calls == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert len(timers) == 2 and len(clock.getDelayedCalls()) == 1
    assert armed == [0.5] * 5  # one reactor timer a turn, armed after every action due ran


def test_the_last_entry_discarded_cancels_the_timer():
    clock = task.Clock()
    timers = LinkTimers(clock)
    action = (lambda: None)
    timers.set(action, 5.0)
    timers.discard(action)
    timers.discard(action)  # twice: nothing happens
    assert clock.getDelayedCalls() == []
