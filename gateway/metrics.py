"""Metrics: the gateway's counters and gauges, exposed at /metrics in the Prometheus format.

Each gateway owns its registry (not prometheus_client's global one), so several gateways can
live in one process: the test suite starts many. Several processes on one database: the one
serving /metrics adds the others' reported metrics (gateway/process/reports.py), each of their
series labelled ``process``.
"""

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric


class Metrics:
    def __init__(self) -> None:
        # () -> the other processes' metric families, labelled ``process`` (gateway/process/reports.py); none alone.
        self.reported: Callable[[], list[Metric]] = list
        self.registry = CollectorRegistry()
        r = self.registry
        self.terminals_online = Gauge("gateway_terminals_online", "Terminals with an established session", registry=r)
        self.events_ingested = Counter("gateway_events_ingested", "Terminal log events committed", registry=r)
        self.commit_batch_size = Histogram(
            "gateway_commit_batch_events",
            "Events per group commit",
            buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384),
            registry=r,
        )
        self.commit_seconds = Histogram("gateway_commit_seconds", "Group commit latency", registry=r)
        self.reactor_lag = Gauge("gateway_reactor_lag_seconds", "How late the ingest process's reactor last ran a timer: "
                                 "above a second, the gateway itself is overloaded (its links, timers and commits all wait)", registry=r)
        self.pulls = Counter("gateway_user_pulls", "Users pulled from terminals and merged", registry=r)
        self.pushes = Counter("gateway_user_pushes", "User records and deletions applied by terminals", registry=r)
        self.failures = Counter("gateway_failures", "Failures by kind", ["kind"], registry=r)
        self.events_expired = Counter("gateway_events_expired", "Events older than the kept days removed, by action (dropped, exported)",
                                      ["action"], registry=r)
        self.frame_errors = Counter("gateway_frame_errors", "Corrupt frames skipped", registry=r)
        self.requests_unanswered = Counter(
            "gateway_requests_unanswered", "Requests a terminal left unanswered past their deadline, by command; the link stays up",
            ["command"], registry=r)
        self.late_answers = Counter(
            "gateway_late_answers", "Answers that came after their request's deadline, by command: the terminal acted on a "
            "request the gateway had given up on (a PUT_USERS is pushed again, which the terminal applies again harmlessly)",
            ["command"], registry=r)
        self.refused = Counter("gateway_terminals_refused", "Link attempts refused, by reason", ["reason"], registry=r)
        # Strangers: links not authenticated yet (gateway/native/doorman.py)
        self.strangers = Gauge("gateway_unauthenticated_links", "Links whose peer has not authenticated yet", registry=r)
        self.links_waiting = Gauge("gateway_links_waiting", "Connections waiting, unanswered, for a place to shake hands", registry=r)
        self.links_refused = Counter("gateway_links_refused", "Connections refused before any handshake, by reason", ["reason"], registry=r)
        # Before a link exists (gateway/native/accept.py)
        self.accept_queue = Gauge("gateway_accept_queue", "Connections waiting to be accepted, by listening port (sampled each second)", ["port"], registry=r)
        self.listen_overflows = Counter("gateway_listen_overflows", "Connections the kernel dropped at a full accept queue on this host while the gateway ran", registry=r)
        self.wrong_proofs = Counter("gateway_wrong_proofs", "Wrong handshake proofs checked; those refused unchecked count in gateway_links_refused", registry=r)
        self.lockouts = Counter("gateway_auth_lockouts", "Source addresses locked out, and terminal ids put under attack, after failed handshakes", ["kind"], registry=r)
        self.sync_lag = Gauge("gateway_sync_lag", "Changes a terminal still lacks (in sync mode specific, those meant for it; a PUSH "
                              "device: also those queued it has not answered), and its keypad changes still to be pulled; terminals online here", ["terminal"], registry=r)
        self._lags: dict[int, int] = {}  # terminal -> the sync lag last set
        self.event_log_anomalies = Counter(
            "gateway_event_log_anomalies",
            "Irregularities in terminals' event logs, all stored and reported: restarted, conflict (an id again with "
            "other content), backwards, leap",
            ["kind"],
            registry=r,
        )
        self.zk_quirks = Counter(
            "gateway_zk_quirks",
            "ZK devices' answers other than they announced, read as far as they go (a count a table disagrees with, event data "
            "of unknown length, unreadable records), by kind: once per kind and connection, when it is logged",
            ["kind"], registry=r,
        )
        self.reconcile_repairs = Counter(
            "gateway_reconcile_repairs", "Users reconciliation repaired on a terminal: pushed, deleted, pulled", ["kind"], registry=r
        )
        self.reconcile_differences = Gauge(
            "gateway_reconcile_differences", "Users a terminal holds differently from the server, as the rules allow (not repaired); terminals online here",
            ["terminal"], registry=r,
        )
        self.clock_drift = Gauge(
            "gateway_terminal_clock_drift_seconds", "How far a terminal's clock was ahead of the gateway's when it connected (ZK devices); terminals online here",
            ["terminal"], registry=r,
        )
        self.unsaved_events = Gauge(
            "gateway_unsaved_monitoring_events",
            "Monitoring events (Fail to save to the server DB, ...) waiting for the database, shown by the API meanwhile",
            registry=r,
        )
        self.events_waiting = Gauge("gateway_events_waiting", "Terminal events received and not yet committed", registry=r)
        self.reading_paused = Gauge("gateway_reading_paused", "1 while terminal links are paused for backpressure", registry=r)
        # RS-485 buses (gateway/native/bus/), labelled by device
        self.bus_bytes = Counter("gateway_bus_bytes", "Bytes the master sent (tx) and received (rx) on a bus", ["bus", "direction"], registry=r)
        self.bus_utilisation = Gauge("gateway_bus_utilisation", "Share of a bus's line time carrying bytes, over the last 5 s", ["bus"], registry=r)
        self.bus_polls = Counter("gateway_bus_polls", "POLL requests sent on a bus", ["bus"], registry=r)
        self.bus_polls_per_second = Gauge("gateway_bus_polls_per_second", "POLL requests per second on a bus, over the last 5 s", ["bus"], registry=r)
        self.bus_timeouts = Counter("gateway_bus_timeouts", "Requests on a bus left unanswered past their deadline", ["bus"], registry=r)
        self.bus_retries = Counter("gateway_bus_retries", "Requests sent again on a bus after no answer", ["bus"], registry=r)
        self.bus_crc_errors = Counter("gateway_bus_crc_errors", "Corrupt data received on a bus (failed CRC, bytes outside any frame)", ["bus"], registry=r)

    @staticmethod
    def value(metric, **labels) -> float:
        """A counter's or gauge's current value (0 before it is first touched), read through
        prometheus_client's public collect() rather than its internals."""
        for family in metric.collect():
            for sample in family.samples:
                if sample.name in (family.name, family.name + "_total") and sample.labels == labels:
                    return sample.value
        return 0.0

    def set_sync_lag(self, terminal_id: int, lag: int) -> None:
        """A terminal's lag, as the once-a-second sweep finds it; the gauge is touched only when
        it changed. The sweep tells every online terminal's lag, mostly the same 0 as before, and
        a label lookup for each is 16 ms a second at 10,000 terminals."""
        if self._lags.get(terminal_id) != lag:
            self._lags[terminal_id] = lag
            self.sync_lag.labels(str(terminal_id)).set(lag)

    def told_caught_up(self, terminal_id: int) -> bool:
        """Whether the lag last set for the terminal is 0."""
        return self._lags.get(terminal_id) == 0

    def forget_terminal(self, terminal_id: int) -> None:
        """A terminal's link here ended: its gauges go with it, so that no stale figure stands beside
        those of the process that serves it next (or, offline, beside nothing true)."""
        self._lags.pop(terminal_id, None)
        for gauge in (self.sync_lag, self.clock_drift, self.reconcile_differences):
            try:
                gauge.remove(str(terminal_id))
            except KeyError:  # never set for it here
                pass

    def exposition(self, own: bool = False) -> bytes:
        """The Prometheus text: this process's, and the other processes' reported ones unless ``own``."""
        reported = [] if own else self.reported()
        return merged_exposition(self.registry, reported) if reported else generate_latest(self.registry)


def merged_exposition(registry: CollectorRegistry, reported: list[Metric]) -> bytes:
    """``registry``'s families with the ``reported`` ones merged in: one valid exposition, each
    family's HELP and TYPE once (the reported families are not changed)."""
    merged: dict[str, Metric] = {}
    for family in [*registry.collect(), *reported]:
        into = merged.get(family.name)
        if into is None:
            into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        into.samples += family.samples
    collected = CollectorRegistry()
    collected.register(_Collected(list(merged.values())))
    return generate_latest(collected)


class _Collected:
    """A collector of families already made (prometheus_client's custom-collector protocol)."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
