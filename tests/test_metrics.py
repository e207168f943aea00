"""/metrics of a real gateway, read by the Prometheus client's own parser after sync happened."""

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, threads

from gateway.metrics import Metrics
from gateway.sync.monitor import APPLIED_BY_DEVICE
from live_site import wait_until
from api_site import A, B, ApiTestCase, http


def samples(text: str) -> dict:
    """{(sample name, labels as a sorted tuple): value} of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class MetricsTests(ApiTestCase):
    @defer.inlineCallbacks
    def scrape(self):
        code, text, headers = yield threads.deferToThread(http, "GET", self.url + "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version="))
        return samples(text)

    @defer.inlineCallbacks
    def test_metrics_count_what_the_gateway_did(self):
        yield self.enroll(A, "m-1")
        yield wait_until(lambda: self.site.count_events(type=APPLIED_BY_DEVICE, user_id="m-1") == 1, "m-1 applied on B")
        metrics = self.site.gateway.metrics
        # The sweep sets each online terminal's lag once a second.
        yield wait_until(lambda: all(metrics.registry.get_sample_value("gateway_sync_lag", {"terminal": str(t)}) is not None for t in (A, B)),
                         "sync lag of both terminals")

        found = yield self.scrape()
        self.assertEqual(found[("gateway_terminals_online", ())], 2)
        self.assertGreaterEqual(found[("gateway_events_ingested_total", ())], 2)  # the enrolment on A, the update on B
        self.assertGreaterEqual(found[("gateway_commit_batch_events_count", ())], 1)
        self.assertGreaterEqual(found[("gateway_commit_seconds_count", ())], 1)
        self.assertEqual(found[("gateway_user_pulls_total", ())], 1)
        self.assertGreaterEqual(found[("gateway_user_pushes_total", ())], 1)
        self.assertEqual(found[("gateway_reading_paused", ())], 0)
        self.assertEqual(found[("gateway_events_waiting", ())], 0)  # everything received is committed
        for terminal in (A, B):
            self.assertEqual(found[("gateway_sync_lag", (("terminal", str(terminal)),))], 0)


def test_value_reads_counters_and_gauges_by_label_and_zero_before_first_use():
    metrics = Metrics()
    assert metrics.value(metrics.refused, reason="auth_failed") == 0
    metrics.refused.labels("auth_failed").inc(2)
    metrics.terminals_online.set(3)
    assert metrics.value(metrics.refused, reason="auth_failed") == 2
    assert metrics.value(metrics.refused, reason="unknown_terminal") == 0
    assert metrics.value(metrics.terminals_online) == 3


def test_a_scrape_whose_metrics_cannot_be_built_is_answered_503_not_left_waiting():
    from twisted.web.test.requesthelper import DummyRequest

    from gateway.http.site import MetricsResource

    class Broken:
        def exposition(self):
            return defer.fail(ValueError("mirror corrupt"))  # the API process: the ingest process's answer failed

    class Raising:
        def exposition(self):
            raise ValueError("a report that cannot be merged")  # in process: building them raised

    for metrics in (Broken(), Raising()):
        request = DummyRequest([b"metrics"])
        MetricsResource(metrics).render_GET(request)
        assert request.finished and request.responseCode == 503
        assert b"metrics unavailable" in b"".join(request.written)


def test_sync_lag_is_set_when_it_changed_and_again_once_its_terminal_was_forgotten():
    metrics = Metrics()
    looked_up = []
    labels = metrics.sync_lag.labels
    metrics.sync_lag.labels = lambda *values: looked_up.append(values) or labels(*values)
    for lag in (0, 0, 0, 2, 2, 0):  # the sweep's findings, a second apart
        metrics.set_sync_lag(7, lag)
    assert looked_up == [("7",)] * 3
    assert metrics.registry.get_sample_value("gateway_sync_lag", {"terminal": "7"}) == 0
    metrics.forget_terminal(7)  # its link ended: the gauge went
    metrics.set_sync_lag(7, 0)  # back online with the lag it had: shown again
    assert metrics.registry.get_sample_value("gateway_sync_lag", {"terminal": "7"}) == 0
