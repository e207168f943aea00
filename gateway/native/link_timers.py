"""LinkTimers: every native session's next look at the time, on one wheel and one reactor timer.

A session must look at the time when a request's deadline passes and every ``keepalive_s / 3``
for the keepalive rule. A ``callLater`` per session for each was a reactor wake-up and a heap
operation apiece: at 2,000 idle terminals the liveness timers alone were about a sixth of the
ingest process's busy samples (docs/loadtest.md, "Link timers on one wheel"). Here each session
has one entry on a ``protocol.wheel.TimerWheel`` of ``GRANULARITY_S``, and one timer per reactor
runs to the wheel's next deadline: a session is called at most ``GRANULARITY_S`` after the time
it asked for (later only if the reactor itself is late), never before.
"""

from collections.abc import Callable

from twisted.logger import Logger

from protocol.wheel import TimerWheel

log = Logger(namespace="gateway.session")

GRANULARITY_S = 0.25  # how late a deadline may be looked at: a request's 15 s, the keepalive rule's 10 s


class LinkTimers:
    """One a process (the gateway service makes it), shared by all of its native sessions."""

    def __init__(self, clock):
        self.clock = clock
        self._wheel: TimerWheel[Callable[[], None]] = TimerWheel(GRANULARITY_S)
        self._timer = None
        self._running = False  # within _run: the timer is armed once, after every due action ran

    def __len__(self) -> int:
        return len(self._wheel)

    def set(self, action: Callable[[], None], deadline: float) -> None:
        """Call ``action`` once at ``deadline`` (within the granularity), instead of whenever it was due."""
        self._wheel.set(action, deadline)
        if not self._running:
            self._arm()

    def discard(self, action: Callable[[], None]) -> None:
        self._wheel.discard(action)
        if not self._wheel:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm(self) -> None:
        deadline = self._wheel.next_deadline()
        timer = self._timer
        if timer is not None:
            if deadline is not None and timer.getTime() <= deadline:
                return  # it fires first, finds nothing due perhaps, and runs to the next one
            timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._run)

    def _run(self) -> None:
        self._timer = None
        self._running = True
        try:
            for action in self._wheel.pop_due(self.clock.seconds()):
                try:
                    action()
                except Exception:  # one link's fault must not stop the others' deadlines
                    log.failure("a link's timer failed")
        finally:
            self._running = False
        self._arm()
