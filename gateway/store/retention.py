"""Retention: events recorded more than ``events_keep_days`` ago leave the online log, exported
first to compressed files when the operator named a folder for them, else dropped.

Once at start and then every hour. On PostgreSQL the events table is partitioned by week of
occurred time (gateway/store/partitions.py): each run makes the coming weeks, and a week whose
every moment is older than the kept days goes whole, a metadata operation however many events it
held (exported first, from a reader, and dropped only if it still holds what was exported), so an
event stays up to a week longer than the kept days. Events no week holds (the default partition),
and everything on SQLite, go by recorded time in batches, oldest id first, each batch in one
transaction (riding the group commit on PostgreSQL). An export is a gzip file of JSON
lines, one event each with every column, named after the batch's first and last id and flushed
to disk before the rows are deleted: a batch whose delete failed is exported again under the
same name. Followers are not disturbed: they read above the ids that go. What went is a log
line and ``gateway_events_expired_total{action}``; a failed run is a log line and
``gateway_failures_total{kind="retention"}``, and keeps everything.
"""

import gzip
import json
import os
from pathlib import Path

from sqlalchemy import delete, select
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.store.partitions import DAY_MS, Week, close_weeks, count_week, drop_week, make_weeks, rows_by_row, weeks_before
from gateway.store.schema import events

log = Logger(namespace="gateway.retention")


def expire_batch(conn, cutoff_ms: int, limit: int, export_dir: str | None) -> int:
    """Remove the oldest events recorded before ``cutoff_ms``, at most ``limit``; how many went.
    On PostgreSQL only those no week holds: weeks go whole (``weeks_before``), or row by row a
    week would be deleted a day at a time before it could be dropped.

    Ids grow with recording time, so the batch is the run of oldest ids recorded before the
    cutoff: it stops at the first newer one (an event stored out of time order waits for a later run).
    """
    table = rows_by_row(conn)
    rows = conn.execute(select(table).order_by(table.c.id).limit(limit)).mappings().all()
    old = []
    for row in rows:
        if row["recorded_ms"] >= cutoff_ms:
            break
        old.append(row)
    if not old:
        return 0
    if export_dir is not None:
        export(Path(export_dir), f"events-{old[0]['id']}-{old[-1]['id']}", old)
    conn.execute(delete(table).where(table.c.id.in_([row["id"] for row in old])))
    return len(old)


def export_week(conn, folder: Path, week: Week) -> int:
    """Export every event of ``week``, read in pieces; how many."""
    rows = conn.execution_options(yield_per=Retention.batch).execute(
        select(events).where(events.c.occurred_ms >= week.start_ms, events.c.occurred_ms < week.end_ms).order_by(events.c.id))
    return export(folder, week.name, rows.mappings())


def export(folder: Path, name: str, rows) -> int:
    """Write ``rows`` to ``<name>.jsonl.gz`` in ``folder``, on disk before this returns; how many."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl.gz"
    partial = path.with_suffix(".partial")
    written = 0
    with open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as packed:
            for row in rows:
                packed.write(json.dumps(dict(row), separators=(",", ":")).encode() + b"\n")
                written += 1
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, path)
    return written


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
                n = yield self._drop(week)
                gone += n
                self._metrics.events_expired.labels(self.action).inc(n)
            while True:
                n = yield self._db.write(expire_batch, cutoff_ms, self.batch, self.export_dir)
                gone += n
                self._metrics.events_expired.labels(self.action).inc(n)
                if n < self.batch:
                    break
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
    def _drop(self, week: Week):
        """Drop a whole week, exported or counted first on a reader (the writer keeps storing meanwhile); how many went."""
        if self.export_dir is None:
            held = yield self._db.read(count_week, week)
            return held if (yield self._db.write(drop_week, week)) else 0
        exported = yield self._db.read(export_week, Path(self.export_dir), week)
        if (yield self._db.write(drop_week, week, exported)):
            return exported
        log.info("retention: events arrived in {week} while it was exported; it goes in the next run", week=week.name)
        return 0
