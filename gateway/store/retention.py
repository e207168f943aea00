"""Retention: events recorded more than ``events_keep_days`` ago leave the online log, exported
first to compressed files when the operator named a folder for them, else dropped.

Once at start and then every hour. On PostgreSQL the events table is partitioned by week of
occurred time (gateway/store/partitions.py): each run makes the coming weeks, and a week whose
every moment is older than the kept days, and whose every event was recorded before them too,
goes whole, a metadata operation however many events it held, but for their copies below (exported first, from a reader, and
dropped only if it still holds what was exported), so an event stays up to a week longer than the
kept days. An old week that also holds events recorded since (a backlog uploaded after an outage,
a terminal's clock behind) stays, and only its old events go, as those no week holds (the default
partition) and everything on SQLite go: by recorded time in batches, oldest id first, each batch
in one transaction (riding the group commit on PostgreSQL). An export is a gzip file of JSON
lines, one event each with every column, named after the batch's first and last id and flushed
to disk before the rows are deleted: a batch whose delete failed is exported again under the
same name. On PostgreSQL the copies of the removed events that name a user (the table a user's
page reads, gateway/store/user_events.py) go in the same transaction: a week's by a DELETE of its
occurred time, before its drop. Gateways on several hosts sharing one database may run it at
once: a week another one dropped is not exported again, an export is written under a name of the process's own first
and never replaces an archive holding more events, and what another removed first is not counted.
Followers are not disturbed: they read above the ids that go. What went is a log line and
``gateway_events_expired_total{action}``; a failed run is a log line and
``gateway_failures_total{kind="retention"}``, and keeps everything.
"""

import gzip
import json
import os
from pathlib import Path

from sqlalchemy import delete, select, text
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.store.partitions import DAY_MS, Held, Week, close_weeks, drop_week, make_weeks, rows_by_row, week_held, weeks_before
from gateway.store.schema import events
from gateway.store.user_events import uncopy_rows

log = Logger(namespace="gateway.retention")


def expire_batch(conn, cutoff_ms: int, limit: int, export_dir: str | None, week: Week | None = None) -> int:
    """Remove the oldest events recorded before ``cutoff_ms``, at most ``limit``; how many went.
    On PostgreSQL those no week holds, or those of ``week`` when it also holds events recorded
    since (it cannot go whole); a week that will go whole is left to ``drop_week``, or it would be
    deleted a day at a time before it could be dropped.

    Ids grow with recording time, so the batch is the run of oldest ids recorded before the
    cutoff: it stops at the first newer one (an event stored out of time order waits for a later run).
    """
    table = rows_by_row(conn) if week is None else events
    within = [] if week is None else [table.c.occurred_ms >= week.start_ms, table.c.occurred_ms < week.end_ms]
    rows = conn.execute(select(table).where(*within).order_by(table.c.id).limit(limit)).mappings().all()
    old = []
    for row in rows:
        if row["recorded_ms"] >= cutoff_ms:
            break
        old.append(row)
    if not old:
        return 0
    if export_dir is not None:
        export(Path(export_dir), f"events-{old[0]['id']}-{old[-1]['id']}", old)
    # what this transaction removed: another process's run may have taken some of them first
    removed = conn.execute(delete(table).where(*within, table.c.id.in_([row["id"] for row in old]))).rowcount
    # On PostgreSQL a user's page reads their copies: removed after the rows, so a week another
    # process closed (copying them) while this waited for its lock cannot leave copies behind.
    uncopy_rows(conn, old)
    return removed


def export_week(conn, folder: Path, week: Week, cutoff_ms: int) -> Held | None:
    """Export every event of ``week``, read in pieces, if it can go whole (it still exists, and
    everything in it was recorded before ``cutoff_ms``); what it holds, None when it is gone.
    One snapshot for the count and the rows, so the drop can check that the week holds what was
    exported; the week is locked against a drop meanwhile."""
    conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    held = week_held(conn, week)
    if held is None or not held.recorded_before(cutoff_ms):
        return held
    rows = conn.execution_options(yield_per=Retention.batch).execute(
        select(events).where(events.c.occurred_ms >= week.start_ms, events.c.occurred_ms < week.end_ms).order_by(events.c.id))
    export(folder, week.name, rows.mappings())
    return held


def export(folder: Path, name: str, rows) -> int:
    """Write ``rows`` to ``<name>.jsonl.gz`` in ``folder``, on disk before this returns; how many.
    Written under a name of this process's own, then renamed, unless the archive there already
    holds more events (another process's export of rows removed since, say): that one is kept,
    and this one written beside it, ``<name>.<pid>.jsonl.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl.gz"
    partial = folder / f"{name}.{os.getpid()}.partial"
    written = 0
    with open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as packed:
            for row in rows:
                packed.write(json.dumps(dict(row), separators=(",", ":")).encode() + b"\n")
                written += 1
        raw.flush()
        os.fsync(raw.fileno())
    if path.exists() and _archived(path) > written:
        path = folder / f"{name}.{os.getpid()}.jsonl.gz"
    os.replace(partial, path)
    return written


def _archived(path: Path) -> int:
    """How many events an archive holds."""
    with gzip.open(path) as packed:
        return sum(1 for _ in packed)


class Retention:
    run_every_s = 3600.0
    batch = 5000  # events per transaction

    def __init__(self, db, clock, metrics, keep_days: int, export_dir: str | None):
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self.keep_days = keep_days
        self.export_dir = export_dir
        self._loop = task.LoopingCall(self.run)
        self._loop.clock = clock

    @property
    def action(self) -> str:
        return "exported" if self.export_dir is not None else "dropped"

    def start(self) -> None:
        self._loop.start(self.run_every_s, now=True)  # with nothing to expire, it still makes the coming weeks

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def run(self):
        """Make the coming weeks and close the past ones, then expire what is older than the kept days; fires with how many events went."""
        now_ms = int(self._clock.seconds() * 1000)
        cutoff_ms = now_ms - self.keep_days * DAY_MS
        gone = 0
        try:
            yield self._db.write(make_weeks, now_ms)
            yield self._db.write(close_weeks, now_ms)
            if self.keep_days <= 0:
                return 0
            for week in (yield self._db.read(weeks_before, cutoff_ms)):
                gone += yield self._expire_week(week, cutoff_ms)
            gone += yield self._expire_rows(cutoff_ms)
        except Exception as exc:  # the database or the export folder: everything not yet removed stays
            self._metrics.failures.labels("retention").inc()
            log.warn("retention: could not remove events older than {days} days ({why}); {gone} went, the rest stays",
                     days=self.keep_days, why=exc, gone=gone)
            return gone
        if gone:
            where = f" to {self.export_dir}" if self.export_dir is not None else ""
            log.info("retention: {gone} events recorded more than {days} days ago {action}{where}",
                     gone=gone, days=self.keep_days, action=self.action, where=where)
        return gone

    @defer.inlineCallbacks
    def _expire_week(self, week: Week, cutoff_ms: int):
        """Drop a whole week, exported or counted first on a reader (the writer keeps storing
        meanwhile), or, when it holds events recorded since the cutoff, remove its old events row
        by row; how many went."""
        if self.export_dir is None:
            held = yield self._db.read(week_held, week)
        else:
            held = yield self._db.read(export_week, Path(self.export_dir), week, cutoff_ms)
        if held is None:  # another process dropped it
            return 0
        if not held.recorded_before(cutoff_ms):
            return (yield self._expire_rows(cutoff_ms, week))
        if (yield self._db.write(drop_week, week, cutoff_ms, held.count)):
            self._metrics.events_expired.labels(self.action).inc(held.count)
            return held.count
        log.info("retention: {week} changed while it was read (events arrived, or another process removed it); a later run sees to it",
                 week=week.name)
        return 0

    @defer.inlineCallbacks
    def _expire_rows(self, cutoff_ms: int, week: Week | None = None):
        """Remove the events recorded before the cutoff that no week holds (or ``week``'s), a batch a transaction; how many went."""
        gone = 0
        while True:
            n = yield self._db.write(expire_batch, cutoff_ms, self.batch, self.export_dir, week)
            gone += n
            self._metrics.events_expired.labels(self.action).inc(n)
            if n < self.batch:
                return gone
