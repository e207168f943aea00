"""Activity: per-second figures of the last minutes, for the monitoring page's charts.

While somebody looks (the charts asked within ``watch_s``), every second one read on a reader
thread takes the events stored since the last read (by id, so it costs what was stored, not the
size of the log) and adds them to one bucket per second of ``recorded_ms``: terminal log events
stored, user records applied by terminals (deliveries), sync failures. While nobody looks nothing
is read and the figures are dropped: following the log for charts nobody opened was about half
of the API process's CPU at 10 enrolments a second (issue 24). The first ask after that begins
them afresh, as at start, from the last ``history_rows`` events, and is answered once they are
read. Reading the table rather than hooking into the sync core means the figures count
every stored event, whoever stored it; it follows ids, so an id another gateway on the same
database commits late, after a higher one was read, is missed.

Propagation is what the gateway sees of a change made at a terminal: from the moment the
terminal logged it (its device-origin enrol or update event, stamped on the clock the gateway
set) to the last apply the gateway recorded for that user since, each change counted once, in
the second of its latest apply. The first change not yet propagated is the one timed, so
several quick edits of one user measure the wait of the oldest.
"""

from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.sync.monitor import APPLIED_BY_DEVICE, PUSH_REFUSED, SAVE_FAILED, SYNC_EVENT_TYPES
from gateway.store.order import visible
from gateway.store.schema import events
from protocol.events import EventCode, Origin
from protocol.figures import percentile

log = Logger(namespace="gateway.activity")

DEVICE_CHANGES = (EventCode.ENROLL_SUCCESS.name, EventCode.UPDATE_SUCCESS.name)
FAILURES = (SAVE_FAILED, PUSH_REFUSED)


@dataclass
class Second:
    stored: int = 0
    delivered: int = 0
    failed: int = 0
    propagated_ms: list[int] = field(default_factory=list)  # changes whose last apply fell here, sealed


@dataclass
class Change:
    """A change made at a terminal, on its way to the others."""

    origin_ms: int
    last_apply_ms: int | None = None

    @property
    def propagation_ms(self) -> int:
        return max(0, self.last_apply_ms - self.origin_ms)


class Activity:
    window_s = 600  # kept; the page asks for the last 5 minutes
    watch_s = 60.0  # read while the charts asked within this; the page asks every 2 s while open
    read_rows = 100_000  # at most per read; a backlog is caught up over a few seconds
    history_rows = 100_000  # read back when the figures begin, so the charts do not begin empty
    max_changes = 100_000
    # A change's propagation ends at its last apply before a pause this long: an apply after it is
    # the change delivered again (a terminal that came online later, a sync-mode switch), not its spread.
    redelivery_pause_ms = 10_000

    def __init__(self, db, clock):
        self._db = db
        self._clock = clock
        self._seconds: dict[int, Second] = {}
        self._changes: dict[str, Change] = {}  # user id -> its latest change made at a terminal
        self._after_id: int | None = None
        self._since_s: int | None = None  # the first second with figures: nothing is known before it; None: not begun
        self._asked_s: float | None = None  # when the charts last asked
        self._epoch = 0  # counts the times the figures were dropped: a read begun before adds nothing
        self._reading: int | None = None  # the epoch of the read under way
        self._current: list[defer.Deferred] = []  # waiting for the read under way
        self._next: list[defer.Deferred] = []  # waiting for a read begun after the figures were dropped
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(1.0, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def tick(self):
        """Read what was stored since the last read, while somebody looks (one read at a time);
        drop the figures once nobody has for ``watch_s``."""
        if not self._watched():
            if self._since_s is not None:
                self._drop()
            return None
        if self._reading is not None:
            return None
        return self._read()

    def _watched(self) -> bool:
        return self._asked_s is not None and self._clock.seconds() - self._asked_s < self.watch_s

    def _drop(self) -> None:
        """Nobody looks: the figures are forgotten, to begin afresh from history when somebody does."""
        self._seconds, self._changes = {}, {}
        self._after_id = self._since_s = None
        self._epoch += 1

    def _read(self) -> defer.Deferred:
        """Fires once a read of the figures as they are now has added what it read: the one
        under way, unless they were dropped since it began."""
        d = defer.Deferred()
        if self._reading is None:
            self._current.append(d)
            self._begin()
        elif self._reading == self._epoch:
            self._current.append(d)
        else:
            self._next.append(d)
        return d

    def _begin(self) -> None:
        self._reading = self._epoch
        d = defer.maybeDeferred(self._db.read, read_activity, self._after_id, self.read_rows, self.history_rows)
        d.addCallback(self._add, self._epoch)
        d.addErrback(lambda f: log.warn("activity figures could not be read: {e}", e=f.getErrorMessage()))
        d.addBoth(self._read_done)

    def _read_done(self, _) -> None:
        waiting, self._current = self._current, []
        self._reading = None
        if self._next:
            self._current, self._next = self._next, []
            self._begin()
        for d in waiting:
            d.callback(None)

    def _add(self, read: "ActivityRead", epoch: int) -> None:
        if epoch != self._epoch:  # begun before the figures were dropped
            return
        if self._since_s is None:
            self._since_s = min([int(self._clock.seconds())] + [second for second, *_ in read.counts])
        self._after_id = read.last_id
        for second, stored, delivered, failed in read.counts:
            bucket = self._seconds.setdefault(second, Second())
            bucket.stored += stored
            bucket.delivered += delivered
            bucket.failed += failed
        for user_id, type_, occurred_ms, recorded_ms in read.changes:
            if type_ == APPLIED_BY_DEVICE:
                change = self._changes.get(user_id)
                if change is None:
                    continue
                if change.last_apply_ms is not None and recorded_ms - change.last_apply_ms > self.redelivery_pause_ms:
                    self._seal(change)  # delivered again: the change's figure stays where its spread ended
                    del self._changes[user_id]
                    continue
                change.last_apply_ms = max(change.last_apply_ms or 0, recorded_ms)
            else:
                change = self._changes.get(user_id)
                if change is None or change.last_apply_ms is not None:  # a new change once the last one arrived somewhere
                    if change is not None:
                        self._seal(change)
                    self._changes[user_id] = Change(occurred_ms)
        self._expire()

    def _seal(self, change: Change) -> None:
        """A change followed by a newer one of the same user keeps its figure where it ended."""
        self._seconds.setdefault(change.last_apply_ms // 1000, Second()).propagated_ms.append(change.propagation_ms)

    def _expire(self) -> None:
        oldest_ms = (int(self._clock.seconds()) - self.window_s) * 1000
        for second in [s for s in self._seconds if s * 1000 < oldest_ms]:
            del self._seconds[second]
        for user_id in [u for u, c in self._changes.items() if (c.last_apply_ms or c.origin_ms) < oldest_ms]:
            del self._changes[user_id]
        # Changes that reach no terminal (sync disabled, all offline) are dropped oldest first.
        for user_id in list(self._changes)[: max(0, len(self._changes) - self.max_changes)]:
            del self._changes[user_id]

    def series(self, seconds: int) -> defer.Deferred:
        """Fires with the last ``seconds`` whole seconds, oldest first, as the page's charts take
        them; fewer when the figures begin later (a gateway started a minute ago, or charts
        nobody looked at for ``watch_s``, have no five minutes to show). Asking keeps the figures
        read; the first ask after nobody did waits for them to begin from history."""
        if not self._watched():
            self._drop()
        self._asked_s = self._clock.seconds()
        if self._since_s is None:
            return self._read().addCallback(lambda _: self._shown(seconds))
        return defer.succeed(self._shown(seconds))

    def _shown(self, seconds: int) -> dict:
        end = int(self._clock.seconds())  # the current second is still filling: not shown
        start = min(end, max(end - seconds, self._since_s if self._since_s is not None else end))
        slots = range(start, end)
        buckets = [self._seconds.get(s, Second()) for s in slots]
        latencies = {s: list(b.propagated_ms) for s, b in zip(slots, buckets) if b.propagated_ms}
        for change in self._changes.values():
            if change.last_apply_ms is not None and start <= change.last_apply_ms // 1000 < end:
                latencies.setdefault(change.last_apply_ms // 1000, []).append(change.propagation_ms)
        everything = sorted(v for values in latencies.values() for v in values)
        return {
            "seconds": list(slots),
            "events_stored": [b.stored for b in buckets],
            "user_deliveries": [b.delivered for b in buckets],
            "sync_failures": [b.failed for b in buckets],
            "propagation_p99_ms": [percentile(sorted(latencies[s]), 99) if s in latencies else None for s in slots],
            "totals": {
                "events_stored": sum(b.stored for b in buckets),
                "user_deliveries": sum(b.delivered for b in buckets),
                "sync_failures": sum(b.failed for b in buckets),
                "changes_propagated": len(everything),
                "propagation_p99_ms": percentile(everything, 99) if everything else None,
            },
        }


@dataclass(frozen=True)
class ActivityRead:
    last_id: int
    counts: list[tuple[int, int, int, int]]  # (second, stored, delivered, failed)
    changes: list[tuple[str, str, int, int]]  # (user id, type, occurred_ms, recorded_ms), in id order


def read_activity(conn, after_id: int | None, limit: int, history: int) -> ActivityRead:
    """Events stored after ``after_id`` (at most ``limit``), counted per second and type; the first
    read (``after_id`` None) starts ``history`` events back."""
    shown = visible(conn, events.c.id)  # ids are not dense on PostgreSQL: count rows, not ids
    if after_id is None:
        back = select(events.c.id).where(*shown).order_by(events.c.id.desc()).offset(history).limit(1)
        after_id = conn.execute(back).scalar() or 0
    page = select(events.c.id).where(events.c.id > after_id, *shown).order_by(events.c.id).limit(limit).subquery()
    upto = conn.execute(select(func.max(page.c.id))).scalar()
    if upto is None:
        return ActivityRead(after_id, [], [])
    in_range = and_(events.c.id > after_id, events.c.id <= upto)
    second = events.c.recorded_ms // 1000
    rows = conn.execute(select(second, events.c.type, func.count()).where(in_range).group_by(second, events.c.type)).all()
    counts: dict[int, list[int]] = {}
    for sec, type_, n in rows:
        bucket = counts.setdefault(int(sec), [0, 0, 0])
        if type_ == APPLIED_BY_DEVICE:
            bucket[1] += n
        elif type_ in FAILURES:
            bucket[2] += n
        elif type_ not in SYNC_EVENT_TYPES:
            bucket[0] += n
    device_change = and_(events.c.type.in_(DEVICE_CHANGES), events.c.sub_code == int(Origin.DEVICE))
    changes = conn.execute(
        select(events.c.user_id, events.c.type, events.c.occurred_ms, events.c.recorded_ms)
        .where(in_range, or_(events.c.type == APPLIED_BY_DEVICE, device_change), events.c.user_id.is_not(None))
        .order_by(events.c.id)
    ).all()
    return ActivityRead(upto, [(s, *c) for s, c in sorted(counts.items())], [tuple(r) for r in changes])

