"""Doorman: who may try to get in. Links whose peer has not authenticated yet are limited in
total and per source address, served in turn when places are scarce, and proofs are budgeted:
slowed, then refused unchecked, then locked out.

Why each rule (docs/protocol.md, "Strangers and guessed secrets", says it for vendors):

- A stranger costs memory until its handshake ends (10 s at most): its decoder buffers at most
  one handshake-sized frame, and ``max_strangers`` / ``max_strangers_per_source`` bound how
  many there are. Beyond that a new connection waits, unanswered, for a place (at most
  ``wait_s``, while fewer than ``max_waiting`` wait); a waiting connection that sends anything
  is refused (a terminal says nothing before HELLO), so waiting holds no data.
- Places are shared fairly: a freed place goes to the next *address* in turn (addresses where
  a terminal authenticated before first), not to the next connection, so a crowd from a few
  addresses cannot starve the others. When the waiting room is full, a newcomer from an address
  with a shorter queue takes the place of the newest waiter of the longest queue. And while
  anyone waits, a stranger that has not answered HELLO within ``busy_handshake_s`` is closed:
  a terminal answers in well under a second, a staller holds a place that long and no longer.
  A site whose terminals all dial in after a power cut, through one NAT address, is still let
  in as fast as handshakes end.
- The budget counts proofs *checked*, not connections: a proof is checked only for a link
  whose address may still guess (``may_check``). After ``slow_after`` wrong proofs in
  ``window_s`` from an address, its next proof is checked no sooner than the last refusal's
  delay (1 s, doubling, at most ``max_delay_s``) later; one that comes sooner, on however many
  parallel connections, is refused unchecked. So an address gets at most ``lockout_after``
  proofs checked per lockout, however impatient.
- After ``lockout_after`` wrong proofs from one address it is refused at connect for
  ``lockout_s``, and its waiting connections are turned away. A real terminal behind the same
  address (a NAT) is locked out with it: that is the cost of the rule, which is why the id
  rule below is the primary brake and an operator can lift a lockout (``clear``).
- After ``lockout_after`` wrong proofs for one terminal id, from any addresses, the id is under
  attack for ``lockout_s``: a wrong proof for it locks its source address out at once (one
  strike). A *right* proof is always accepted, from any address not locked out: a lockout
  never pushes the real terminal off, nor keeps it out when it connects from an address that
  did not guess.
- Only a wrong proof for a known terminal counts. An unknown or pending terminal id is not a
  guessed secret: a terminal started before it is admitted must not lock its address out.
  Admitting a terminal (``forgive``) forgets the wrong proofs made for it, and lifts the
  lockouts they alone caused.
- An established session is never touched by any of this.
- Several gateway processes on one database count as one doorman: each tells the others every
  wrong proof it checked and every address an operator cleared, and counts theirs as its own,
  so spreading guesses over the processes buys a guesser nothing.

Every refusal is logged through ``RepeatedLines`` (one line, then a summary) and counted in
``gateway_links_refused{reason}``.
"""

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.logger import Logger

from gateway.quietlog import RepeatedLines

log = Logger(namespace="gateway.doorman")

MAX_KNOWN_SOURCES = 10_000  # addresses remembered as where a terminal authenticated, newest kept


@dataclass(frozen=True)
class DoorLimits:
    max_strangers: int = 256  # links not authenticated yet, in total
    max_strangers_per_source: int = 64  # the same, from one source address (a NAT: a whole site reconnecting)
    slow_after: int = 3  # wrong proofs (per address, in window_s) before its proofs are spaced out
    lockout_after: int = 10  # wrong proofs before an address is locked out, or a terminal id is under attack
    lockout_s: float = 900.0
    window_s: float = 600.0
    max_delay_s: float = 8.0  # the longest a refusal is held; under the 10 s handshake time-out
    max_waiting: int = 1024  # connections waiting for a stranger's place, in total: a socket each, no data
    wait_s: float = 20.0  # the longest one waits: under the 30 s a terminal waits for HELLO (docs/protocol.md)
    busy_handshake_s: float = 3.0  # while anyone waits, a stranger must answer HELLO within this


class Waiter(Protocol):
    """A connection that holds or waits for a stranger's place (gateway/native/tcp.py's TcpLink)."""

    waiting: bool

    def let_in(self) -> None: ...

    def turn_away(self) -> None: ...

    def hurry(self, reason: str) -> None:
        """Close this stranger: it took too long while others waited."""


@dataclass
class Lockout:
    """An address refused at connect, or a terminal id under attack, until ``until``."""

    kind: str  # "address" or "terminal"
    key: str | int
    until: float
    why: str


class Doorman:
    def __init__(self, clock, metrics, limits: DoorLimits = DoorLimits(), lines: RepeatedLines | None = None):
        self._clock = clock
        # What the other gateway processes on the database must count too (``heard`` there): a
        # guesser spreading its tries over the processes is locked out after as many as on one.
        self.tell_others: Callable[[str], None] = lambda said: None
        self._metrics = metrics
        self.limits = limits
        self.lines = lines or RepeatedLines(log, clock)
        self._strangers: dict[str, int] = defaultdict(int)
        self._stranger_total = 0
        self._unanswered: dict[Waiter, tuple[str, float]] = {}  # strangers yet to answer HELLO, oldest first
        self._hurry_timer = None
        self._failures_by_source: dict[str, deque[tuple[float, int]]] = defaultdict(deque)  # (when, terminal id)
        self._failures_by_terminal: dict[int, deque[tuple[float, str]]] = defaultdict(deque)  # (when, source)
        self._next_proof_at: dict[str, float] = {}  # source -> the earliest its next proof is checked
        self._locked: dict[str, Lockout] = {}  # source -> its lockout
        self._attacked: dict[int, Lockout] = {}  # terminal id -> since when it is under attack
        self._known_sources: dict[str, None] = {}  # where terminals authenticated, oldest first
        self._next_cleanup = 0.0
        self._queues: dict[str, deque[Waiter]] = {}  # by source, in turn order; may hold waiters gone
        self._waiting: dict[Waiter, tuple[str, float, object]] = {}  # waiter -> source, since, its time-out
        self._waiting_from: dict[str, int] = defaultdict(int)  # how many wait, by source

    # -- strangers: links not authenticated yet ------------------------------------------------

    def arrive(self, source: str, waiter: Waiter | None = None) -> bool:
        """A new connection from ``source``: may it try the handshake? False: refused, logged here.

        A ``waiter`` that finds the places taken may wait for one (True, with ``waiter.waiting``
        set): ``let_in()`` is called once a place is its, ``turn_away()`` after ``wait_s``."""
        now = self._clock.seconds()
        lockout = self._lockout_of(source, now)
        if lockout is not None:
            return self._refuse(source, "locked_out", f"refused connection from {source}: locked out for another "
                                f"{lockout.until - now:.0f} s after {lockout.why}")
        full = self._full(source)
        if full is None:
            self._take_place(source, waiter, now)
            return True
        if waiter is not None and (len(self._waiting) < self.limits.max_waiting or self._make_room_for(source)):
            self._wait(source, waiter, now)
            return True
        return self._refuse(source, *full)

    def answered(self, waiter: Waiter) -> None:
        """A stranger answered HELLO: it is no longer hurried, whatever its handshake still takes
        (the database may be slow to say where its log stands)."""
        self._unanswered.pop(waiter, None)

    def leave(self, source: str, waiter: Waiter | None = None, authenticated: bool = False) -> None:
        """A stranger authenticated or went away: its place goes to the next address in turn."""
        if waiter is not None:
            self._unanswered.pop(waiter, None)
        if authenticated:
            self._known_sources.pop(source, None)
            self._known_sources[source] = None
            if len(self._known_sources) > MAX_KNOWN_SOURCES:
                del self._known_sources[next(iter(self._known_sources))]
        self._strangers[source] -= 1
        if not self._strangers[source]:
            del self._strangers[source]
        self._stranger_total -= 1
        self._metrics.strangers.set(self._stranger_total)
        self._let_waiters_in()

    def stop_waiting(self, waiter: Waiter) -> None:
        """A waiting connection went away."""
        source, _, timeout = self._waiting.pop(waiter)
        self._waiting_from[source] -= 1
        if not self._waiting_from[source]:
            del self._waiting_from[source]
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

    def _take_place(self, source: str, waiter: Waiter | None, now: float) -> None:
        self._strangers[source] += 1
        self._stranger_total += 1
        self._metrics.strangers.set(self._stranger_total)
        if waiter is not None:
            self._unanswered[waiter] = (source, now)
        if self._waiting:
            self._hurry_later()

    def _wait(self, source: str, waiter: Waiter, now: float) -> None:
        waiter.waiting = True
        timeout = self._clock.callLater(self.limits.wait_s, self._waited_too_long, waiter)
        self._waiting[waiter] = (source, now, timeout)
        self._waiting_from[source] += 1
        self._queues.setdefault(source, deque()).append(waiter)
        self._metrics.links_waiting.set(len(self._waiting))
        self._hurry_later()

    def _make_room_for(self, source: str) -> bool:
        """The waiting room is full: turn away the newest waiter of the longest queue, if that
        queue is longer than ``source``'s would be. One address holds no more than its share."""
        longest = max(self._waiting_from, key=self._waiting_from.get, default=None)
        if longest is None or self._waiting_from[longest] <= self._waiting_from.get(source, 0) + 1:
            return False
        queue = self._queues[longest]
        while queue[-1] not in self._waiting:
            queue.pop()
        self._turn_away(queue.pop(), "waiting_room_share", f"refused connection from {longest}: the waiting room is "
                        f"full and {longest} holds more of it than {source}")
        return True

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

    def _let_waiters_in(self) -> None:
        """Fill free places, one address at a time in turn: addresses where terminals authenticated
        first, then the rest; an address served goes to the back of the turn."""
        while self._waiting and self._stranger_total < self.limits.max_strangers:
            source = self._next_in_turn()
            if source is None:
                return
            queue = self._queues.pop(source)
            head = queue.popleft()
            if queue:
                self._queues[source] = queue  # to the back of the turn
            self.stop_waiting(head)
            self._take_place(source, head, self._clock.seconds())
            head.let_in()

    def _next_in_turn(self) -> str | None:
        """The first address in turn with a waiter and room for one more stranger (known first)."""
        later = None
        for source in list(self._queues):
            if self._head(source) is None or self._strangers.get(source, 0) >= self.limits.max_strangers_per_source:
                continue
            if source in self._known_sources:
                return source
            later = later or source
        return later

    def _head(self, source: str) -> Waiter | None:
        """The longest waiting connection from ``source`` still waiting (those gone are dropped here)."""
        queue = self._queues.get(source)
        while queue and queue[0] not in self._waiting:
            queue.popleft()
        if not queue:
            self._queues.pop(source, None)
            return None
        return queue[0]

    def _hurry_later(self) -> None:
        """While anyone waits, close the strangers that have not answered HELLO in ``busy_handshake_s``."""
        if self._hurry_timer is not None or not self._unanswered:
            return
        _, since = next(iter(self._unanswered.values()))
        self._hurry_timer = self._clock.callLater(max(0.0, since + self.limits.busy_handshake_s - self._clock.seconds()),
                                                  self._hurry)

    def _hurry(self) -> None:
        self._hurry_timer = None
        if not self._waiting:
            return
        deadline = self._clock.seconds() - self.limits.busy_handshake_s
        slow = []
        for waiter, (source, since) in self._unanswered.items():
            if since > deadline:
                break
            slow.append((waiter, source))
        for waiter, source in slow:
            self._unanswered.pop(waiter, None)
            self._metrics.links_refused.labels("slow_while_others_wait").inc()
            waiter.hurry(f"no answer to HELLO within {self.limits.busy_handshake_s:g} s while {len(self._waiting)} "
                         "connections wait for a place")
        self._hurry_later()

    def _refuse(self, source: str, reason: str, line: str) -> bool:
        self._metrics.links_refused.labels(reason).inc()
        self.lines.warn("refused connections", source, "{line}", line=line)
        return False

    # -- proofs ----------------------------------------------------------------------------------

    def may_check(self, terminal_id: int, source: str) -> str | None:
        """None if a proof for ``terminal_id`` from ``source`` may be checked now; else why not
        (the link is then refused without checking it, and nothing is counted against anyone)."""
        now = self._clock.seconds()
        lockout = self._lockout_of(source, now)
        if lockout is not None:
            reason, why = "locked_out", f"{source} is locked out after {lockout.why}"
        elif now < self._next_proof_at.get(source, 0.0):
            reason, why = "guessing_too_fast", (f"{source} made {len(self._failures_by_source[source])} wrong proofs lately; "
                                                f"its next is checked in {self._next_proof_at[source] - now:.1f} s")
        else:
            return None
        self._metrics.links_refused.labels(reason).inc()
        return f"proof not checked: {why}"

    def proof_failed(self, terminal_id: int, source: str) -> float:
        """A wrong proof for known ``terminal_id`` from ``source``; returns how many seconds to
        hold the refusal back. Locks the source out when it earned it."""
        self._metrics.wrong_proofs.inc()
        self.tell_others(f"wrong {source} {terminal_id}")
        return self._count_wrong(terminal_id, source)

    def heard(self, said: str) -> None:
        """What another process's doorman told (``tell_others``): a wrong proof it checked, counted
        here as one of ours, or an address an operator cleared there."""
        what, _, rest = said.partition(" ")
        source, _, terminal_id = rest.rpartition(" ")
        if what == "wrong" and source and terminal_id.isdigit():
            self._count_wrong(int(terminal_id), source)
        elif what == "clear" and rest:
            self._forget_source(rest)
        else:
            log.warn("another gateway process said {said!r} of proofs, which this one does not understand", said=said)

    def _count_wrong(self, terminal_id: int, source: str) -> float:
        now = self._clock.seconds()
        if now >= self._next_cleanup:
            self._forget_expired(now)
        by_source = self._recent(self._failures_by_source[source], now)
        by_source.append((now, terminal_id))
        by_terminal = self._recent(self._failures_by_terminal[terminal_id], now)
        by_terminal.append((now, source))
        attacked = self._under_attack(terminal_id, len(by_terminal), now)
        if attacked:
            self._lock_out(source, now, f"a wrong proof for terminal {terminal_id}, which is under attack")
        elif len(by_source) >= self.limits.lockout_after:
            self._lock_out(source, now, f"{len(by_source)} wrong proofs in {self.limits.window_s:g} s")
        failures = max(len(by_source), len(by_terminal))
        if failures <= self.limits.slow_after:
            return 0.0
        delay = self.limits.max_delay_s if attacked else min(self.limits.max_delay_s, 2.0 ** (failures - self.limits.slow_after - 1))
        self._next_proof_at[source] = now + delay
        return delay

    def _under_attack(self, terminal_id: int, failures: int, now: float) -> bool:
        lockout = self._attacked.get(terminal_id)
        if lockout is not None and lockout.until > now:
            return True
        if failures < self.limits.lockout_after:
            return False
        why = f"{failures} wrong proofs in {self.limits.window_s:g} s from any address"
        self._attacked[terminal_id] = Lockout("terminal", terminal_id, now + self.limits.lockout_s, why)
        self._metrics.lockouts.labels("terminal").inc()
        log.warn("terminal {tid}: {why}: for {s:g} s a wrong proof for it locks its address out at once (a right proof "
                 "is still accepted)", tid=terminal_id, why=why, s=self.limits.lockout_s)
        return True

    def _lock_out(self, source: str, now: float, why: str) -> None:
        if self._lockout_of(source, now) is not None:
            return
        self._locked[source] = Lockout("address", source, now + self.limits.lockout_s, why)
        self._metrics.lockouts.labels("source").inc()
        log.warn("{source} locked out for {s:g} s after {why} (every terminal behind that address is kept out with it; "
                 "'gateway lockouts clear {source}' lifts it)", source=source, s=self.limits.lockout_s, why=why)
        for waiter in [w for w, (s, _, _) in self._waiting.items() if s == source]:
            self._turn_away(waiter, "locked_out", f"refused connection from {source}: locked out while waiting")

    def _lockout_of(self, source: str, now: float) -> Lockout | None:
        lockout = self._locked.get(source)
        return lockout if lockout is not None and lockout.until > now else None

    def _recent(self, times: deque[tuple[float, object]], now: float) -> deque[tuple[float, object]]:
        """``times``, (when, who) oldest first, without what is older than the window."""
        while times and times[0][0] <= now - self.limits.window_s:
            times.popleft()
        return times

    def _forget_expired(self, now: float) -> None:
        """Keep the tables bounded by what is recent: an attacker's many addresses expire."""
        self._next_cleanup = now + self.limits.window_s / 10
        for table in (self._locked, self._attacked):
            for key in [k for k, lockout in table.items() if lockout.until <= now]:
                del table[key]
        for key in [k for k, at in self._next_proof_at.items() if at <= now]:
            del self._next_proof_at[key]
        for table in (self._failures_by_source, self._failures_by_terminal):
            for key in [k for k, times in table.items() if not self._recent(times, now)]:
                del table[key]

    # -- what an operator sees and lifts ---------------------------------------------------------

    def lockouts(self) -> list[dict]:
        """Addresses locked out and terminal ids under attack now, soonest to end first."""
        now = self._clock.seconds()
        found = [lockout for table in (self._locked, self._attacked) for lockout in table.values() if lockout.until > now]
        return [dict(kind=lockout.kind, address=lockout.key if lockout.kind == "address" else None,
                     terminal_id=lockout.key if lockout.kind == "terminal" else None,
                     remaining_s=round(lockout.until - now, 1), why=lockout.why)
                for lockout in sorted(found, key=lambda lockout: lockout.until)]

    def clear(self, source: str) -> bool:
        """An operator lifts ``source``'s lockout and forgets its wrong proofs; False if it had none."""
        had = self._lockout_of(source, self._clock.seconds()) is not None or bool(self._failures_by_source.get(source))
        self._forget_source(source)
        self.tell_others(f"clear {source}")
        if had:
            log.info("lockout of {source} lifted by an administrator", source=source)
        return had

    def _forget_source(self, source: str) -> None:
        self._locked.pop(source, None)
        self._failures_by_source.pop(source, None)
        self._next_proof_at.pop(source, None)

    def forgive(self, terminal_id: int) -> None:
        """``terminal_id`` was admitted (maybe with a new secret): its wrong proofs were a terminal
        set up wrong, not a guesser. Forget them, and lift the lockouts they alone caused."""
        self._attacked.pop(terminal_id, None)
        self._failures_by_terminal.pop(terminal_id, None)
        for source, failures in list(self._failures_by_source.items()):
            kept = deque(f for f in failures if f[1] != terminal_id)
            if len(kept) == len(failures):
                continue
            self._failures_by_source[source] = kept
            if len(kept) < self.limits.lockout_after and self._locked.pop(source, None) is not None:
                log.info("lockout of {source} lifted: terminal {tid}, whose proofs it failed, was admitted", source=source, tid=terminal_id)
            if len(kept) <= self.limits.slow_after:
                self._next_proof_at.pop(source, None)
