"""Pusher: delivers the changes feed to every online terminal, in change order, in batches.

For each terminal it reads the users changed after the terminal's cursor, keeps those the sync
mode targets at that terminal, sends them (PUT_USERS, DELETE_USERS for server-side deletions)
and moves the cursor only after the terminal acknowledged them. Ten edits of a user while a
terminal was away are one row in the feed, so they reach it as one record. A terminal's rounds
begin at least ``round_interval_s`` apart, so that changes close together share one. A change
wakes only the terminals it is meant for (gateway/sync/due.py); a round passes over the changes
after a cursor that are not.

A round whose request went unanswered (``Unanswered``: past its deadline, the link still up)
makes the terminal's next round wait: ``backoff_first_s``, doubling with each such round in a
row, at most ``backoff_cap_s``; an acknowledged round, an answer in time (even a refusal) or a
new link ends the wait. A round ends when every request in it has settled, so the records queued
behind an unanswered request are not sent again beside themselves. A terminal, or this
gateway, too busy to answer in time is not sent the same records again and again, every sweep:
that is how an overload feeds itself. Nothing is dropped: the cursor stays where it was, and the
round after the wait sends everything after it, changes committed meanwhile too. The terminal
may have applied what it did not answer in time (its answer comes late: gateway_late_answers);
a record applied again is the same record. A native link stays up after a timeout, so the wait
is here; a ZK device's link ends at one, and its redial backoff is the wait there.

On PostgreSQL a read sees the feed only below the watermark (gateway/store/order.py). A change
that committed above it, behind a transaction still running, is read again shortly: its own
wake-up came while it was hidden, and the transaction holding it back may wake nobody.
"""

from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.sync.connection import Unanswered
from gateway.sync.monitor import APPLIED_BY_DEVICE, DELETED_BY_SERVER, PUSH_REFUSED, record_sync_events, sync_event_row
from gateway.quietlog import Tally
from gateway.store.database import execute_many, execute_values
from gateway.store.order import below_watermark
from gateway.store.schema import terminals, users
from gateway.sync.syncmode import parse_groups
from protocol.errors import RemoteError
from protocol.messages import UserStatus

log = Logger(namespace="gateway.pusher")


@dataclass(frozen=True)
class FeedEntry:
    user_id: str
    change_seq: int
    record: bytes | None  # wire encoding; None for a deletion on the server
    access_groups: frozenset[int]
    holder_terminal: int | None


class FeedPage(list):
    """Feed entries in change order; ``held_back``: changes already committed lie beyond them,
    above the watermark, for a later read."""

    held_back = False


class Pusher:
    scan_limit = 256  # feed rows read per round
    batch_users = 64  # users per PUT_USERS or DELETE_USERS
    recheck_s = 0.05  # a read held back by the watermark is made again after this
    # A terminal's rounds start at least this far apart. A round (a feed read, a request, its
    # answer, a cursor move) costs about the same for one change as for ten, so changes committed
    # meanwhile wait to share the next one. A change after a quiet spell goes at once.
    round_interval_s = 0.5
    # The longest wait after rounds left unanswered: twice the native request deadline, so that a
    # terminal that stays too busy gets one round per half minute, not one per sweep.
    backoff_first_s = 1.0  # the wait after a first unanswered round, doubled after each further one
    backoff_cap_s = 30.0

    def __init__(self, db, registry, settings, clock, metrics, on_local_change_kept=lambda terminal_id, user_ids: None,
                 commit_with=None):
        self._db = db
        # Where cursor moves are written: the event log's next group commit (``commit_with_events``), or a transaction of their own.
        self._commit_with = commit_with
        # A terminal kept its own keypad change (LOCAL_CHANGE_PENDING): a pull of it is owed, or it stays pending for ever.
        self._on_local_change_kept = on_local_change_kept
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._busy: set[int] = set()
        self._again: set[int] = set()
        # Cursor moves wait here while one commit runs; the next commit takes them all (group
        # commit), so a storm costs no fsync per terminal, and with the event log's commits none at all.
        self._cursor_moves: list[tuple[int, int, list[dict], defer.Deferred]] = []
        self._moving_cursors = False
        self._feed_reads: dict[int, tuple[int, list[defer.Deferred]]] = {}  # cursor -> (wake it began in, waiters)
        self._wakes = 0  # wakes so far: each follows a committed change
        self._rechecks: dict[int, object] = {}  # terminal -> the delayed call reading its held-back feed again
        self._round_began: dict[int, float] = {}  # terminal -> when its last round began
        self._paced: dict[int, object] = {}  # terminal -> the delayed call beginning its next round
        self._held_off: dict[int, tuple[float, float]] = {}  # terminal -> (its wait, when it ends) after unanswered rounds
        self._stopped = False
        # A storm is thousands of acknowledged pushes a second: one INFO line a second. Each push is
        # a monitoring row already; a DEBUG line for each cost 2 % of the gateway's CPU at 10 enrolments/s.
        self._applied = Tally(log, clock, "{changes} user changes applied by {terminals} terminals in the last {period:g} s")

    def stop(self) -> None:
        self._stopped = True  # a round that ends after this schedules nothing
        self._applied.stop()
        for calls in (self._rechecks, self._paced):
            for call in calls.values():
                call.cancel()
            calls.clear()

    def online(self, terminal_id: int) -> None:
        """A terminal (re)connected: a wait after unanswered rounds belonged to its old link."""
        if self._held_off.pop(terminal_id, None) is not None and terminal_id in self._paced:
            self._paced.pop(terminal_id).cancel()
        self.kick(terminal_id)

    def wake(self, groups: frozenset[int] | None = None) -> None:
        """A change committed: begin rounds at the terminals it is meant for, by the sync mode,
        a user of ``groups`` (None: at every terminal). The others do no round for it: their
        cursors stay behind it, and their next round passes over it (gateway/sync/due.py)."""
        self._wakes += 1
        mode = self._settings.mode
        for term in self._registry.connected():
            if groups is None or mode.targets(groups, term.access_groups):
                self.kick(term.terminal_id)

    def sweep(self, terminal_id: int) -> None:
        """The periodic sweep's kick of a lagging terminal: none when a round is under way or due.
        It lags only until that round's cursor move is committed, and a round begun for nothing
        would make the next change wait ``round_interval_s`` for it."""
        if terminal_id not in self._busy and terminal_id not in self._paced:
            self.kick(terminal_id)

    def kick(self, terminal_id: int, paced: bool = True) -> None:
        """Begin a round of pushes to a terminal; ``paced``: not sooner than ``round_interval_s``
        after its last one began (unpaced: a backlog is being read, page after page). Never
        before the wait after an unanswered round has ended."""
        if self._stopped:
            return
        if terminal_id in self._busy:
            self._again.add(terminal_id)  # a change landed mid-round: read the feed again after
            return
        if terminal_id in self._paced:
            return  # its next round is due already
        term = self._registry.terminals.get(terminal_id)
        if term is None or term.connection is None or not self._settings.mode.pushes:
            return
        now = self._clock.seconds()
        due = self._round_began.get(terminal_id, float("-inf")) + self.round_interval_s if paced else float("-inf")
        wait_s = max(due, self._held_off.get(terminal_id, (0.0, float("-inf")))[1]) - now
        if wait_s > 0:
            self._paced[terminal_id] = self._clock.callLater(wait_s, self._paced_round, terminal_id)
            return
        self._round_began[terminal_id] = now
        self._busy.add(terminal_id)
        self._again.discard(terminal_id)
        d = self._read_feed(terminal_id, term.cursor)
        d.addCallback(self._deliver, term, term.connection)
        d.addBoth(self._round_done, terminal_id, term.connection)

    def _read_feed(self, terminal_id: int, cursor: int) -> defer.Deferred:
        """The feed after ``cursor``: one read serves every terminal at that cursor at the moment.

        After a change every online terminal wakes at the same cursor; without sharing, each
        enrolment cost as many identical reads as there are terminals.
        """
        began, waiting = self._feed_reads.get(cursor, (None, None))
        if waiting is None:
            waiting = []
            self._feed_reads[cursor] = (self._wakes, waiting)
            self._db.read(read_feed, cursor, self.scan_limit).addBoth(self._feed_read, cursor)
        elif began != self._wakes:
            self._again.add(terminal_id)  # that read began before the change that woke us: read again after
        mine = defer.Deferred()
        waiting.append(mine)
        return mine

    def _feed_read(self, result, cursor: int) -> None:
        _, waiters = self._feed_reads.pop(cursor)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _recheck(self, terminal_id: int) -> None:
        self._rechecks.pop(terminal_id, None)
        self.kick(terminal_id, paced=False)  # changes already committed wait: as soon as recheck_s says

    def _paced_round(self, terminal_id: int) -> None:
        del self._paced[terminal_id]
        self.kick(terminal_id)

    def _deliver(self, entries: FeedPage, term, connection):
        if self._stopped:
            return False
        if entries.held_back and term.terminal_id not in self._rechecks:
            self._rechecks[term.terminal_id] = self._clock.callLater(self.recheck_s, self._recheck, term.terminal_id)
        if not entries:
            return False
        mode = self._settings.mode
        due = [
            e for e in entries
            if e.holder_terminal != term.terminal_id and mode.targets(e.access_groups, term.access_groups)
        ]
        puts = [e.record for e in due if e.record is not None]
        deletes = [e.user_id for e in due if e.record is None]
        # Where device updates are pulled, a terminal keeps a keypad change not fetched yet: the
        # pull merges it and the merged record comes back, so neither side's change is lost.
        keep_local = mode.pulls_device_updates
        sends = [connection.put_users(chunk, keep_local).addCallback(lambda r: (r, APPLIED_BY_DEVICE))
                 for chunk in request_chunks(puts, connection.push_bytes, self.batch_users)]
        sends += [connection.delete_users(deletes[i:i + self.batch_users]).addCallback(lambda r: (r, DELETED_BY_SERVER))
                  for i in range(0, len(deletes), self.batch_users)]
        d = answers_of(sends)
        # A short page held the whole feed at read time; changes committed since kick again (_again),
        # so only a full page needs another read straight away.
        d.addCallback(self._acknowledged, term, entries[-1].change_seq, len(entries) == self.scan_limit)
        return d

    def _acknowledged(self, answers, term, cursor: int, more: bool):
        rows, kept = [], []
        now_ms = int(self._clock.seconds() * 1000)
        for results, applied_type in answers:
            done, kept_here = delivery_rows(term.terminal_id, results, applied_type, self._metrics, now_ms)
            rows += done
            kept += kept_here
        if kept:
            self._on_local_change_kept(term.terminal_id, kept)
        applied = sum(1 for row in rows if row["type"] in (APPLIED_BY_DEVICE, DELETED_BY_SERVER))
        d = self._move_cursor(term.terminal_id, cursor, rows)

        def moved(_):
            term.cursor = max(term.cursor, cursor)
            if applied:
                self._applied.add(term.terminal_id, changes=applied)
            return more

        return d.addCallback(moved)

    def _move_cursor(self, terminal_id: int, cursor: int, rows: list[dict]) -> defer.Deferred:
        d = defer.Deferred()
        self._cursor_moves.append((terminal_id, cursor, rows, d))
        if not self._moving_cursors:
            self._commit_cursor_moves()
        return d

    def _commit_cursor_moves(self) -> None:
        batch, self._cursor_moves = self._cursor_moves, []
        self._moving_cursors = bool(batch)
        if not batch:
            return

        def settle(result):
            for *_, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            self._commit_cursor_moves()

        commit = self._commit_with or self._db.write
        commit(advance_cursors, [move[:3] for move in batch]).addBoth(settle)

    def _round_done(self, result, terminal_id: int, connection):
        self._busy.discard(terminal_id)
        if isinstance(result, bool):
            self._held_off.pop(terminal_id, None)
            if result:  # a full page: more of a backlog waits
                self.kick(terminal_id, paced=False)
            elif terminal_id in self._again:
                self.kick(terminal_id)
            return None
        # A failed round leaves the cursor where it was; the next kick (a change, a reconnect,
        # the periodic sweep) tries again from there, after a wait if it went unanswered.
        self._metrics.failures.labels("push").inc()
        term = self._registry.terminals.get(terminal_id)
        # Unanswered on a link the terminal has since replaced says nothing of the new one.
        if not result.check(Unanswered) or term is None or term.connection is not connection:
            if result.check(RemoteError):  # answered in time: the terminal keeps up
                self._held_off.pop(terminal_id, None)
            log.warn("push to terminal {tid} failed: {e}", tid=terminal_id, e=result.getErrorMessage())
            if terminal_id in self._again:  # a change, or a new link, came meanwhile: it need not wait for the sweep
                self.kick(terminal_id)
            return None
        previous = self._held_off.get(terminal_id)
        wait_s = self.backoff_first_s if previous is None else min(self.backoff_cap_s, 2 * previous[0])
        self._held_off[terminal_id] = (wait_s, self._clock.seconds() + wait_s)
        log.warn("push to terminal {tid} failed: {e}; its next round waits {wait:g} s", tid=terminal_id, e=result.getErrorMessage(), wait=wait_s)
        self.kick(terminal_id)  # due when the wait ends: the sweep finds it due and leaves it
        return None


def answers_of(sends: list[defer.Deferred]) -> defer.Deferred:
    """The answers to a round's requests, in order, or the first request's failure once every
    request has settled: a round whose first requests went unanswered ends only when the ones
    queued behind them (a link carries 8 at a time) were answered or given up on too, so the
    round after the wait does not send their records again beside them. A lone change is one
    request: gathering it cost 8 us of CPU against 2 per terminal and change."""
    if len(sends) == 1:
        return sends[0].addCallback(lambda answer: [answer])
    return defer.DeferredList(sends, consumeErrors=True).addCallback(_every_answer)


def _every_answer(settled: list[tuple[bool, object]]):
    failed = [value for ok, value in settled if not ok]
    if not failed:
        return [value for _, value in settled]
    # An unanswered request decides the round's fate: a refusal beside it does not say the terminal keeps up.
    return next((f for f in failed if f.check(Unanswered)), failed[0])


NOT_HELD = "the terminal did not hold this user: nothing left to delete"


def delivery_rows(terminal_id: int, results, applied_type: str, metrics, now_ms: int) -> tuple[list[dict], list[str]]:
    """Monitoring rows for a terminal's answers to a put or a delete, and the users it kept its
    own change of (LOCAL_CHANGE_PENDING): each of those owes a pull.

    A deletion answered NOT_FOUND left the terminal as the server wants it (a retry of a deletion
    applied late, a user the terminal never got): it is recorded as done, with that said, not as
    a refusal."""
    rows, kept = [], []
    applied = 0
    for result in results:
        if result.status == UserStatus.OK:
            applied += 1
            rows.append(sync_event_row(applied_type, terminal_id, result.user_id, at_ms=now_ms))
        elif result.status == UserStatus.NOT_FOUND and applied_type == DELETED_BY_SERVER:
            applied += 1
            rows.append(sync_event_row(applied_type, terminal_id, result.user_id, NOT_HELD, at_ms=now_ms))
        elif result.status == UserStatus.LOCAL_CHANGE_PENDING:
            log.info("terminal {tid} keeps its own change of user {user}: a pull of it is owed", tid=terminal_id, user=result.user_id)
            kept.append(result.user_id)
        else:
            metrics.failures.labels("push_refused").inc()
            detail = f"terminal answered {_status_name(result.status)}" + (f": {result.detail}" if result.detail else "")
            rows.append(sync_event_row(PUSH_REFUSED, terminal_id, result.user_id, detail, at_ms=now_ms))
    if applied:
        metrics.pushes.inc(applied)
    return rows, kept


def _status_name(status: int) -> str:
    try:
        return UserStatus(status).name
    except ValueError:
        return f"status {status}"


def request_chunks(records: list[bytes], limit: int, max_users: int):
    """Encoded records in groups of at most ``max_users`` and ``limit`` bytes (a record longer
    than the limit goes alone)."""
    chunk, size = [], 0
    for record in records:
        if chunk and (len(chunk) == max_users or size + len(record) > limit):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += len(record)
    if chunk:
        yield chunk


def read_feed(conn, cursor: int, limit: int) -> FeedPage:
    """Up to ``limit`` changes after ``cursor``: those below the watermark, read in the same
    statement (the same snapshot) as the flag that says whether committed ones lie above it."""
    stmt = (
        select(users.c.user_id, users.c.change_seq, users.c.record, users.c.access_groups, users.c.holder_terminal,
               below_watermark(conn, users.c.change_seq))
        .where(users.c.change_seq > cursor)
        .order_by(users.c.change_seq)
        .limit(limit)
    )
    page = FeedPage()
    for r in conn.execute(stmt):
        if not r[5]:
            page.held_back = True
            break
        page.append(FeedEntry(r[0], r[1], r[2], parse_groups(r[3]), r[4]))
    return page


# One statement for every cursor move of a group commit: on SQLite executed with many parameter sets
# (in-process, cheap; given to the driver as tuples: SQLAlchemy's processing of each set cost more); on PostgreSQL one UPDATE from a VALUES list, since psycopg2's executemany is
# a round trip and a statement to parse and plan per terminal (200 a commit in a storm).
_MOVE_CURSOR = (
    update(terminals)
    .where(terminals.c.terminal_id == bindparam("moved_terminal"), terminals.c.cursor < bindparam("moved_to"))
    .values(cursor=bindparam("moved_to"))
)
_MOVE_CURSORS_PG = ("UPDATE terminals SET cursor = moved.cursor FROM (VALUES %s) AS moved (terminal_id, cursor) "
                    "WHERE terminals.terminal_id = moved.terminal_id AND terminals.cursor < moved.cursor")


def advance_cursors(conn, moves: list[tuple[int, int, list[dict]]]) -> None:
    """Several terminals' cursor moves, ``(terminal_id, cursor, monitor_rows)``, in one transaction:
    one UPDATE for all moves, one INSERT for all their monitoring rows. A cursor only moves
    forward, so two moves of one terminal in a batch leave the higher."""
    highest: dict[int, int] = {}
    for terminal_id, cursor, _ in moves:
        highest[terminal_id] = max(cursor, highest.get(terminal_id, cursor))
    if conn.dialect.name == "postgresql":
        execute_values(conn, _MOVE_CURSORS_PG, list(highest.items()), template="(%s::bigint, %s::bigint)")
    else:
        execute_many(conn, _MOVE_CURSOR, [dict(moved_terminal=t, moved_to=cursor) for t, cursor in highest.items()])
    record_sync_events(conn, [row for *_, rows in moves for row in rows])
