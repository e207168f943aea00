"""Puller: fetches users enrolled or edited on a terminal and merges them into the server.

Which pulls are owed is durable (``pending_pulls``, written in the same transaction as the
event that asked for them), so a pull survives a crash, a lost link or a database outage: it is
retried with backoff until the merge commits. Many edits of one user make one pull.
"""

import itertools

from sqlalchemy import delete, select
from twisted.application.internet import backoffPolicy
from twisted.logger import Logger

from gateway.database import DatabaseFailure
from gateway.merge import merge_vacant_fields
from gateway.monitor import SAVE_FAILED, SAVED_FROM_DEVICE, record_sync_events, sync_event_row
from gateway.schema import pending_pulls
from gateway.users import load_record, store_record
from protocol.errors import ProtocolError
from protocol.records import UserRecord

log = Logger(namespace="gateway.puller")


class Puller:
    batch = 32  # users per GET_USERS
    retry_after = staticmethod(backoffPolicy(initialDelay=1, maxDelay=30, factor=2, jitter=lambda: 0))  # s, by failures in a row

    def __init__(self, db, registry, eventlog, clock, metrics, on_merged):
        self._db = db
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

    def terminal_online(self, terminal_id: int) -> None:
        """Pick up pulls owed by a terminal that (re)connected, from the database, at once: a
        backoff left from its previous link does not apply to the new one."""
        timer = self._retry_timers.pop(terminal_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._failures.pop(terminal_id, None)
        d = self._db.read(_owed_pulls, terminal_id)
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
        d = self._db.write(merge_pulled, terminal_id, fetched.users, fetched.missing, started, self._now_ms())
        return d.addCallback(lambda merged: (merged, answered))

    def _done(self, result: tuple[list[str], list[str]], terminal_id: int, batch: dict[str, int]) -> None:
        merged, answered = result
        self._busy.discard(terminal_id)
        self._failures.pop(terminal_id, None)
        wanted = self._wanted[terminal_id]
        for user_id in answered:
            if user_id in batch and wanted.get(user_id) == batch[user_id]:  # not asked for again since
                del wanted[user_id]
        self._metrics.pulls.inc(len(merged))
        for user_id in merged:
            log.info("{type}: user {user} from terminal {tid}", type=SAVED_FROM_DEVICE, user=user_id, tid=terminal_id)
        if merged:
            self._on_merged()
        self.kick(terminal_id)

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


def _owed_pulls(conn, terminal_id: int) -> list[str]:
    return list(conn.execute(select(pending_pulls.c.user_id).where(pending_pulls.c.terminal_id == terminal_id)).scalars())


def merge_pulled(conn, terminal_id: int, records: list[UserRecord], missing: list[str], started_ms: int, at_ms: int) -> list[str]:
    """Merge pulled records into the server (server wins, vacant fields filled); one transaction.

    A new version enters the changes feed when the merge changed the server's record, or when
    the terminal's copy differs from the result (so the terminal gets the merged record back).
    Settles the owed pulls that were asked for by ``started_ms`` (when GET_USERS went out). Returns the ids merged.
    """
    rows = []
    for record in records:
        server = load_record(conn, record.user_id)
        merged = merge_vacant_fields(server, record)
        if merged != server or merged != record:
            store_record(conn, merged, at_ms, holder_terminal=terminal_id if merged == record else None)
        rows.append(sync_event_row(SAVED_FROM_DEVICE, terminal_id, record.user_id, at_ms=at_ms))
    record_sync_events(conn, rows)
    done = [r.user_id for r in records] + missing
    conn.execute(
        delete(pending_pulls).where(
            pending_pulls.c.terminal_id == terminal_id,
            pending_pulls.c.user_id.in_(done),
            pending_pulls.c.since_ms <= started_ms,
        )
    )
    return [r.user_id for r in records]
