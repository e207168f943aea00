"""Doorman: who may try to get in. Links whose peer has not authenticated yet are limited in
total and per source address, and failed proofs are slowed down, then locked out.

Why each rule (docs/protocol.md, "Strangers and guessed secrets", says it for vendors):

- A stranger costs memory until its handshake ends (10 s at most): its decoder buffers at most
  one handshake-sized frame, and ``max_strangers`` / ``max_strangers_per_source`` bound how
  many there are. Beyond that a new connection waits, unanswered, for a place to free (oldest
  first), at most ``wait_s``, while fewer than ``max_waiting`` wait; beyond that it is refused
  at once. A waiting connection that sends anything is refused (a terminal says nothing before
  HELLO), so waiting holds no data. A site whose terminals all dial in after a power cut,
  through one NAT address, is so let in as fast as handshakes end, instead of being refused
  again and again and backing off for up to a minute each time.
- A secret can only be guessed one TCP connection at a time (each handshake has fresh nonces).
  After ``slow_after`` failures in ``window_s`` from one source address or for one terminal id,
  each further refusal is held back (1 s, doubling, at most ``max_delay_s``) while the stranger
  still occupies one of its address's few stranger places; that bounds the rate of guesses.
- After ``lockout_after`` failures from one address, that address is refused at connect for
  ``lockout_s``. A real terminal behind the same address (a NAT) is locked out with it: that
  is the price of the rule, and why the threshold is well above what a misconfigured terminal
  reaches by itself before someone reads the log.
- After ``lockout_after`` failures for one terminal id, from any addresses, the id is under
  attack for ``lockout_s``: a wrong proof for it locks its source address out at once (one
  strike) and its refusal is held the longest. A *right* proof is always accepted, from any
  address not locked out: a lockout never pushes the real terminal off, nor keeps it out
  when it connects from an address that did not guess.
- An established session is never touched by any of this.

Every refusal is logged through ``RepeatedLines`` (one line, then a summary) and counted in
``gateway_links_refused{reason}``.
"""

from collections import defaultdict, deque
from typing import Protocol
from dataclasses import dataclass

from twisted.logger import Logger

from gateway.quietlog import RepeatedLines

log = Logger(namespace="gateway.doorman")


@dataclass(frozen=True)
class DoorLimits:
    max_strangers: int = 256  # links not authenticated yet, in total
    max_strangers_per_source: int = 64  # the same, from one source address (a NAT: a whole site reconnecting)
    slow_after: int = 3  # failed proofs (per address or terminal id, in window_s) before refusals are held back
    lockout_after: int = 10  # failed proofs before an address is locked out, or a terminal id is under attack
    lockout_s: float = 900.0
    window_s: float = 600.0
    max_delay_s: float = 8.0  # the longest a refusal is held; under the 10 s handshake time-out
    max_waiting: int = 1024  # connections waiting for a stranger's place, in total: a socket each, no data
    wait_s: float = 20.0  # the longest one waits: under the 30 s a terminal waits for HELLO (docs/protocol.md)


class Waiter(Protocol):
    """A connection that may wait for a stranger's place (gateway/native/tcp.py's TcpLink)."""

    waiting: bool

    def let_in(self) -> None: ...

    def turn_away(self) -> None: ...


class Doorman:
    def __init__(self, clock, metrics, limits: DoorLimits = DoorLimits(), lines: RepeatedLines | None = None):
        self._clock = clock
        self._metrics = metrics
        self.limits = limits
        self.lines = lines or RepeatedLines(log, clock)
        self._strangers: dict[str, int] = defaultdict(int)
        self._stranger_total = 0
        self._failures_by_source: dict[str, deque[float]] = defaultdict(deque)
        self._failures_by_terminal: dict[int, deque[float]] = defaultdict(deque)
        self._locked_sources: dict[str, float] = {}  # source -> until
        self._attacked_terminals: dict[int, float] = {}  # terminal id -> until
        self._next_cleanup = 0.0
        self._queues: dict[str, deque[Waiter]] = defaultdict(deque)  # by source, oldest first; may hold waiters gone
        self._waiting: dict[Waiter, tuple[str, float, object]] = {}  # waiter -> source, since, its time-out

    # -- strangers: links not authenticated yet ------------------------------------------------

    def arrive(self, source: str, waiter: Waiter | None = None) -> bool:
        """A new connection from ``source``: may it try the handshake? False: refused, logged here.

        A ``waiter`` that finds the places taken may wait for one (True, with ``waiter.waiting``
        set): ``let_in()`` is called once a place is its, ``turn_away()`` after ``wait_s``."""
        now = self._clock.seconds()
        until = self._locked_sources.get(source)
        if until is not None and until > now:
            return self._refuse(source, "locked_out", f"refused connection from {source}: locked out for another "
                                f"{until - now:.0f} s after {self.limits.lockout_after} failed handshakes")
        full = self._full(source)
        if full is None:
            self._take_place(source)
            return True
        if waiter is not None and len(self._waiting) < self.limits.max_waiting:
            self._wait(source, waiter, now)
            return True
        return self._refuse(source, *full)

    def leave(self, source: str) -> None:
        """A stranger authenticated or went away: its place goes to the longest waiting that may have it."""
        self._strangers[source] -= 1
        if not self._strangers[source]:
            del self._strangers[source]
        self._stranger_total -= 1
        self._metrics.strangers.set(self._stranger_total)
        self._let_waiters_in(source)

    def stop_waiting(self, waiter: Waiter) -> None:
        """A waiting connection went away."""
        _, _, timeout = self._waiting.pop(waiter)
        if timeout.active():
            timeout.cancel()
        waiter.waiting = False
        self._metrics.links_waiting.set(len(self._waiting))

    def _full(self, source: str) -> tuple[str, str] | None:
        """Why ``source`` may not have a stranger's place now (a refusal's reason and line), or None."""
        if self._stranger_total >= self.limits.max_strangers:
            return "too_many_strangers", (f"refused connection from {source}: {self.limits.max_strangers} links are "
                                          f"already shaking hands and {len(self._waiting)} waiting")
        if self._strangers.get(source, 0) >= self.limits.max_strangers_per_source:
            return "too_many_strangers_from_source", (f"refused connection from {source}: {self.limits.max_strangers_per_source} "
                                                      f"links from it are already shaking hands and {len(self._waiting)} waiting")
        return None

    def _take_place(self, source: str) -> None:
        self._strangers[source] += 1
        self._stranger_total += 1
        self._metrics.strangers.set(self._stranger_total)

    def _wait(self, source: str, waiter: Waiter, now: float) -> None:
        waiter.waiting = True
        timeout = self._clock.callLater(self.limits.wait_s, self._waited_too_long, waiter)
        self._waiting[waiter] = (source, now, timeout)
        self._queues[source].append(waiter)
        self._metrics.links_waiting.set(len(self._waiting))

    def spoke_while_waiting(self, waiter: Waiter) -> None:
        """A waiting connection sent something: a terminal says nothing before HELLO. Refused."""
        source, _, _ = self._waiting[waiter]
        self._turn_away(waiter, "spoke_while_waiting", f"refused connection from {source}: it sent data while "
                        "waiting for a place to shake hands")

    def _waited_too_long(self, waiter: Waiter) -> None:
        source, _, _ = self._waiting[waiter]
        self._turn_away(waiter, "waited_too_long", f"refused connection from {source}: no place to shake hands "
                        f"for {self.limits.wait_s:g} s")

    def _turn_away(self, waiter: Waiter, reason: str, line: str) -> None:
        source, _, _ = self._waiting[waiter]
        self.stop_waiting(waiter)
        self._refuse(source, reason, line)
        waiter.turn_away()

    def _let_waiters_in(self, source: str) -> None:
        """Fill free places: first from the source that left one, then the oldest waiter of any source with room."""
        while self._waiting and self._stranger_total < self.limits.max_strangers:
            head = self._head(source)
            if head is None or self._strangers.get(source, 0) >= self.limits.max_strangers_per_source:
                heads = [(self._waiting[w][1], s) for s in list(self._queues) if (w := self._head(s)) is not None
                         and self._strangers.get(s, 0) < self.limits.max_strangers_per_source]
                if not heads:
                    return
                source = min(heads)[1]
                head = self._head(source)
            self._queues[source].popleft()
            self.stop_waiting(head)
            self._take_place(source)
            head.let_in()

    def _head(self, source: str) -> Waiter | None:
        """The longest waiting connection from ``source`` still waiting (those gone are dropped here)."""
        queue = self._queues.get(source)
        while queue and queue[0] not in self._waiting:
            queue.popleft()
        if not queue:
            self._queues.pop(source, None)
            return None
        return queue[0]

    def _refuse(self, source: str, reason: str, line: str) -> bool:
        self._metrics.links_refused.labels(reason).inc()
        self.lines.warn("refused connections", source, "{line}", line=line)
        return False

    # -- failed proofs -------------------------------------------------------------------------

    def proof_failed(self, terminal_id: int | None, source: str) -> float:
        """A wrong proof (or an unknown terminal id, ``None``) from ``source``; returns how many
        seconds to hold the refusal back. Locks the source out when it earned it."""
        now = self._clock.seconds()
        if now >= self._next_cleanup:
            self._forget_expired(now)
        by_source = self._recent(self._failures_by_source[source], now)
        by_source.append(now)
        failures = len(by_source)
        attacked = False
        if terminal_id is not None:
            by_terminal = self._recent(self._failures_by_terminal[terminal_id], now)
            by_terminal.append(now)
            failures = max(failures, len(by_terminal))
            attacked = self._under_attack(terminal_id, len(by_terminal), now)
        if len(by_source) >= self.limits.lockout_after or attacked:
            self._lock_out(source, now, terminal_id if attacked else None)
        if failures <= self.limits.slow_after:
            return 0.0
        return self.limits.max_delay_s if attacked else min(self.limits.max_delay_s, 2.0 ** (failures - self.limits.slow_after - 1))

    def _under_attack(self, terminal_id: int, failures: int, now: float) -> bool:
        until = self._attacked_terminals.get(terminal_id)
        if until is not None and until > now:
            return True
        if failures < self.limits.lockout_after:
            return False
        self._attacked_terminals[terminal_id] = now + self.limits.lockout_s
        self._metrics.lockouts.labels("terminal").inc()
        log.warn("terminal {tid}: {n} failed handshakes in {w:g} s from any address: for {s:g} s a wrong proof for it "
                 "locks its address out at once (a right proof is still accepted)",
                 tid=terminal_id, n=failures, w=self.limits.window_s, s=self.limits.lockout_s)
        return True

    def _lock_out(self, source: str, now: float, attacked_terminal: int | None) -> None:
        if self._locked_sources.get(source, 0) > now:
            return
        self._locked_sources[source] = now + self.limits.lockout_s
        self._metrics.lockouts.labels("source").inc()
        why = (f"a wrong proof for terminal {attacked_terminal}, which is under attack" if attacked_terminal is not None
               else f"{self.limits.lockout_after} failed handshakes in {self.limits.window_s:g} s")
        log.warn("{source} locked out for {s:g} s after {why}", source=source, s=self.limits.lockout_s, why=why)

    def _recent(self, times: deque[float], now: float) -> deque[float]:
        while times and times[0] <= now - self.limits.window_s:
            times.popleft()
        return times

    def _forget_expired(self, now: float) -> None:
        """Keep the tables bounded by what is recent: an attacker's many addresses expire."""
        self._next_cleanup = now + self.limits.window_s / 10
        for table in (self._locked_sources, self._attacked_terminals):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
        for table in (self._failures_by_source, self._failures_by_terminal):
            for key in [k for k, times in table.items() if not self._recent(times, now)]:
                del table[key]
