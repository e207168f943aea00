"""How late the ingest process's reactor runs: the gateway's own overload, told from the database's.

A reactor busy with thousands of links runs every timer and every thread's result late. A group
commit that took the writer milliseconds then looks, from the reactor, like one the database held
for seconds, and the log blamed the database. A timer every ``interval_s`` measures how late it
fires; ``gateway_reactor_lag_seconds`` shows the latest, and ``late_since`` what the event log
needs to say which of the two held a commit up.
"""

from collections import deque


class ReactorLag:
    interval_s = 0.5
    kept = 240  # measurements: two minutes' worth, longer than any commit worth a line

    def __init__(self, clock, gauge):
        self._clock = clock
        self._gauge = gauge
        self._due: float | None = None
        self._call = None
        self._measured: deque[tuple[float, float]] = deque(maxlen=self.kept)  # (when, how late)

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._due = None

    def late_since(self, since_s: float) -> float:
        """The most the reactor ran late from ``since_s`` until now, the timer overdue now included
        (the reactor may run a thread's result before the timers of the same turn)."""
        now = self._clock.seconds()
        overdue = now - self._due if self._due is not None else 0.0
        return max([0.0, overdue, *(late for at, late in self._measured if at >= since_s)])

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self.interval_s
        self._call = self._clock.callLater(self.interval_s, self._fired)

    def _fired(self) -> None:
        now = self._clock.seconds()
        late = max(0.0, now - self._due)
        self._measured.append((now, late))
        self._gauge.set(late)
        self._schedule()
