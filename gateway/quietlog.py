"""Quiet logs: lines that could come thousands of times a second, said once and then summarised.

``RepeatedLines``: log lines an attacker can repeat at will, said once and then summarised.

A refused connection, a stranger's garbage, a wrong secret: each is worth one line, but a flood
of them must not fill the disk. The first line of a kind from one source is logged in full; the
rest are counted, and when the period ends one line says how many there were ("312 more refused
connections from 127.0.0.1 in the last 10 s"). A source that keeps on (a terminal redialling
with a wrong secret for days) is summarised ever less often, the span doubling up to
``max_span_s``; one that stayed quiet for a whole span is forgotten, and its next line is said
in full again. The count of sources kept is bounded too: past ``max_sources``, further sources
share one summary line.

``Tally``: work done per delivery (a terminal applied a push) is counted, and one line a second
says how much there was; each delivery is still a DEBUG line and a stored monitoring event.
"""

from dataclasses import dataclass

from twisted.logger import Logger

OTHER_SOURCES = "other addresses"


@dataclass
class _Held:
    """Lines of one kind from one source counted since the last summary."""

    periods: int  # how many periods the current span lasts
    ends: int  # the period at whose end it is summarised
    count: int = 0


class RepeatedLines:
    def __init__(self, log: Logger, clock, period_s: float = 10.0, max_sources: int = 1000, max_span_s: float = 600.0):
        self._log = log
        self._clock = clock
        self.period_s = period_s
        self.max_sources = max_sources
        self.max_span_s = max_span_s
        self._counts: dict[tuple[str, str], _Held] = {}  # (what, source) -> what is held back
        self._period = 0  # periods ended since the first line
        self._flush = None

    def warn(self, what: str, source: str, format: str, **fields) -> None:
        """Log ``format`` unless a line about ``what`` from ``source`` was logged or summarised
        within its span.

        ``what`` names the kind in the plural, for the summary: "refused connections".
        """
        key = (what, source)
        if key not in self._counts and len(self._counts) >= self.max_sources:
            key = (what, OTHER_SOURCES)
        held = self._counts.get(key)
        if held is not None:
            held.count += 1
            return
        self._counts[key] = _Held(periods=1, ends=self._period)
        self._log.warn(format, **fields)
        if self._flush is None:
            self._flush = self._clock.callLater(self.period_s, self._period_ended)

    def _period_ended(self) -> None:
        self._flush = None
        self._summarise(lambda held: held.ends <= self._period)
        self._period += 1
        if self._counts:
            self._flush = self._clock.callLater(self.period_s, self._period_ended)

    def _summarise(self, due) -> None:
        longest = max(1, int(self.max_span_s // self.period_s))
        for key, held in list(self._counts.items()):
            if not due(held):
                continue
            if not held.count:  # quiet for its whole span: its next line is said in full
                del self._counts[key]
                continue
            what, source = key
            self._log.warn("{n} more {what} from {source} in the last {period:g} s",
                           n=held.count, what=what, source=source, period=held.periods * self.period_s)
            held.periods = min(held.periods * 2, longest)
            held.ends = self._period + held.periods
            held.count = 0

    def stop(self) -> None:
        """Say what is held back now (the gateway stops)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._summarise(lambda held: True)


class Tally:
    """Counts summed over a period and logged once at its end, if anything was counted."""

    def __init__(self, log: Logger, clock, format: str, period_s: float = 1.0):
        self._log = log
        self._clock = clock
        self._format = format  # fields: the counts' names, and ``period``
        self.period_s = period_s
        self._counts: dict[str, int] = {}
        self._terminals: set[int] = set()
        self._flush = None
        self._stopped = False

    def add(self, terminal_id: int, **counts: int) -> None:
        for name, n in counts.items():
            self._counts[name] = self._counts.get(name, 0) + n
        self._terminals.add(terminal_id)
        if self._stopped:
            self._summarise()  # what still comes in after a stop (answers in flight) is said at once
        elif self._flush is None:
            self._flush = self._clock.callLater(self.period_s, self._summarise)

    def _summarise(self) -> None:
        counts, terminals, self._counts, self._terminals, self._flush = self._counts, self._terminals, {}, set(), None
        if counts:
            self._log.info(self._format, terminals=len(terminals), period=self.period_s, **counts)

    def stop(self) -> None:
        """Say what is counted now (the gateway stops), and from now on as it comes."""
        self._stopped = True
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._summarise()
