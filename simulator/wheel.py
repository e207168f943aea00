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
        self._next = 0  # the bucket the next turn calls
        self._added = 0  # actions go into the buckets in turn: links that came up together are spread
        self._timer: task.LoopingCall | None = None

    def add(self, action) -> None:
        bucket = self._buckets[self._added % self.buckets]
        self._added += 1
        bucket[action] = None
        self._bucket_of[action] = bucket
        if self._timer is None:
            self._timer = task.LoopingCall.withCount(self._turns)
            self._timer.clock = self.clock
            self._timer.start(self.period_s / self.buckets, now=False)

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

    def _turns(self, due: int) -> None:
        """A reactor that was busy calls the timer late, once for the turns it missed: each missed
        bucket is called now (each at most once), and the wheel stays in step with the clock."""
        for _ in range(min(due, self.buckets)):
            self._turn()
        self._next = (self._next + max(0, due - self.buckets)) % self.buckets

    def _turn(self) -> None:
        bucket = self._buckets[self._next]
        self._next = (self._next + 1) % self.buckets
        for action in list(bucket):
            if action not in bucket:
                continue  # an earlier action of this turn took it out
            try:
                action()
            except Exception:  # one link's fault must not stop the others' keepalives
                log.failure("a liveness check failed")
