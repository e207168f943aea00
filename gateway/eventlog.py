"""EventLog: terminals' log events made durable in group commits, acknowledged only after.

Submissions from every terminal queue up on the reactor; one transaction on the writer thread
takes all that queued while the previous commit ran. That is what keeps ingest fast under log
storms. When too many events wait, terminal links stop being read (backpressure) until the
writer catches up; if a commit fails, the same events are retried with backoff and nothing is
acknowledged meanwhile.
"""

from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import func, select
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger

from gateway.database import DatabaseFailure, insert_ignoring_duplicates, upsert
from gateway.monitor import SAVE_FAILED, record_sync_events, sync_event_row
from gateway.schema import events, pending_pulls
from protocol.events import Event

log = Logger(namespace="gateway.eventlog")


@dataclass
class _Submission:
    terminal_id: int
    events: list[Event]
    pull_users: bool
    done: defer.Deferred = field(default_factory=defer.Deferred)
    failure_recorded: bool = False

    def users_to_pull(self) -> set[str]:
        return {e.user_id for e in self.events if e.is_device_user_change} if self.pull_users else set()


def last_stored_event_id(conn, terminal_id: int) -> int:
    stmt = select(func.max(events.c.terminal_event_id)).where(events.c.terminal_id == terminal_id)
    return conn.execute(stmt).scalar() or 0


class EventLog:
    """The ``EventSink`` every terminal connection hands its events to."""

    max_batch_events = 5000
    high_water = 50_000
    low_water = 10_000
    retry_after = staticmethod(backoffPolicy(initialDelay=0.5, maxDelay=30, factor=2, jitter=lambda: 0))  # s, by failures in a row

    def __init__(self, db, clock, metrics, on_committed, pulls_device_updates=lambda: True):
        self._db = db
        self._pulls_device_updates = pulls_device_updates  # the sync mode's, read as each batch arrives
        self._clock = clock
        self._metrics = metrics
        self._on_committed = on_committed  # called with [(terminal_id, users_to_pull)] after commit
        self._queue: deque[_Submission] = deque()
        self._queued_events = 0
        self._flushing = False
        self._failures = 0
        self._connections: set = set()
        self._paused = False
        self._retry = None
        # Failure records wait here until a commit succeeds again; bounded, oldest dropped.
        self._unsaved_failure_rows: deque[dict] = deque(maxlen=10_000)

    @property
    def queued_events(self) -> int:
        return self._queued_events

    def add_connection(self, connection) -> None:
        """A terminal connection stops bringing events (``pause_events``) while the writer lags."""
        self._connections.add(connection)
        if self._paused:
            connection.pause_events()

    def remove_connection(self, connection) -> None:
        self._connections.discard(connection)

    def stored_through(self, terminal_id: int) -> defer.Deferred:
        return self._db.read(last_stored_event_id, terminal_id)

    def submit(self, terminal_id: int, batch: list[Event]) -> defer.Deferred:
        """Queue events for commit; fires with the highest event id once they are durable."""
        sub = _Submission(terminal_id, batch, self._pulls_device_updates())
        self._queue.append(sub)
        self._queued_events += len(batch)
        if self._queued_events > self.high_water and not self._paused:
            self._set_paused(True)
        if not self._flushing:
            self._flush()
        return sub.done

    def record_failure_later(self, row: dict) -> None:
        """Store a monitoring row with the next commit, or on its own if no events are coming."""
        self._unsaved_failure_rows.append(row)
        if not self._flushing:
            self._flush()

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._metrics.reading_paused.set(int(paused))
        log.info("terminal links {state}: {n} events wait for the writer", state="paused" if paused else "resumed", n=self._queued_events)
        for connection in list(self._connections):
            connection.pause_events() if paused else connection.resume_events()

    def _take_batch(self) -> list[_Submission]:
        batch, count = [], 0
        while self._queue and (not batch or count + len(self._queue[0].events) <= self.max_batch_events):
            sub = self._queue.popleft()
            batch.append(sub)
            count += len(sub.events)
        return batch

    def _flush(self) -> None:
        if not self._queue and not self._unsaved_failure_rows:
            return
        self._flushing = True
        batch = self._take_batch()
        failure_rows = list(self._unsaved_failure_rows)
        started = self._clock.seconds()
        d = self._db.write(_store, batch, failure_rows, int(self._clock.seconds() * 1000))
        d.addCallbacks(self._committed, self._failed, callbackArgs=(batch, failure_rows, started), errbackArgs=(batch,))

    def _committed(self, _, batch: list[_Submission], failure_rows: list[dict], started: float) -> None:
        count = sum(len(s.events) for s in batch)
        self._metrics.events_ingested.inc(count)
        self._metrics.commit_batch_size.observe(count)
        self._metrics.commit_seconds.observe(self._clock.seconds() - started)
        for row in failure_rows:  # by identity: rows may have been added (or dropped) meanwhile
            if row in self._unsaved_failure_rows:
                self._unsaved_failure_rows.remove(row)
        self._failures = 0
        self._queued_events -= count
        self._flushing = False
        if self._paused and self._queued_events < self.low_water:
            self._set_paused(False)
        for sub in batch:  # acknowledge first: nothing that follows may hold back an acknowledgement
            sub.done.callback(max(e.event_id for e in sub.events) if sub.events else 0)
        try:
            self._on_committed([(s.terminal_id, s.users_to_pull()) for s in batch])
        except Exception:  # the owed pulls are stored: they are picked up when the terminal reconnects
            log.failure("could not start the pulls these events asked for")
        self._flush()

    def _failed(self, failure, batch: list[_Submission]) -> None:
        if not failure.check(DatabaseFailure):
            log.failure("unexpected error committing events", failure)
        self._metrics.failures.labels("event_commit").inc()
        delay = self.retry_after(self._failures)
        self._failures += 1
        log.warn(
            "could not commit {n} events ({reason}); nothing acknowledged, retrying in {delay}s",
            n=sum(len(s.events) for s in batch),
            reason=failure.getErrorMessage(),
            delay=delay,
        )
        for sub in batch:
            if not sub.failure_recorded:
                sub.failure_recorded = True
                for user_id in sorted(sub.users_to_pull()):
                    self._metrics.failures.labels("save_user").inc()
                    log.warn("{type}: user {user} from terminal {terminal}", type=SAVE_FAILED, user=user_id, terminal=sub.terminal_id)
                    self.record_failure_later(
                        sync_event_row(SAVE_FAILED, sub.terminal_id, user_id, f"events not committed: {failure.getErrorMessage()}",
                                       at_ms=int(self._clock.seconds() * 1000))
                    )
        self._queue.extendleft(reversed(batch))
        self._retry = self._clock.callLater(delay, self._flush)

    def stop(self) -> None:
        """Cancel a pending retry; what was not committed was not acknowledged and will be resent."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()


def _store(conn, batch: list[_Submission], failure_rows: list[dict], recorded: int) -> None:
    rows, pulls = [], []
    for sub in batch:
        for ev in sub.events:
            rows.append(
                dict(
                    terminal_id=sub.terminal_id,
                    terminal_event_id=ev.event_id,
                    type=ev.code_name,
                    code=ev.code,
                    sub_code=ev.sub_code,
                    user_id=ev.user_id or None,
                    occurred_ms=ev.timestamp_ms,
                    recorded_ms=recorded,
                    detail=None,
                )
            )
        pulls += [dict(terminal_id=sub.terminal_id, user_id=u, since_ms=recorded) for u in sub.users_to_pull()]
    insert_ignoring_duplicates(conn, events, rows)
    # A newer edit re-dates an owed pull, so a pull already under way does not settle it.
    upsert(conn, pending_pulls, pulls, key=["terminal_id", "user_id"], update=["since_ms"])
    record_sync_events(conn, failure_rows)
