"""Monitoring events the database cannot take yet: shown at once, stored once it can (unit)."""

from twisted.internet import task

from gateway.http.sse import EventStream
from gateway.metrics import Metrics
from gateway.sync.monitor import SAVE_FAILED, sync_event_row
from gateway.sync.unsaved import UnsavedEvents


class Client:
    started, gone = True, False

    def __init__(self):
        self.offered = []

    def offer(self, events):
        self.offered += events


def test_a_failure_reaches_the_live_stream_the_moment_it_happens_without_an_id():
    metrics, client = Metrics(), Client()
    unsaved = UnsavedEvents(metrics)
    stream = EventStream(None, task.Clock(), unsaved)
    stream.clients.add(client)
    unsaved.listeners.append(stream.offer_unsaved)
    unsaved.add(sync_event_row(SAVE_FAILED, 101, "u1", "database is locked", at_ms=5))
    ((event, encoded),) = client.offered
    assert (event["type"], event["user_id"], event["id"], event["unsaved"], event["origin"]) == (SAVE_FAILED, "u1", None, True, "device")
    assert encoded.startswith(b"data: ") and b"\nid:" not in encoded and not encoded.startswith(b"id:")
    assert metrics.value(metrics.unsaved_events) == 1


def test_rows_leave_once_stored_and_the_oldest_go_first_when_too_many_wait():
    metrics = Metrics()
    unsaved = UnsavedEvents(metrics)
    unsaved.limit = 2
    for user in ("a", "b", "c"):
        unsaved.add(sync_event_row(SAVE_FAILED, 1, user, at_ms=1))
    assert [e["user_id"] for e in unsaved.shown()] == ["c", "b"]  # newest first, as the API lists
    assert metrics.value(metrics.failures, kind="unsaved_dropped") == 1
    taken = unsaved.taken()
    assert [r["user_id"] for r in unsaved.rows()] == ["b", "c"] and "_unsaved" not in unsaved.rows()[0]
    unsaved.add(sync_event_row(SAVE_FAILED, 1, "d", at_ms=2))  # arrives while the commit runs
    unsaved.stored(taken)
    assert [e["user_id"] for e in unsaved.shown()] == ["d"]
