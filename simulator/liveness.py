"""LivenessChecks: every link's keepalive rule asked once a period, on one wheel and one timer.

A fleet worker holds thousands of links, and each asked its Connection for the keepalive rule
every ``keepalive_s / 3`` through a LoopingCall of its own: an entry in the reactor's heap of
timers (which every other timer then sorts against), a Deferred and a reschedule, per link and
period. Here each link's next check is an entry on a ``protocol.wheel.TimerWheel`` (the wheel
the gateway's sessions use; here its granularity is a tenth of the period), and one timer per
reactor and period runs to the wheel's next deadline. Links added together are spread over their
first period, so their checks do not fall due at once for ever after.
"""

from collections.abc import Callable

from twisted.logger import Logger

from protocol.wheel import TimerWheel

log = Logger(namespace="simulator")

SPREAD = 10  # a period's ticks: links added in turn are first checked a tick apart

_checks: dict = {}  # (clock, period_s) -> LivenessChecks, while they hold a link


def checks_for(clock, period_s: float) -> "LivenessChecks":
    """The checks of this reactor (or test clock) for this period, made on first use."""
    checks = _checks.get((clock, period_s))
    if checks is None:
        checks = _checks[(clock, period_s)] = LivenessChecks(clock, period_s)
    return checks


class LivenessChecks:
    """Calls each action it holds once a period, on a grid of tenths of it (so that rounding
    never adds up); the first time within a period of adding it (the keepalive rule asks at
    least that often; sooner is harmless)."""

    def __init__(self, clock, period_s: float):
        self.clock = clock
        self.period_s = period_s
        self._wheel: TimerWheel[Callable[[], None]] = TimerWheel(period_s / SPREAD)
        self._tick_of: dict[Callable[[], None], int] = {}  # action -> the tenth of a period it is due at
        self._added = 0
        self._timer = None

    def add(self, action: Callable[[], None]) -> None:
        self._set(action, int(self.clock.seconds() // self._wheel.granularity_s) + 1 + self._added % SPREAD)
        self._added += 1
        self._arm()

    def discard(self, action: Callable[[], None]) -> None:
        if self._tick_of.pop(action, None) is None:
            return
        self._wheel.discard(action)
        if not self._tick_of:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if _checks.get((self.clock, self.period_s)) is self:
                del _checks[(self.clock, self.period_s)]

    def _set(self, action: Callable[[], None], tick: int) -> None:
        self._tick_of[action] = tick
        self._wheel.set(action, tick * self._wheel.granularity_s)

    def _arm(self) -> None:
        deadline = self._wheel.next_deadline()
        if self._timer is not None and deadline is not None and self._timer.getTime() <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if deadline is None else self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._run)

    def _run(self) -> None:
        """Each action due now, once, however late the reactor: each then keeps its place in the
        period (whole periods a busy reactor let go by are skipped, not made up)."""
        self._timer = None
        now = self.clock.seconds()
        now_tick = now / self._wheel.granularity_s
        for action in self._wheel.pop_due(now):
            tick = self._tick_of.get(action)
            if tick is None:
                continue  # an earlier action of this turn discarded it
            self._set(action, tick + SPREAD * (1 + max(0, int((now_tick - tick) // SPREAD))))
            try:
                action()
            except Exception:  # one link's fault must not stop the others' keepalives
                log.failure("a liveness check failed")
        self._arm()
