"""The ingest process's memory, carried to the API process: what the views make of the mirror is
what they make of the gateway itself (unit: real objects on both sides, JSON between them)."""

import json
from collections import Counter

import msgspec
from types import SimpleNamespace

from twisted.internet import task
from twisted.web.test.requesthelper import DummyRequest

from gateway.http.serve import SnapshotResource
from gateway.http.snapshot import Mirror, take
from gateway.http.terminals import terminal_json
from gateway.metrics import Metrics
from gateway.native.doorman import DoorLimits, Doorman
from gateway.sync.monitor import SAVE_FAILED, sync_event_row
from gateway.sync.reconcile import Reconciler, Reconciliation
from gateway.sync.syncmode import SyncMode
from gateway.terminals import PENDING, Terminal
from gateway.sync.unsaved import UnsavedEvents


class Link:
    last_heard_s = 1_700_000_123.25


def ingest_side():
    metrics = Metrics()
    metrics.events_ingested.inc(7)
    online = Terminal(101, name="Door", access_groups=frozenset({3, 1}), model="SIM", firmware="1.0", link="tcp 127.0.0.1:5000",
                      cursor=12, connection=Link())
    offline = Terminal(102, admission=PENDING, secret=b"never-shown", offline_reason="refused comm key", last_seen_ms=5)
    reconciler = Reconciler(None, SimpleNamespace(connection=lambda terminal_id: None), None, task.Clock(), metrics, None)
    reconciler.heard(101, Reconciliation(9, compared=4, repaired=Counter(pushed=2), differences={"u7": "why"}, note=""), 5)
    return SimpleNamespace(
        registry=SimpleNamespace(terminals={101: online, 102: offline}),
        reconciler=reconciler,
        eventlog=SimpleNamespace(unsaved=UnsavedEvents(metrics)),
        settings=SimpleNamespace(mode=SyncMode.SPECIFIC),
        doorman=locked_out_once(),
        metrics=metrics,
    )


def locked_out_once() -> Doorman:
    door = Doorman(task.Clock(), Metrics(), DoorLimits(lockout_after=1))
    door.proof_failed(7, "192.0.2.7")
    return door


def carried(gateway, metrics: bool = False) -> Mirror:
    mirror = Mirror()
    mirror.update(msgspec.json.encode(take(gateway, 42.0, metrics)))  # as the processes carry it
    return mirror


def test_the_views_show_the_same_terminals_on_both_sides():
    gateway = ingest_side()
    mirror = carried(gateway)
    for terminal_id, term in gateway.registry.terminals.items():
        shown = mirror.registry.terminals[terminal_id]
        assert terminal_json(shown, 20, 1) == terminal_json(term, 20, 1)
    assert [t.terminal_id for t in mirror.registry.connected()] == [101]
    assert mirror.settings.mode is SyncMode.SPECIFIC
    assert mirror.reconciler.last[101].as_json(mirror.reconciler.repaired_total[101]) == \
        gateway.reconciler.last[101].as_json(5)
    assert mirror.reconciler.last[101].differences == {"u7": "why"}
    assert mirror.doorman.lockouts() == gateway.doorman.lockouts() != []


def test_the_metrics_travel_only_when_asked_for_and_stay_until_the_next_asked():
    gateway = ingest_side()
    assert "metrics" not in take(gateway, 1.0)
    mirror = carried(gateway, metrics=True)
    assert "gateway_events_ingested_total 7.0" in mirror.metrics_text
    gateway.metrics.events_ingested.inc(1)
    mirror.update(msgspec.json.encode(take(gateway, 43.0)))
    assert "gateway_events_ingested_total 7.0" in mirror.metrics_text and mirror.metrics_taken_s == 42.0
    mirror.update(msgspec.json.encode(take(gateway, 44.0, metrics=True)))
    assert "gateway_events_ingested_total 8.0" in mirror.metrics_text and mirror.metrics_taken_s == 44.0


def test_no_secret_leaves_the_ingest_process():
    assert "never-shown" not in json.dumps(take(ingest_side(), 0.0))


def test_each_unsaved_event_reaches_the_live_stream_once_and_the_list_newest_first():
    gateway = ingest_side()
    unsaved = gateway.eventlog.unsaved
    mirror = Mirror()
    offered = []
    mirror.eventlog.unsaved.listeners.append(offered.append)
    unsaved.add(sync_event_row(SAVE_FAILED, 101, "u1", "database is locked", at_ms=5))
    mirror.update(msgspec.json.encode(take(gateway, 1.0)))
    mirror.update(msgspec.json.encode(take(gateway, 1.5)))  # the same one again: not offered again
    unsaved.add(sync_event_row(SAVE_FAILED, 101, "u2", "database is locked", at_ms=6))
    mirror.update(msgspec.json.encode(take(gateway, 2.0)))
    assert [e["user_id"] for e in offered] == ["u1", "u2"]
    assert mirror.eventlog.unsaved.shown() == unsaved.shown()
    assert [e["user_id"] for e in mirror.eventlog.unsaved.shown()] == ["u2", "u1"]


def read_again(mirror: Mirror, gateway, now_s: float) -> dict:
    """A snapshot taken as the API process asks for it (with the count of findings it holds), and mirrored."""
    taken = take(gateway, now_s, reconciled=mirror.reconciled)
    mirror.update(msgspec.json.encode(taken))
    return taken


def test_an_unchanged_reconciliation_is_kept_from_one_snapshot_to_the_next_and_a_changed_one_shown_anew():
    gateway = ingest_side()
    mirror = carried(gateway)
    kept = mirror.reconciler.last[101]
    shown = kept.as_json(5)
    read_again(mirror, gateway, 43.0)
    assert mirror.reconciler.last[101] is kept and kept.as_json(5) is shown
    gateway.reconciler.heard(101, Reconciliation(10, compared=4, differences={"u7": "why", "u8": "another why"}), 6)
    read_again(mirror, gateway, 44.0)
    assert mirror.reconciler.last[101].as_json(6) == gateway.reconciler.last[101].as_json(6) != shown


def test_a_snapshot_carries_only_the_reconciliations_kept_since_those_the_mirror_holds():
    gateway = ingest_side()
    mirror = carried(gateway)
    assert read_again(mirror, gateway, 43.0)["reconciliations"] == []  # nothing was reconciled meanwhile
    gateway.reconciler.heard(102, Reconciliation(11, compared=3, repaired=Counter(deleted=1)), 1)
    assert [r["terminal_id"] for r in read_again(mirror, gateway, 44.0)["reconciliations"]] == [102]
    assert read_again(mirror, gateway, 45.0)["reconciliations"] == []
    for terminal_id, repaired_total in ((101, 5), (102, 1)):  # the one carried earlier is kept beside the new one
        assert mirror.reconciler.last[terminal_id].as_json(mirror.reconciler.repaired_total[terminal_id]) == \
            gateway.reconciler.last[terminal_id].as_json(repaired_total)


def test_the_snapshot_endpoint_takes_anything_but_a_count_for_no_count_and_carries_every_reconciliation():
    gateway = ingest_side()
    gateway.reactor = task.Clock()
    for asked in (b"9" * 5000, b"-1", b"x", b""):  # a count int() refuses, or none: a local peer's guess
        request = DummyRequest([b"internal", b"snapshot"])
        request.args = {b"reconciled": [asked]}
        taken = json.loads(SnapshotResource(gateway).render_GET(request))
        assert [r["terminal_id"] for r in taken["reconciliations"]] == [101], asked
