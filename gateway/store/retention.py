"""Retention: events recorded more than ``events_keep_days`` ago leave the online log, exported
first to compressed files when the operator named a folder for them, else dropped.

Once at start and then every hour the oldest events go in batches, oldest id first, each batch
in one transaction (riding the group commit on PostgreSQL). An export is a gzip file of JSON
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

from gateway.store.schema import events

log = Logger(namespace="gateway.retention")

DAY_MS = 86_400_000


def expire_batch(conn, cutoff_ms: int, limit: int, export_dir: str | None) -> int:
    """Remove the oldest events recorded before ``cutoff_ms``, at most ``limit``; how many went.

    Ids grow with recording time, so the batch is the run of oldest ids recorded before the
    cutoff: it stops at the first newer one (an event stored out of time order waits for a later run).
    """
    rows = conn.execute(select(events).order_by(events.c.id).limit(limit)).mappings().all()
    old = []
    for row in rows:
        if row["recorded_ms"] >= cutoff_ms:
            break
        old.append(row)
    if not old:
        return 0
    if export_dir is not None:
        export(Path(export_dir), old)
    conn.execute(delete(events).where(events.c.id.in_([row["id"] for row in old])))
    return len(old)


def export(folder: Path, rows) -> Path:
    """Write ``rows`` to ``events-<first id>-<last id>.jsonl.gz`` in ``folder``, on disk before this returns."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events-{rows[0]['id']}-{rows[-1]['id']}.jsonl.gz"
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as packed:
            for row in rows:
                packed.write(json.dumps(dict(row), separators=(",", ":")).encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, path)
    return path


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
        if self.keep_days > 0:
            self._loop.start(self.run_every_s, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def run(self):
        """Expire what is older than the kept days; fires with how many events went."""
        cutoff_ms = int(self._clock.seconds() * 1000) - self.keep_days * DAY_MS
        gone = 0
        try:
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
