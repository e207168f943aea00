"""EventLog: terminals' log events made durable in group commits, acknowledged only after.

Submissions from every terminal queue up on the reactor; one transaction on the writer thread
takes all that queued while the previous commit ran. That is what keeps ingest fast under log
storms. When too many events wait, terminal links stop being read (backpressure) until the
writer catches up; if a commit fails, the same events are retried with backoff and nothing is
acknowledged meanwhile.

Events are keyed by (terminal, log epoch, event id) (docs/protocol.md, "Event log identity"): a
terminal whose counter starts again opens a new log rather than colliding with its old ids. An
id stored before with other content is kept beside the first as a conflict; ids going back or
leaping far ahead are stored and reported. Each of these leaves a monitoring event, a metric and
a log line: nothing a terminal sends is dropped unseen.
"""

from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger

from gateway.quietlog import RepeatedLines
from gateway.store.database import DatabaseFailure, insert_ignoring_duplicates, upsert
from gateway.sync.monitor import EVENT_CONFLICT, LOG_IRREGULAR, LOG_RESTARTED, SAVE_FAILED, record_sync_events, sync_event_row
from gateway.store.order import keyed
from gateway.store.schema import events, pending_pulls, terminals
from gateway.sync.changes import NOT_PULLED, RULES, TERMINAL_DELETE
from gateway.sync.history import TERMINAL, noted, record_history
from gateway.sync.unsaved import UnsavedEvents
from protocol.events import USER_CHANGE_CODES, Event, EventCode, Origin

log = Logger(namespace="gateway.eventlog")


KEYPAD = "keypad"  # an Anomaly's kind for a keypad change the server does not follow
LEAP_LIMIT = 2**32  # ids further apart than this within one log leapt: no terminal logs that much between two events


@dataclass(frozen=True)
class LogState:
    """The log of a terminal events are stored in now, and the highest id stored in it."""

    epoch: int
    high: int


@dataclass(frozen=True)
class Anomaly:
    """Something irregular in a terminal's log, or a keypad change the server does not follow,
    reported once the commit that stored it succeeded."""

    kind: str  # restarted | conflict | leap | backwards | keypad (not irregular: a line in the log, no metric)
    terminal_id: int
    text: str


@dataclass
class _Submission:
    terminal_id: int
    events: list[Event]
    pull_users: bool
    log_epoch: int | None = None  # announced by the terminal; None: one that announces none
    done: defer.Deferred = field(default_factory=defer.Deferred)
    failure_recorded: bool = False

    def users_to_pull(self) -> set[str]:
        return {e.user_id for e in self.events if e.is_device_user_change} if self.pull_users else set()


def highest_event_id(conn, terminal_id: int, epoch: int) -> int:
    # IS NOT NULL changes no maximum and lets the unique key, which holds no monitoring row, be read:
    # without it SQLite walked every row of the terminal.
    stmt = select(func.max(events.c.terminal_event_id)).where(
        events.c.terminal_id == terminal_id, events.c.log_epoch == epoch, events.c.terminal_event_id.is_not(None))
    return conn.execute(stmt).scalar() or 0


def stored_since(conn, terminal_id: int, code: int, since_ms: int) -> set[tuple[str | None, int, int]]:
    """A terminal's stored events of one code from ``since_ms`` on, as (user id, time, sub-code):
    what a driver that reads a log without ids (ZK attendance) checks its reads against."""
    rows = conn.execute(select(events.c.user_id, events.c.occurred_ms, events.c.sub_code).where(
        events.c.terminal_id == terminal_id, events.c.code == code, events.c.occurred_ms >= since_ms))
    return {(user_id, occurred_ms, sub_code) for user_id, occurred_ms, sub_code in rows}


def current_log(conn, terminal_id: int) -> LogState:
    epoch = conn.execute(select(terminals.c.log_epoch).where(terminals.c.terminal_id == terminal_id)).scalar() or 0
    return LogState(epoch, highest_event_id(conn, terminal_id, epoch))


def last_stored_event_id(conn, terminal_id: int) -> int:
    """The highest event id stored in the terminal's current log."""
    return current_log(conn, terminal_id).high


class EventLog:
    """The ``EventSink`` every terminal connection hands its events to."""

    max_batch_events = 5000
    # Commits start at least this far apart. A lone event after a quiet spell commits at once; the
    # UPDATE_SUCCESS events of one change pushed to 200 terminals, which come back over some tens
    # of ms, share a few commits instead of taking one each (an fsync and two thread hand-offs).
    commit_window_s = 0.02
    slow_commit_s = 1.0  # a group commit this slow is said in the log: the database held the writer
    high_water = 50_000
    low_water = 10_000
    retry_after = staticmethod(backoffPolicy(initialDelay=0.5, maxDelay=30, factor=2, jitter=lambda: 0))  # s, by failures in a row

    def __init__(self, db, clock, metrics, on_committed, pulls_device_updates=lambda: True, reactor_late_since=lambda since_s: 0.0):
        self._db = db
        self._reactor_late_since = reactor_late_since  # ReactorLag.late_since: who held a slow commit up
        self._pulls_device_updates = pulls_device_updates  # the sync mode's, read as each batch arrives
        self._clock = clock
        self._metrics = metrics
        self._lines = RepeatedLines(log, clock)  # a terminal whose every event leaps must not fill the disk
        self._on_committed = on_committed  # called with [(terminal_id, users_to_pull)] after commit
        self._queue: deque[_Submission] = deque()
        self._queued_events = 0
        self._flushing = False
        self._failures = 0
        self._connections: set = set()
        self._paused = False
        self._retry = None
        self._window = None  # the delayed call starting a commit once the window since the last one has passed
        self._stopped = False
        self._last_commit_s = float("-inf")
        self._logs: dict[int, LogState] = {}  # terminal -> its current log, as committed
        # Other writes that take the next group commit rather than one of their own: (work, args, fired once committed).
        self._riders: list[tuple] = []
        # Failure records wait here until a commit succeeds again, shown meanwhile.
        self.unsaved = UnsavedEvents(metrics)

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

    def begin_log(self, terminal_id: int, log_epoch: int | None) -> defer.Deferred:
        """A terminal connected announcing ``log_epoch`` (None: it announces none); fires with
        the ``ack_through`` its WELCOME carries. A log other than the one stored before is a
        restart, reported here."""
        d = self._db.write(open_log, terminal_id, log_epoch, self._now_ms())

        def opened(result):
            state, ack_through, anomalies = result
            self._logs[terminal_id] = state
            self._report(anomalies)
            return ack_through

        return d.addCallback(opened)

    def submit(self, terminal_id: int, batch: list[Event], log_epoch: int | None = None) -> defer.Deferred:
        """Queue events of the log ``log_epoch`` (None: the terminal's current one) for commit;
        fires with the highest event id once they are durable."""
        sub = _Submission(terminal_id, batch, self._pulls_device_updates(), log_epoch)
        self._queue.append(sub)
        self._queued_events += len(batch)
        if self._queued_events > self.high_water and not self._paused:
            self._set_paused(True)
        if not self._flushing:
            self._flush()
        return sub.done

    def commit_with_events(self, work, *args) -> defer.Deferred:
        """Run ``work(connection, *args)`` in the next group commit of events; fires once it is
        committed, fails if that commit does (the caller decides whether to try again).

        In a storm the sync core's own writes (cursor moves and the monitoring events of
        acknowledged pushes) then cost no transaction and no fsync of their own."""
        d = defer.Deferred()
        self._riders.append((work, args, d))
        if not self._flushing:
            self._flush()
        return d

    def record_failure_later(self, row: dict) -> None:
        """Store a monitoring row with the next commit, or on its own if no events are coming."""
        self.unsaved.add(row)
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
        if self._stopped or (not self._queue and not self.unsaved and not self._riders):
            return
        self._flushing = True  # from here until committed: what arrives meanwhile waits for the next
        wait_s = self._last_commit_s + self.commit_window_s - self._clock.seconds()
        if wait_s > 0:
            self._window = self._clock.callLater(wait_s, self._commit)
        else:
            self._commit()

    def _commit(self) -> None:
        self._window = None
        batch = self._take_batch()
        unsaved = self.unsaved.taken()
        riders, self._riders = self._riders, []
        started = self._last_commit_s = self._clock.seconds()
        d = self._db.write(_store, batch, self.unsaved.rows(), self._now_ms(), dict(self._logs), [r[:2] for r in riders])
        d.addCallbacks(self._committed, self._failed, callbackArgs=(batch, unsaved, started, riders), errbackArgs=(batch, riders))

    def _committed(self, stored, batch: list[_Submission], unsaved: list[int], started: float, riders: list[tuple]) -> None:
        logs, anomalies = stored
        self._logs.update(logs)
        count = sum(len(s.events) for s in batch)
        self._metrics.events_ingested.inc(count)
        if batch:
            self._metrics.commit_batch_size.observe(count)
        took_s = self._clock.seconds() - started
        self._metrics.commit_seconds.observe(took_s)
        if took_s >= self.slow_commit_s:
            # A lock shorter than the database's busy timeout fails nothing, so it leaves no "Fail to
            # save" event: this line (and gateway_commit_seconds) is what shows that terminals waited.
            late_s = self._reactor_late_since(started)
            if late_s >= took_s / 2:  # the commit was done; its result waited for a reactor too busy to run it
                log.warn("a group commit of {n} events took {s:.1f} s: the gateway was overloaded (its reactor ran {late:.1f} s "
                         "late); terminals waited that long for their acknowledgements", n=count, s=took_s, late=late_s)
            else:
                log.warn("a group commit of {n} events took {s:.1f} s: the database was busy (locked or stalled); terminals "
                         "waited that long for their acknowledgements", n=count, s=took_s)
        self.unsaved.stored(unsaved)  # by number: rows may have been added (or dropped) meanwhile
        self._failures = 0
        self._queued_events -= count
        self._flushing = False
        self._report(anomalies)
        if self._paused and self._queued_events < self.low_water:
            self._set_paused(False)
        for sub in batch:  # acknowledge first: nothing that follows may hold back an acknowledgement
            sub.done.callback(max(e.event_id for e in sub.events) if sub.events else 0)
        try:
            self._on_committed([(s.terminal_id, s.users_to_pull()) for s in batch])
        except Exception:  # the owed pulls are stored: they are picked up when the terminal reconnects
            log.failure("could not start the pulls these events asked for")
        if not self._flushing:  # an acknowledgement's callback may have submitted, and so started the next already
            self._flush()
        for *_, done in riders:  # after the next flush began: what they ride next waits for the one after
            done.callback(None)

    def _failed(self, failure, batch: list[_Submission], riders: list[tuple]) -> None:
        if not failure.check(DatabaseFailure):
            log.failure("unexpected error committing events", failure)
        self._metrics.failures.labels("event_commit").inc()
        for *_, done in riders:
            done.errback(failure)
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
                                       at_ms=self._now_ms())
                    )
        self._queue.extendleft(reversed(batch))
        if not self._stopped:  # stopped: not acknowledged, so resent to the next start
            self._retry = self._clock.callLater(delay, self._flush)

    def _report(self, anomalies: list[Anomaly]) -> None:
        for anomaly in anomalies:
            if anomaly.kind == KEYPAD:
                log.info("terminal {tid}: {text}", tid=anomaly.terminal_id, text=anomaly.text)
                continue
            self._metrics.event_log_anomalies.labels(anomaly.kind).inc()
            self._lines.warn(f"event log notices ({anomaly.kind})", f"terminal {anomaly.terminal_id}", "terminal {tid}: {text}",
                             tid=anomaly.terminal_id, text=anomaly.text)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def stop(self) -> None:
        """Cancel a pending retry or commit and start no other (what was not committed was not
        acknowledged and will be resent), and say the notices held back."""
        self._stopped = True
        for call in (self._retry, self._window):
            if call is not None and call.active():
                call.cancel()
        self._lines.stop()


def open_log(conn, terminal_id: int, announced: int | None, at_ms: int) -> tuple[LogState, int, list[Anomaly]]:
    """Make the log a connecting terminal announced its current one; (its state, the
    ``ack_through`` for WELCOME, what to report).

    A terminal that announces no epoch cannot say whether its counter started again, so it is
    acknowledged nothing at the handshake: it resends what it holds and each event is stored once
    by content. Nor is one whose log went irregular (a leap would make it forget events).
    """
    previous = current_log(conn, terminal_id)
    epoch = announced if announced is not None else (previous.epoch if previous.epoch <= 0 else _next_gateway_epoch(conn, terminal_id))
    anomalies = []
    if epoch != previous.epoch:
        conn.execute(update(terminals).where(terminals.c.terminal_id == terminal_id).values(log_epoch=epoch))
        if previous.high:
            anomalies.append(_restarted(conn, terminal_id, previous, epoch, "it announced a new log", at_ms))
    state = LogState(epoch, highest_event_id(conn, terminal_id, epoch))
    ack_through = 0 if announced is None or went_irregular(conn, terminal_id, epoch) else state.high
    return state, ack_through, anomalies


def went_irregular(conn, terminal_id: int, epoch: int) -> bool:
    """Whether a terminal's log has an irregularity on record: asked at every handshake, so read
    from an index of those rows alone (``ix_events_irregular``), not by walking the terminal's log."""
    return conn.execute(select(events.c.id).where(
        events.c.type == LOG_IRREGULAR, events.c.terminal_id == terminal_id, events.c.log_epoch == epoch).limit(1)
    ).first() is not None


def _next_gateway_epoch(conn, terminal_id: int) -> int:
    """A log number for a terminal that announces none: 0, then -1, -2, ... (announced ones are positive)."""
    lowest = conn.execute(select(func.min(events.c.log_epoch)).where(events.c.terminal_id == terminal_id)).scalar() or 0
    return min(lowest, 0) - 1


def _restarted(conn, terminal_id: int, previous: LogState, epoch: int, why: str, at_ms: int) -> Anomaly:
    text = f"event log restarted ({why}): log {previous.epoch} ended at event {previous.high}, events now go to log {epoch}"
    record_sync_events(conn, [sync_event_row(LOG_RESTARTED, terminal_id, "", text, at_ms=at_ms, log_epoch=epoch)])
    return Anomaly("restarted", terminal_id, text)


def _event_row(terminal_id: int, epoch: int, ev: Event, recorded: int) -> dict:
    return dict(
        terminal_id=terminal_id,
        terminal_event_id=ev.event_id,
        log_epoch=epoch,
        type=ev.code_name,
        code=ev.code,
        sub_code=ev.sub_code,
        user_id=ev.user_id or None,
        occurred_ms=ev.timestamp_ms,
        recorded_ms=recorded,
        detail=None,
    )


def _same_content(row, ev: Event) -> bool:
    return (row.occurred_ms, row.code, row.sub_code, row.user_id or "") == (ev.timestamp_ms, ev.code, ev.sub_code, ev.user_id)


def _stored_ids(conn, terminal_id: int, epoch: int, low: int, high: int) -> dict:
    stmt = select(events.c.id, events.c.terminal_event_id, events.c.occurred_ms, events.c.code, events.c.sub_code, events.c.user_id).where(
        events.c.terminal_id == terminal_id,
        events.c.log_epoch == epoch,
        events.c.terminal_event_id.between(low, high),
    )
    return {row.terminal_event_id: row for row in conn.execute(stmt)}


def _store_submission(conn, sub: _Submission, state: LogState, recorded: int, rows: list[dict], anomalies: list[Anomaly]) -> LogState:
    """Rows for one submission's events; the log's state after them."""
    t = sub.terminal_id
    epoch = sub.log_epoch if sub.log_epoch is not None else state.epoch
    if epoch != state.epoch:  # submitted before a reconnect announced another log
        state = LogState(epoch, highest_event_id(conn, t, epoch))
    ids = [e.event_id for e in sub.events]
    # Resends are the only ids at or below the log's highest: look them up, in one range read.
    stored = _stored_ids(conn, t, epoch, min(ids), max(ids)) if min(ids) <= state.high else {}
    fresh = [e for e in sub.events if e.event_id not in stored]
    backwards = [e.event_id for e in fresh if e.event_id < state.high]
    conflicts = [e for e in sub.events if e.event_id in stored and not _same_content(stored[e.event_id], e)]
    if sub.log_epoch is None and (conflicts or backwards):
        # No epoch announced: ids going back can only mean the counter started again.
        new_epoch = _next_gateway_epoch(conn, t)
        conn.execute(update(terminals).where(terminals.c.terminal_id == t).values(log_epoch=new_epoch))
        anomalies.append(_restarted(conn, t, state, new_epoch, f"its event ids went back to {min(ids)}", recorded))
        state, stored, fresh, backwards, conflicts = LogState(new_epoch, 0), {}, sub.events, [], []
        epoch = new_epoch
    for ev in conflicts:
        first = stored[ev.event_id]
        text = (f"event {ev.event_id} of log {epoch} arrived again with other content; the first is event #{first.id} "
                f"({first.code:#06x} user {first.user_id or '-'} at {first.occurred_ms}), this one is kept here")
        rows.append(_event_row(t, epoch, ev, recorded) | dict(terminal_event_id=None, type=EVENT_CONFLICT, detail=text))
        anomalies.append(Anomaly("conflict", t, text))
    if backwards:
        _irregular(rows, anomalies, t, epoch, recorded, "backwards",
                   f"event ids went back within log {epoch}: {min(backwards)} after {state.high}; stored")
    previous = state.high
    for event_id in sorted(e.event_id for e in fresh):  # in id order already, as the protocol asks
        if event_id - previous > LEAP_LIMIT:
            _irregular(rows, anomalies, t, epoch, recorded, "leap", f"event ids leapt within log {epoch}: {event_id} after {previous}; stored")
        previous = max(previous, event_id)
    rows += [_event_row(t, epoch, ev, recorded) for ev in fresh]
    if fresh:
        _note_keypad_changes(rows[-len(fresh):], sub.pull_users, recorded, anomalies)
    return LogState(epoch, previous)


def _note_keypad_changes(rows: list[dict], pulled: bool, recorded: int, anomalies: list[Anomaly]) -> None:
    """Say, on the event, in the user's history and in the log, what the server does not follow
    of a keypad change: a delete (never applied to the server), an enrolment or edit in a sync
    mode that does not pull. A pulled change is told by its merge."""
    for row in rows:
        if row["sub_code"] != Origin.DEVICE or not row["user_id"]:
            continue  # most events: doors, verifications, what the server sent
        if row["code"] == EventCode.DELETE_SUCCESS:
            rule, deed = TERMINAL_DELETE, "deleted at the keypad"
        elif row["code"] in USER_CHANGE_CODES and not pulled:
            rule, deed = NOT_PULLED, "changed at the keypad"
        else:
            continue
        row["detail"] = f"{rule}: {RULES[rule]}"
        row["history"] = noted(row["user_id"], TERMINAL, rule, deed, recorded, row["terminal_id"])
        anomalies.append(Anomaly(KEYPAD, row["terminal_id"], f"user {row['user_id']} {deed}: {row['detail']}"))


def _irregular(rows, anomalies, terminal_id: int, epoch: int, recorded: int, kind: str, text: str) -> None:
    rows.append(sync_event_row(LOG_IRREGULAR, terminal_id, "", text, at_ms=recorded, log_epoch=epoch))
    anomalies.append(Anomaly(kind, terminal_id, text))


def _store(conn, batch: list[_Submission], failure_rows: list[dict], recorded: int,
           logs: dict[int, LogState] | None = None, riders=()) -> tuple[dict[int, LogState], list[Anomaly]]:
    """Store a group commit's events, and run the ``(work, args)`` riding along; the logs they
    went to (``logs``: those known before) and what to report."""
    logs = dict(logs or {})
    rows, pulls, anomalies = [], [], []
    for sub in batch:
        if sub.events:
            state = logs.get(sub.terminal_id) or current_log(conn, sub.terminal_id)
            logs[sub.terminal_id] = _store_submission(conn, sub, state, recorded, rows, anomalies)
        pulls += [dict(terminal_id=sub.terminal_id, user_id=u, since_ms=recorded) for u in sub.users_to_pull()]
    history = [row.pop("history") for row in rows if "history" in row]
    insert_ignoring_duplicates(conn, events, keyed(conn, rows))
    record_history(conn, history)
    # A newer edit re-dates an owed pull, so a pull already under way does not settle it.
    upsert(conn, pending_pulls, pulls, key=["terminal_id", "user_id"], update=["since_ms"])
    record_sync_events(conn, failure_rows)
    for work, args in riders:
        work(conn, *args)
    return logs, anomalies
