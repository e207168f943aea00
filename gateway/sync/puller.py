"""Puller: fetches users enrolled or edited on a terminal and merges them into the server.

Which pulls are owed is durable (``pending_pulls``, written in the same transaction as the
event that asked for them), so a pull survives a crash, a lost link or a database outage: it is
retried with backoff until the merge commits. Many edits of one user make one pull.
"""

import itertools
from dataclasses import dataclass

from sqlalchemy import delete, select
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger

from gateway.store.database import DatabaseFailure, upsert
from gateway.sync.changes import CARD_LIMIT, SERVER_DELETED, summary
from gateway.sync.history import TERMINAL, history_row, noted, record_history
from gateway.sync.merge import merge_reasons, merge_vacant_fields, whole_record
from gateway.sync.pusher import delivery_rows, request_chunks
from gateway.sync.monitor import (
    APPLIED_BY_DEVICE,
    CHANGE_DROPPED,
    DELETED_BY_SERVER,
    MERGED_UNCHANGED,
    SAVE_FAILED,
    SAVED_FROM_DEVICE,
    record_sync_events,
    sync_event_row,
)
from gateway.store.schema import events, pending_pulls
from gateway.sync.users import Stored, store_record, stored_users
from protocol.errors import ProtocolError
from protocol.events import EventCode, Origin
from protocol.records import MAX_CARDS, UserRecord, UserRecordWire
from protocol.text import text_fault

log = Logger(namespace="gateway.puller")


class Puller:
    batch = 32  # users per GET_USERS
    retry_after = staticmethod(backoffPolicy(initialDelay=1, maxDelay=30, factor=2, jitter=lambda: 0))  # s, by failures in a row

    def __init__(self, db, registry, eventlog, clock, metrics, on_merged, keep_local_changes=lambda: True):
        self._db = db
        self._keep_local_changes = keep_local_changes  # the sync mode's, for the records a merge sends back
        self._registry = registry
        self._eventlog = eventlog
        self._clock = clock
        self._metrics = metrics
        self._on_merged = on_merged
        self._wanted: dict[int, dict[str, int]] = {}  # terminal -> user -> number of its latest ask
        self._asks = itertools.count(1)
        self._busy: set[int] = set()
        self._failures: dict[int, int] = {}
        self._retry_timers: dict[int, object] = {}
        self._stopped = False

    def want(self, terminal_id: int, user_ids) -> None:
        if user_ids:
            wanted = self._wanted.setdefault(terminal_id, {})
            for user_id in user_ids:
                wanted[user_id] = next(self._asks)
            self.kick(terminal_id)

    def owe(self, terminal_id: int, user_ids) -> defer.Deferred:
        """Owe pulls of these users from this terminal (durably), and start them: a terminal that
        kept its own change of a user (LOCAL_CHANGE_PENDING) must see that change pulled and merged."""
        user_ids = sorted(set(user_ids))
        d = self._db.write(owe_pulls, terminal_id, user_ids, self._now_ms())
        d.addCallback(lambda _: self.want(terminal_id, user_ids))
        d.addErrback(lambda f: log.warn("could not record owed pulls of {n} users from terminal {tid}: {e}",
                                        n=len(user_ids), tid=terminal_id, e=f.getErrorMessage()))
        return d

    def terminal_online(self, terminal_id: int) -> None:
        """Pick up pulls owed by a terminal that (re)connected, from the database, at once: a
        backoff left from its previous link does not apply to the new one."""
        timer = self._retry_timers.pop(terminal_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._failures.pop(terminal_id, None)
        d = self._db.read(owed_pulls, terminal_id)
        d.addCallbacks(lambda ids: self.want(terminal_id, ids), self._log_read_failure)

    def kick(self, terminal_id: int) -> None:
        connection = self._registry.connection(terminal_id)
        wanted = self._wanted.get(terminal_id)
        if not wanted or terminal_id in self._busy or connection is None:
            return
        if terminal_id in self._retry_timers:
            return
        batch = {user_id: wanted[user_id] for user_id in sorted(wanted)[: self.batch]}
        self._busy.add(terminal_id)
        started = self._now_ms()
        d = connection.fetch_users(list(batch))
        d.addCallback(self._merge, terminal_id, started)
        d.addCallbacks(self._done, self._failed, callbackArgs=(terminal_id, batch), errbackArgs=(terminal_id, list(batch)))

    def _merge(self, fetched, terminal_id: int, started: int):
        """Merge what the terminal answered; fires with (ids merged, ids settled).

        A terminal answers only the records that fit in one frame; those it left out of both
        lists stay wanted and are asked for again straight away.
        """
        answered = [r.user_id for r in fetched.users] + fetched.missing
        if not answered:
            raise ProtocolError("the terminal answered with none of the users asked for")
        connection = self._registry.connection(terminal_id)
        holdable = connection.holdable if connection is not None else whole_record
        d = self._db.write(merge_pulled, terminal_id, fetched.users, fetched.missing, started, self._now_ms(), holdable)
        return d.addCallback(lambda outcome: (outcome, answered, len(fetched.users)))

    def _done(self, result: "tuple[MergeOutcome, list[str], int]", terminal_id: int, batch: dict[str, int]) -> None:
        outcome, answered, pulled = result
        self._busy.discard(terminal_id)
        self._failures.pop(terminal_id, None)
        wanted = self._wanted[terminal_id]
        for user_id in answered:
            if user_id in batch and wanted.get(user_id) == batch[user_id]:  # not asked for again since
                del wanted[user_id]
        self._metrics.pulls.inc(pulled)
        for type_, user_id, detail in outcome.reported:
            log.info("{type}: user {user} from terminal {tid}{detail}", type=type_, user=user_id, tid=terminal_id,
                     detail=f": {detail}" if detail else "")
        if outcome.saved:
            self._on_merged()
        self._correct(terminal_id, outcome.corrections)
        self.kick(terminal_id)

    def _correct(self, terminal_id: int, corrections: dict[str, bytes | None]) -> None:
        """Send the server's record back to the one terminal whose copy the merge did not keep.
        If this fails the terminal stays different, and reconciliation repairs it."""
        connection = self._registry.connection(terminal_id)
        if not corrections or connection is None:
            return
        puts = [record for record in corrections.values() if record is not None]
        deletes = [user_id for user_id, record in corrections.items() if record is None]
        sends = [connection.put_users(chunk, self._keep_local_changes()).addCallback(self._delivered, terminal_id, APPLIED_BY_DEVICE)
                 for chunk in request_chunks(puts, connection.push_bytes, 64)]
        if deletes:
            sends.append(connection.delete_users(deletes).addCallback(self._delivered, terminal_id, DELETED_BY_SERVER))
        for d in sends:
            d.addErrback(lambda f: log.warn("could not correct terminal {tid}: {e}; reconciliation will",
                                            tid=terminal_id, e=f.getErrorMessage()))

    def _delivered(self, results, terminal_id: int, applied_type: str):
        rows, kept = delivery_rows(terminal_id, results, applied_type, self._metrics, self._now_ms())
        if kept:
            self.owe(terminal_id, kept)
        return self._db.write(record_sync_events, rows)

    def _failed(self, failure, terminal_id: int, batch: list[str]) -> None:
        self._busy.discard(terminal_id)
        if self._stopped:
            return  # the gateway is stopping; owed pulls are durable and resume at the next start
        attempt = self._failures.get(terminal_id, 0)
        self._failures[terminal_id] = attempt + 1
        delay = self.retry_after(attempt)
        reason = failure.getErrorMessage()
        if failure.check(DatabaseFailure):
            self._metrics.failures.labels("save_user").inc(len(batch))
            for user_id in batch:
                log.warn("{type}: user {user} from terminal {tid} ({reason}); the terminal keeps its data, retry in {delay}s",
                         type=SAVE_FAILED, user=user_id, tid=terminal_id, reason=reason, delay=delay)
                self._eventlog.record_failure_later(sync_event_row(SAVE_FAILED, terminal_id, user_id, reason, at_ms=self._now_ms()))
        else:
            self._metrics.failures.labels("pull").inc()
            log.warn("pull of {n} users from terminal {tid} failed ({reason}); retry in {delay}s",
                     n=len(batch), tid=terminal_id, reason=reason, delay=delay)
        self._retry_timers[terminal_id] = self._clock.callLater(delay, self._retry, terminal_id)

    def _retry(self, terminal_id: int) -> None:
        self._retry_timers.pop(terminal_id, None)
        self.kick(terminal_id)

    def _log_read_failure(self, failure) -> None:
        log.warn("could not read owed pulls: {e}", e=failure.getErrorMessage())

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def stop(self) -> None:
        self._stopped = True
        for timer in self._retry_timers.values():
            if timer.active():
                timer.cancel()
        self._retry_timers.clear()


def owe_pulls(conn, terminal_id: int, user_ids: list[str], at_ms: int) -> None:
    upsert(conn, pending_pulls, [dict(terminal_id=terminal_id, user_id=u, since_ms=at_ms) for u in user_ids],
           key=["terminal_id", "user_id"], update=["since_ms"])


def owed_pulls(conn, terminal_id: int) -> list[str]:
    """The users whose pull from this terminal is owed (a keypad change announced, not merged yet)."""
    return list(conn.execute(select(pending_pulls.c.user_id).where(pending_pulls.c.terminal_id == terminal_id)).scalars())


@dataclass(frozen=True)
class MergeOutcome:
    """What a merge did: users whose server record changed, what the terminal pulled from must
    be told back when the server kept its own record (``None``: delete it there), and the
    monitoring events it stored (type, user, detail), for the log."""

    saved: list[str]
    corrections: dict[str, bytes | None]
    reported: list[tuple[str, str, str]] = ()


def merge_pulled(conn, terminal_id: int, records: list[UserRecord], missing: list[str], started_ms: int, at_ms: int,
                 holdable=whole_record) -> MergeOutcome:
    """Merge pulled records into the server (server wins, vacant fields filled); one transaction.

    A new version enters the changes feed only when the merge changed the server's record; when
    it changed nothing there but the terminal's copy differs, that terminal alone is corrected
    (the others already hold the server's record). Every field taken or refused is named with
    its rule, in the monitoring event's detail and in the user's history. Settles the owed pulls
    that were asked for by ``started_ms`` (when GET_USERS went out). ``holdable``: the copy of a
    record the terminal can hold (``merge.merge_reasons``).
    """
    rows, history, saved, corrections = [], [], [], {}
    stored = stored_users(conn, [r.user_id for r in records] + missing)
    for record in records:
        fault = _text_fault(record)
        if fault is not None:  # the one rule for ids and names (protocol/text.py), as at the API
            rows.append(sync_event_row(CHANGE_DROPPED, terminal_id, ascii(record.user_id)[1:-1], f"keypad change refused: {fault}",
                                       at_ms=at_ms))
            continue
        found = stored.get(record.user_id)
        if found is not None and found.record is None and not _enrolled_since(conn, terminal_id, record.user_id, found.updated_ms):
            # Deleted on the server while this terminal's keypad edited it: the server's delete wins.
            corrections[record.user_id] = None
            text = "keypad edit dropped: the user was deleted on the server; the terminal deletes it too"
            rows.append(sync_event_row(CHANGE_DROPPED, terminal_id, record.user_id, text, at_ms=at_ms))
            history.append(noted(record.user_id, TERMINAL, SERVER_DELETED, "keypad edit", at_ms, terminal_id))
            continue
        server = UserRecordWire.parse(found.record) if found is not None and found.record is not None else None
        merged = merge_vacant_fields(server, record)
        changes = merge_reasons(server, record, merged, holdable)
        lost_cards = [c for c in changes if c.rule == CARD_LIMIT]
        if lost_cards:
            rows.append(sync_event_row(CHANGE_DROPPED, terminal_id, record.user_id,
                                       f"{len(lost_cards)} card(s) added at the terminal dropped ({', '.join(c.new for c in lost_cards)}): "
                                       f"the server's record already holds {len(server.cards)} of at most {MAX_CARDS}", at_ms=at_ms))
        if merged != server:
            seq = store_record(conn, merged, at_ms, holder_terminal=terminal_id if merged == record else None)
            stored[record.user_id] = Stored(UserRecordWire.build(merged), at_ms)  # a second copy of one user merges over the first
            saved.append(record.user_id)
            rows.append(sync_event_row(SAVED_FROM_DEVICE, terminal_id, record.user_id, summary(changes), at_ms=at_ms))
            history.append(history_row(record.user_id, TERMINAL, changes, at_ms, change_seq=seq, terminal_id=terminal_id))
        else:
            rows.append(sync_event_row(MERGED_UNCHANGED, terminal_id, record.user_id,
                                       f"{summary(changes)}; the terminal gets the server's record back" if changes
                                       else "the terminal already holds the server's record", at_ms=at_ms))
            if merged != record:
                corrections[record.user_id] = UserRecordWire.build(merged)
            if changes:
                history.append(history_row(record.user_id, TERMINAL, changes, at_ms, terminal_id=terminal_id))
    for user_id in missing:
        found = stored.get(user_id)
        if found is None:
            rows.append(sync_event_row(CHANGE_DROPPED, terminal_id, user_id, "keypad enrolment lost: the user was deleted at "
                                       "the terminal before the gateway fetched it, and the server never had it", at_ms=at_ms))
        elif found.record is None:
            rows.append(sync_event_row(CHANGE_DROPPED, terminal_id, user_id, "keypad change lost: the server's deletion of the "
                                       "user reached the terminal before the change was fetched", at_ms=at_ms))
    record_sync_events(conn, rows)
    record_history(conn, history)
    done = [r.user_id for r in records] + missing
    conn.execute(
        delete(pending_pulls).where(
            pending_pulls.c.terminal_id == terminal_id,
            pending_pulls.c.user_id.in_(done),
            pending_pulls.c.since_ms <= started_ms,
        )
    )
    return MergeOutcome(saved, corrections, [(row["type"], row["user_id"], row["detail"]) for row in rows])


def _text_fault(record: UserRecord) -> str | None:
    for what, text in (("user id", record.user_id), ("name", record.name)):
        fault = text_fault(text) if text is not None else None
        if fault is not None:
            return f"its {what} {fault}"
    return None


def _enrolled_since(conn, terminal_id: int, user_id: str, since_ms: int) -> bool:
    """Whether someone enrolled the user at this terminal's keypad after ``since_ms``: a new enrolment, not an edit."""
    stmt = select(events.c.id).where(
        events.c.user_id == user_id,
        events.c.terminal_id == terminal_id,
        events.c.code == EventCode.ENROLL_SUCCESS,
        events.c.sub_code == Origin.DEVICE,
        events.c.occurred_ms >= since_ms,
    )
    return conn.execute(stmt.limit(1)).first() is not None
