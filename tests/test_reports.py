"""Process reports (gateway/process/reports.py): what each gateway process alone knows, written
to the database and read back by the one serving the API, and the metrics merged into one
valid exposition."""

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task

from gateway.metrics import Metrics, merged_exposition
from gateway.process.reports import ProcessReports, read_reports, store_report
from gateway.terminals import Terminal

NOW_MS = 1_700_000_000_000


def test_a_process_reads_the_fresh_reports_of_the_others_not_its_own_and_stale_ones_are_deleted(db):
    db.run_now(store_report, "host/1/a", NOW_MS - 60_000, "[]", "", NOW_MS - 90_000)  # gone quiet a minute ago
    db.run_now(store_report, "host/2/b", NOW_MS - 1_000, json.dumps([{"terminal_id": 7}]), "b's metrics", NOW_MS - 30_000)
    db.run_now(store_report, "host/3/c", NOW_MS, "[]", "c's metrics", NOW_MS - 30_000)  # deletes a's row
    db.run_now(store_report, "host/3/c", NOW_MS + 5_000, "[]", "c's newer metrics", NOW_MS - 25_000)  # rewritten, not added
    assert db.run_now(read_reports, "host/3/c", 0) == [("host/2/b", json.dumps([{"terminal_id": 7}]), "b's metrics")]
    assert [source for source, *_ in db.run_now(read_reports, "host/2/b", 0)] == ["host/3/c"]
    assert db.run_now(read_reports, "host/2/b", 0)[0][2] == "c's newer metrics"


def metric_samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_merged_metrics_hold_each_family_once_with_the_others_series_labelled_by_process():
    mine, theirs = Metrics(), Metrics()
    mine.terminals_online.set(3)
    theirs.terminals_online.set(4)
    theirs.failures.labels("push").inc(2)
    merged = merged_exposition(mine.exposition().decode(), {"host/9/x": theirs.exposition().decode(), "host/8/y": "not { metrics"})
    text = merged.decode()
    assert text.count("# TYPE gateway_terminals_online gauge") == 1
    found = metric_samples(text)
    assert found[("gateway_terminals_online", ())] == 3
    assert found[("gateway_terminals_online", (("process", "host/9/x"),))] == 4
    assert found[("gateway_failures_total", (("kind", "push"), ("process", "host/9/x")))] == 2
    assert not any(("process", "host/8/y") in labels for _, labels in found)  # a report that does not parse is left out


class FakeRegistry:
    """The registry's two faces the reports use: the terminals served here, and those heard of."""

    def __init__(self, served):
        self.served = served
        self.heard: dict = {}

    def connected(self):
        return self.served

    def heard_elsewhere(self, links):
        self.heard = links


class NowDb:
    """Runs the work on the caller's thread (``run_now``) behind the Deferred interface."""

    def __init__(self, db):
        self.db = db

    def write(self, work, *args):
        return defer.maybeDeferred(self.db.run_now, work, *args)

    read = write


def test_a_worker_reports_its_terminals_links_and_the_api_process_shows_them_and_its_metrics(db):
    clock = task.Clock()
    clock.advance(NOW_MS / 1000)
    served = Terminal(801, link="tcp 10.0.0.8:51000", model="T9", firmware="2.1", clock_drift_s=1.5, last_seen_ms=NOW_MS)
    worker_metrics = Metrics()
    worker_metrics.terminals_online.set(1)
    worker = ProcessReports(NowDb(db), clock, "host/2/w1", FakeRegistry([served]), worker_metrics, reads=False)
    primary_registry = FakeRegistry([])
    primary_metrics = Metrics()
    primary = ProcessReports(NowDb(db), clock, "host/1/w0", primary_registry, primary_metrics, reads=True)
    primary_metrics.others = lambda: primary.others_metrics
    worker.start()
    primary.start()
    assert primary_registry.heard == {801: {"link": "tcp 10.0.0.8:51000", "heard_ms": NOW_MS, "model": "T9", "firmware": "2.1",
                                            "clock_drift_s": 1.5}}
    found = metric_samples(primary_metrics.exposition().decode())
    assert found[("gateway_terminals_online", (("process", "host/2/w1"),))] == 1
    assert ("gateway_terminals_online", (("process", "host/1/w0"),)) not in found  # its own series are unlabelled
    worker.stop()
    clock.advance(ProcessReports.stale_s + ProcessReports.report_s)  # the worker went quiet: its report is dropped
    assert primary_registry.heard == {} and primary.others_metrics == {}
    primary.stop()
