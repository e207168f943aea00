"""Reports: what each of several gateway processes on one database alone knows, for the API.

A terminal's link, when it was last heard, its model and clock, and the process's metrics live in
the memory of the process serving it; the claims (gateway/process/claims.py) tell the others only
that it is online. So every ``report_s`` each process writes one row of ``process_reports``: the
terminals it serves and its Prometheus exposition. A process that serves the API reads the
others' rows, shows their terminals' links as its own (``TerminalRegistry.heard_elsewhere``) and
adds their metrics to its /metrics, each series labelled with the reporting process
(``gateway.metrics.merged_exposition``). A row not rewritten for ``stale_s`` is a process that
is gone: it is deleted by the next process that writes, and shown by nobody.

What the page shows of another process's terminal is then at most ``report_s`` old: the link
changes seldom, and a terminal heard a few seconds ago is online either way (the claims say so).
"""

import json

from sqlalchemy import delete, insert, select, update
from twisted.internet import task
from twisted.logger import Logger

from gateway.quietlog import RepeatedLines
from gateway.store.schema import process_reports

log = Logger(namespace="gateway.reports")

# What another process may show of a terminal this one serves.
_REPORTED = ("link", "heard_ms", "model", "firmware", "clock_drift_s")


class ProcessReports:
    report_s = 5.0
    stale_s = 30.0  # a row older than this is a process that stopped or died

    def __init__(self, db, clock, source: str, registry, metrics, reads: bool):
        """``reads``: this process serves the API, so it shows the others' reports."""
        self._db = db
        self._clock = clock
        self._source = source
        self._registry = registry
        self._metrics = metrics
        self._reads = reads
        self._lines = RepeatedLines(log, clock, period_s=60.0)
        self._loop = task.LoopingCall(self._report)
        self._loop.clock = clock
        self.others_metrics: dict[str, str] = {}  # source -> exposition, of the rows read last

    def start(self) -> None:
        self._loop.start(self.report_s, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self._lines.stop()

    def _report(self) -> None:
        now_ms = int(self._clock.seconds() * 1000)
        served = [{f: getattr(t, f) for f in ("terminal_id", *_REPORTED)} for t in self._registry.connected()]
        d = self._db.write(store_report, self._source, now_ms, json.dumps(served), self._metrics.exposition(own=True).decode(),
                           now_ms - int(self.stale_s * 1000))
        if self._reads:
            d.addCallback(lambda _: self._db.read(read_reports, self._source, now_ms - int(self.stale_s * 1000)))
            d.addCallback(self._heard)
        d.addErrback(lambda f: self._lines.warn("reports not exchanged", "database",
                                                "cannot exchange reports with the other gateway processes: {e}", e=f.getErrorMessage()))

    def _heard(self, rows: list[tuple[str, str, str]]) -> None:
        links = {}
        for _source, terminals, _metrics in rows:
            for served in json.loads(terminals):
                links[served.pop("terminal_id")] = served
        self._registry.heard_elsewhere(links)
        self.others_metrics = {source: metrics for source, _terminals, metrics in rows}


def store_report(conn, source: str, now_ms: int, terminals: str, metrics: str, stale_before_ms: int) -> None:
    """This process's row, rewritten; rows of processes gone quiet, deleted."""
    values = dict(reported_ms=now_ms, terminals=terminals, metrics=metrics)
    if conn.execute(update(process_reports).where(process_reports.c.source == source).values(**values)).rowcount == 0:
        conn.execute(insert(process_reports).values(source=source, **values))
    conn.execute(delete(process_reports).where(process_reports.c.reported_ms < stale_before_ms))


def read_reports(conn, source: str, fresh_since_ms: int) -> list[tuple[str, str, str]]:
    """The other processes' reports still fresh: (source, terminals as JSON, metrics)."""
    c = process_reports.c
    return [tuple(row) for row in conn.execute(select(c.source, c.terminals, c.metrics).where(
        c.source != source, c.reported_ms >= fresh_since_ms).order_by(c.source))]
