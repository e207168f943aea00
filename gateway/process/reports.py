"""Reports: what each of several gateway processes on one database alone knows, for the API.

A terminal's link, when it was last heard, its model and clock, and the process's metrics live in
the memory of the process serving it; the claims (gateway/process/claims.py) tell the others only
that it is online. So every ``report_s`` each process rewrites its row of ``process_reports``:
the terminals it serves and, where another process may read them, its Prometheus exposition
(built on a thread: with thousands of terminals it takes a good part of a second). A process
that serves the API reads the others' rows, shows their terminals' links as its own
(``TerminalRegistry.heard_elsewhere``) and adds their metrics to its /metrics, each series
labelled with the reporting process (``gateway.metrics.merged_exposition``); the reports are
parsed as they are read, on a database thread, not at each scrape.

A row not rewritten for ``stale_s`` is a process that stopped or died: it is shown by nobody and
deleted by the next process that writes (skipping a row another process is writing, so two
processes deleting each other's rows never wait on each other). What the page shows of another
process's terminal is at most ``report_s`` old.

Two counters are the same count in every process, and are left out of the others' reports:
wrong proofs lock an address out in every process (each hears the others' proofs), and the
kernel's listen overflows are the host's. Worker 0's own figures are the whole of those.
"""

import json

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, select
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from gateway.quietlog import RepeatedLines
from gateway.store.database import upsert
from gateway.store.schema import process_reports

log = Logger(namespace="gateway.reports")

# What another process may show of a terminal this one serves.
_REPORTED = ("link", "heard_ms", "model", "firmware", "clock_drift_s")
SHARED_COUNTS = frozenset({"gateway_auth_lockouts", "gateway_listen_overflows"})


class ProcessReports:
    report_s = 5.0
    stale_s = 30.0  # a row older than this is a process that stopped or died

    def __init__(self, db, clock, source: str, registry, metrics, *, reads: bool, read_by_others: bool,
                 in_thread=threads.deferToThread):
        """``reads``: this process serves the API, so it shows the others' reports.
        ``read_by_others``: another process reads this one's metrics (a worker of several); else
        they are reported only while another process is seen. ``in_thread``: runs a call on a thread."""
        self._db = db
        self._clock = clock
        self._source = source
        self._registry = registry
        self._metrics = metrics
        self._reads = reads
        self._read_by_others = read_by_others
        self._in_thread = in_thread
        self._lines = RepeatedLines(log, clock, period_s=60.0)
        self._own_types = {family.name: family.type for family in metrics.registry.collect()}
        self._loop = None
        self._stopped = False
        self._others_seen = False
        self._families: list[Metric] = []  # the other processes' metrics, labelled, as last read
        self._read_s = float("-inf")

    def start(self) -> None:
        self._loop = task.LoopingCall(self._report)
        self._loop.clock = self._clock
        self._loop.start(self.report_s, now=True)

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._lines.stop()

    def reported_families(self) -> list[Metric]:
        """The other processes' metric families, each sample labelled ``process``; none once the
        last read is older than ``stale_s`` (the database is away: their figures are unknown)."""
        return self._families if self._clock.seconds() - self._read_s <= self.stale_s else []

    def _report(self) -> defer.Deferred:
        """One round: write this process's row, then read the others'; the loop waits for it, so a
        database that hangs holds one report, not one more every ``report_s``."""
        now_ms = int(self._clock.seconds() * 1000)
        stale_before_ms = now_ms - int(self.stale_s * 1000)
        served = json.dumps([{f: getattr(t, f) for f in ("terminal_id", *_REPORTED)} for t in self._registry.connected()])
        if self._read_by_others or self._others_seen:
            d = self._in_thread(self._metrics.exposition, own=True)
        else:
            d = defer.succeed(b"")
        d.addCallback(lambda metrics: self._db.write(store_report, self._source, now_ms, served, metrics.decode(), stale_before_ms))
        if self._reads:
            d.addCallback(lambda _: self._db.read(read_reports, self._source, stale_before_ms, self._own_types))
            d.addCallback(self._heard)
        d.addErrback(self._failed)
        return d

    def _heard(self, reports: list["Report"]) -> None:
        self._read_s = self._clock.seconds()
        self._others_seen = bool(reports)
        links: dict[int, dict] = {}
        for report in reports:  # a terminal that moved may be in two: the one heard last is the one serving it
            for terminal_id, link in report.links.items():
                if terminal_id not in links or (link["heard_ms"] or 0) > (links[terminal_id]["heard_ms"] or 0):
                    links[terminal_id] = link
            for why in report.left_out:
                self._lines.warn("metrics left out", report.source, "metrics reported by gateway process {source} left out: {why}",
                                 source=report.source, why=why)
        self._registry.heard_elsewhere(links)
        self._families = [family for report in reports for family in report.families]

    def _failed(self, failure) -> None:
        if not self._stopped:
            self._lines.warn("reports not exchanged", "database", "cannot exchange reports with the other gateway processes: {e}",
                             e=failure.getErrorMessage())


class Report:
    """Another process's row, read and parsed: its terminals' links, and its metric families
    labelled with its name; what was left out of them, and why, in ``left_out``."""

    def __init__(self, source: str, terminals: str, metrics: str, own_types: dict[str, str]):
        self.source = source
        self.links = {served.pop("terminal_id"): served for served in json.loads(terminals)}
        self.families: list[Metric] = []
        self.left_out: list[str] = []
        try:
            parsed = list(text_string_to_metric_families(metrics))
        except ValueError as e:
            self.left_out.append(f"they do not parse ({e})")
            return
        for family in parsed:
            # The text format gives a counter's creation time a family of its own: left out, so that
            # it does not stand twice beside this process's counter (which carries its own inside).
            if family.name in SHARED_COUNTS or family.name.endswith("_created"):
                continue
            if own_types.get(family.name, family.type) != family.type:  # another version of the gateway
                self.left_out.append(f"{family.name} is a {family.type} there, a {own_types[family.name]} here")
                continue
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [sample._replace(labels={**sample.labels, "process": source}) for sample in family.samples]
            self.families.append(labelled)


def store_report(conn, source: str, now_ms: int, terminals: str, metrics: str, stale_before_ms: int) -> None:
    """This process's row, rewritten; rows of processes gone quiet, deleted, except one another
    process holds (it is writing it now, so it is not gone; on SQLite nobody else writes)."""
    upsert(conn, process_reports, [dict(source=source, reported_ms=now_ms, terminals=terminals, metrics=metrics)],
           key=["source"], update=["reported_ms", "terminals", "metrics"])
    c = process_reports.c
    stale = select(c.source).where(c.reported_ms < stale_before_ms, c.source != source)
    if conn.dialect.name == "postgresql":
        stale = stale.with_for_update(skip_locked=True)
    conn.execute(delete(process_reports).where(c.source.in_(stale.scalar_subquery())))


def read_reports(conn, source: str, fresh_since_ms: int, own_types: dict[str, str]) -> list[Report]:
    """The other processes' reports still fresh, parsed (here, on a database thread: parsing a
    big exposition is not for the reactor)."""
    c = process_reports.c
    rows = conn.execute(select(c.source, c.terminals, c.metrics).where(c.source != source, c.reported_ms >= fresh_since_ms)
                        .order_by(c.source))
    return [Report(other, terminals, metrics, own_types) for other, terminals, metrics in rows]
