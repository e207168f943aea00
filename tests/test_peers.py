"""Peers on a real PostgreSQL server: a notification is heard once its transaction commits (never
for a rollback, never its own sender's), and event inserts hold the commit-order lock until they commit."""

import queue
import time

import pytest
from sqlalchemy import create_engine, text

from gateway.store.database import Database
from gateway.sync.monitor import APPLIED_BY_DEVICE, record_sync_events, sync_event_row
from gateway.process.peers import Listener, connect_raw
from gateway.store.notices import CHANGES, COMMIT_ORDER_LOCK, SETTINGS, notify


class ThreadCalls:
    """A reactor as the listener thread sees it: calls handed over, run by the test when it asks."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, f, *args, **kwargs):
        self.calls.put((f, args, kwargs))

    def run_until(self, predicate, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                f, args, kwargs = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None
            f(*args, **kwargs)


@pytest.fixture
def engine(postgres):
    engine = create_engine(postgres.new_database())
    yield engine
    engine.dispose()


def test_a_notification_is_heard_on_commit_never_for_a_rollback_nor_by_its_sender(engine):
    reactor, heard, resynced = ThreadCalls(), [], []
    listener = Listener(lambda: connect_raw(engine, "test"), reactor, lambda channel, payload: heard.append((channel, payload)),
                        lambda: resynced.append(True))
    listener.start()
    try:
        reactor.run_until(lambda: resynced, "the listener listening")
        with engine.connect() as conn:
            with conn.begin() as tx:
                conn.execute(text("SELECT pg_notify(:c, 'another-process rolled back')"), dict(c=CHANGES))
                tx.rollback()
            with conn.begin():
                notify(conn, SETTINGS, "mine")  # this process's own: left out
                conn.execute(text("SELECT pg_notify(:c, 'another-process 1')"), dict(c=CHANGES))
                conn.execute(text("SELECT pg_notify(:c, 'another-process 1')"), dict(c=CHANGES))  # the same, once
            with conn.begin():
                conn.execute(text("SELECT pg_notify(:c, 'another-process 2')"), dict(c=SETTINGS))
        reactor.run_until(lambda: (SETTINGS, "2") in heard, "the second commit's notification")
        assert heard == [(CHANGES, "1"), (SETTINGS, "2")]
    finally:
        listener.stop()


def test_events_are_inserted_holding_the_commit_order_lock_until_commit(engine):
    schema = Database(engine.url.render_as_string(hide_password=False), reactor=None)
    schema.open()
    schema.engine.dispose()
    lock = text("SELECT pg_try_advisory_xact_lock(:a, :b)")
    keys = dict(a=COMMIT_ORDER_LOCK[0], b=COMMIT_ORDER_LOCK[1])
    with engine.connect() as writer, engine.connect() as other:
        with writer.begin():
            record_sync_events(writer, [sync_event_row(APPLIED_BY_DEVICE, 1, "u1", at_ms=0)])
            with other.begin():
                assert other.execute(lock, keys).scalar() is False  # no other event insert may take an id now
        with other.begin():
            assert other.execute(lock, keys).scalar() is True
