"""Process reports (gateway/process/reports.py): what each gateway process alone knows, written
to the database and read back by the one serving the API, and the metrics merged into one
valid exposition."""

import json

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task

from gateway.metrics import Metrics
from gateway.process.reports import ProcessReports, Report, read_reports, store_report
from gateway.terminals import Terminal

NOW_MS = 1_700_000_000_000


def test_a_process_reads_the_fresh_reports_of_the_others_not_its_own_and_stale_ones_are_deleted(db):
    db.run_now(store_report, "host/1/a", NOW_MS - 60_000, "[]", "", NOW_MS - 90_000)  # gone quiet a minute ago
    db.run_now(store_report, "host/2/b", NOW_MS - 1_000, json.dumps([{"terminal_id": 7, "heard_ms": 5}]), "", NOW_MS - 30_000)
    db.run_now(store_report, "host/3/c", NOW_MS, "[]", "", NOW_MS - 30_000)  # deletes a's row
    db.run_now(store_report, "host/3/c", NOW_MS + 5_000, "[]", "", NOW_MS - 25_000)  # rewritten, not added
    assert [(r.source, r.links) for r in db.run_now(read_reports, "host/3/c", 0, {})] == [("host/2/b", {7: {"heard_ms": 5}})]
    assert [r.source for r in db.run_now(read_reports, "host/2/b", 0, {})] == ["host/3/c"]


def samples_of(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_merged_metrics_hold_each_family_once_with_the_others_series_labelled_and_shared_counts_left_to_this_process():
    mine, theirs = Metrics(), Metrics()
    mine.terminals_online.set(3)
    theirs.terminals_online.set(4)
    theirs.failures.labels("push").inc(2)
    theirs.lockouts.labels("source").inc()  # heard here too: this process counted it already
    own_types = {family.name: family.type for family in mine.registry.collect()}
    mine.reported = lambda: Report("host/9/x", "[]", theirs.exposition().decode(), own_types).families
    text = mine.exposition().decode()
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)), "a family twice"
    assert text.count("# TYPE gateway_terminals_online gauge") == 1
    found = samples_of(text)
    assert found[("gateway_terminals_online", ())] == 3
    assert found[("gateway_terminals_online", (("process", "host/9/x"),))] == 4
    assert found[("gateway_failures_total", (("kind", "push"), ("process", "host/9/x")))] == 2
    assert not any(name.startswith("gateway_auth_lockouts") and ("process", "host/9/x") in labels for name, labels in found)
    assert mine.exposition(own=True).decode().count("host/9/x") == 0


def test_a_report_of_another_type_or_that_does_not_parse_is_left_out_and_said():
    registry = CollectorRegistry()
    Counter("gateway_terminals_online", "a counter in another version", registry=registry).inc(4)
    other_version = generate_latest(registry).decode()
    assert Report("host/9/x", "[]", other_version, {"gateway_terminals_online": "gauge"}).families == []
    assert Report("host/9/x", "[]", other_version, {"gateway_terminals_online": "gauge"}).left_out == [
        "gateway_terminals_online is a counter there, a gauge here"]
    garbled = Report("host/8/y", "[]", "not { metrics", {})
    assert garbled.families == [] and garbled.left_out[0].startswith("they do not parse")


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


class DownDb:
    def write(self, work, *args):
        return defer.fail(OSError("database down"))

    read = write


def reports(db, clock, source, registry, metrics, **roles):
    return ProcessReports(NowDb(db), clock, source, registry, metrics, in_thread=defer.maybeDeferred, **roles)


def test_a_worker_reports_its_terminals_links_and_the_api_process_shows_them_and_its_metrics(db):
    clock = task.Clock()
    clock.advance(NOW_MS / 1000)
    served = Terminal(801, link="tcp 10.0.0.8:51000", model="T9", firmware="2.1", clock_drift_s=1.5, last_seen_ms=NOW_MS)
    worker_metrics = Metrics()
    worker_metrics.terminals_online.set(1)
    worker = reports(db, clock, "host/2/w1", FakeRegistry([served]), worker_metrics, reads=False, read_by_others=True)
    primary_registry = FakeRegistry([])
    primary_metrics = Metrics()
    primary = reports(db, clock, "host/1/w0", primary_registry, primary_metrics, reads=True, read_by_others=False)
    primary_metrics.reported = primary.reported_families
    worker.start()
    primary.start()
    assert primary_registry.heard == {801: {"link": "tcp 10.0.0.8:51000", "heard_ms": NOW_MS, "model": "T9", "firmware": "2.1",
                                            "clock_drift_s": 1.5}}
    found = samples_of(primary_metrics.exposition().decode())
    assert found[("gateway_terminals_online", (("process", "host/2/w1"),))] == 1
    assert ("gateway_terminals_online", (("process", "host/1/w0"),)) not in found  # its own series are unlabelled
    worker.stop()
    clock.advance(ProcessReports.stale_s + ProcessReports.report_s)  # the worker went quiet: its report is dropped
    assert primary_registry.heard == {} and primary.reported_families() == []
    primary.stop()
    assert clock.getDelayedCalls() == []


def test_a_terminal_in_two_reports_shows_the_link_heard_last():
    clock = task.Clock()
    registry = FakeRegistry([])
    primary = ProcessReports(None, clock, "host/1/w0", registry, Metrics(), reads=True, read_by_others=False)
    primary._heard([Report("host/2/old", json.dumps([{"terminal_id": 5, "link": "old", "heard_ms": 900}]), "", {}),
                    Report("host/3/new", json.dumps([{"terminal_id": 5, "link": "new", "heard_ms": 1000}]), "", {})])
    assert registry.heard[5]["link"] == "new"


def test_the_others_metrics_are_dropped_once_they_can_no_longer_be_read(db):
    clock = task.Clock()
    theirs = Metrics()
    db.run_now(store_report, "host/2/w1", 0, "[]", theirs.exposition().decode(), -1)
    mine = Metrics()
    primary = reports(db, clock, "host/1/w0", FakeRegistry([]), mine, reads=True, read_by_others=False)
    primary.start()
    assert primary.reported_families()
    primary._db = DownDb()
    clock.advance(ProcessReports.stale_s + ProcessReports.report_s)
    assert primary.reported_families() == []  # unknown now, rather than figures that stopped moving
    primary.stop()
