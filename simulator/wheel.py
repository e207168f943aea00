"""One timer for many links: each link's keepalive rule checked every period by a shared wheel.

A fleet worker holds thousands of links, and each asked its Connection for the keepalive rule
every ``keepalive_s / 3`` through a LoopingCall of its own: an entry in the reactor's heap of
timers (which every other timer then sorts against), a Deferred and a reschedule, per link and
period. A ``Wheel`` is one LoopingCall per reactor and period that checks its links a bucket at a
time, so the work is spread over the period instead of falling due at once.
"""

from twisted.internet import task
from twisted.logger import Logger

log = Logger(namespace="simulator")

_wheels: dict = {}  # (clock, period_s) -> Wheel, while it holds a link


def wheel_for(clock, period_s: float) -> "Wheel":
    """The wheel of this reactor (or test clock) for this period, made on first use."""
    wheel = _wheels.get((clock, period_s))
    if wheel is None:
        wheel = _wheels[(clock, period_s)] = Wheel(clock, period_s)
    return wheel


class Wheel:
    """Calls each action it holds once a period; the first time within a period of adding it
    (the keepalive rule asks at least that often; sooner is harmless)."""

    buckets = 10

    def __init__(self, clock, period_s: float):
        self.clock = clock
        self.period_s = period_s
        self._buckets: list[dict] = [{} for _ in range(self.buckets)]  # dicts as ordered sets
        self._bucket_of: dict = {}  # action -> its bucket
        self._interval_s = period_s / self.buckets
        self._started = 0.0  # when the timer started; turn k (from 1) ends k intervals after it
        self._turns_done = 0
        self._added = 0  # actions go into the buckets in turn: links that came up together are spread
        self._timer: task.LoopingCall | None = None

    def add(self, action) -> None:
        bucket = self._buckets[self._added % self.buckets]
        self._added += 1
        bucket[action] = None
        self._bucket_of[action] = bucket
        if self._timer is None:
            self._started, self._turns_done = self.clock.seconds(), 0
            self._timer = task.LoopingCall(self._catch_up)
            self._timer.clock = self.clock
            self._timer.start(self._interval_s, now=False)

    def discard(self, action) -> None:
        bucket = self._bucket_of.pop(action, None)
        if bucket is None:
            return
        del bucket[action]
        if not self._bucket_of:
            self._timer.stop()
            self._timer = None
            if _wheels.get((self.clock, self.period_s)) is self:
                del _wheels[(self.clock, self.period_s)]

    def _catch_up(self) -> None:
        """The buckets whose turns have come, by the clock: a reactor that was busy calls the
        timer late, once for the turns it missed, and each missed bucket is called now (at most
        once), so every link keeps its period."""
        due = int((self.clock.seconds() - self._started) / self._interval_s + 1e-6)  # 2.9 / 0.1 is 28.999...
        for turn in range(max(self._turns_done, due - self.buckets), due):
            self._call(self._buckets[turn % self.buckets])
        self._turns_done = due

    def _call(self, bucket: dict) -> None:
        for action in list(bucket):
            if action not in bucket:
                continue  # an earlier action of this turn took it out
            try:
                action()
            except Exception:  # one link's fault must not stop the others' keepalives
                log.failure("a liveness check failed")
