"""Peers on a real PostgreSQL server: a notification is heard once its transaction commits (never
for a rollback, never its own sender's), and a user change wakes the other processes once committed,
naming its user's groups."""

import pytest
from sqlalchemy import create_engine, event, text

from gateway.store.database import Database
from gateway.process.peers import Listener, connect_raw
from gateway.store import notices
from gateway.store.notices import CHANGES, DOORMAN, SETTINGS, notify
from gateway.sync.users import create_user
from protocol.records import UserRecord
from thread_calls import ThreadCalls


@pytest.fixture
def engine(postgres):
    engine = create_engine(postgres.new_database())
    yield engine
    engine.dispose()


def listening(engine) -> tuple[Listener, ThreadCalls, list]:
    """A started listener as another process's, once it listens; what it heard goes to the list."""
    reactor, heard, resynced = ThreadCalls(), [], []
    listener = Listener(lambda: connect_raw(engine, "test"), reactor, lambda channel, payload: heard.append((channel, payload)),
                        lambda: resynced.append(True))
    listener.start()
    try:
        reactor.run_until(lambda: resynced, "the listener listening")
    except AssertionError:
        listener.stop()
        raise
    return listener, reactor, heard


def test_a_notification_is_heard_on_commit_never_for_a_rollback_nor_by_its_sender(engine):
    listener, reactor, heard = listening(engine)
    try:
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


def test_wrong_proofs_heard_together_each_count_where_equal_wake_ups_merge():
    heard = []
    listener = Listener(None, None, lambda channel, payload: heard.append((channel, payload)), None)
    listener._deliver([(CHANGES, "another-process 7"), (CHANGES, "another-process 7"),
                       (DOORMAN, "another-process wrong 127.0.0.2 701"), (DOORMAN, "another-process wrong 127.0.0.2 701")])
    assert heard == [(DOORMAN, "wrong 127.0.0.2 701"), (DOORMAN, "wrong 127.0.0.2 701"), (CHANGES, "7")]


def test_changes_heard_together_wake_once_for_all_their_groups():
    """A storm across many groups: one wake, not one walk of every terminal per distinct payload."""
    heard = []
    listener = Listener(None, None, lambda channel, payload: heard.append((channel, payload)), None)
    listener._deliver([(CHANGES, "another-process 1,3"), (CHANGES, "another-process 2"), (CHANGES, "another-process ")])
    assert heard == [(CHANGES, "1,2,3")]
    listener._deliver([(CHANGES, "another-process 1"), (CHANGES, "another-process *")])
    assert heard[-1] == (CHANGES, "*")


def test_a_user_change_wakes_the_others_after_its_commit_and_a_rolled_back_one_never(engine, monkeypatch):
    db = Database(engine.url.render_as_string(hide_password=False), reactor=None)
    db.open()
    other, reactor, heard = listening(engine)
    try:
        def change_then_fail(conn):
            create_user(conn, UserRecord(user_id="rolled-back"), 0)
            raise ValueError("the merge went wrong")

        with pytest.raises(ValueError):
            db.run_now(change_then_fail)
        monkeypatch.setattr(notices, "SOURCE", "another-process")  # the listener leaves out its own process's
        db.run_now(create_user, UserRecord(user_id="kept", access_groups=(3, 12)), 0)
        reactor.run_until(lambda: heard, "the committed change's wake-up")
        assert heard == [(CHANGES, "12,3")]  # the groups of the user changed: only their terminals are woken

        def two_changes(conn):
            create_user(conn, UserRecord(user_id="one", access_groups=(1,)), 0)
            create_user(conn, UserRecord(user_id="two", access_groups=(2, 3)), 0)

        db.run_now(two_changes)
        reactor.run_until(lambda: len(heard) == 2, "the second transaction's wake-up")
        assert heard[1] == (CHANGES, "1,2,3")  # one notice for the transaction, naming every group
    finally:
        other.stop()
        db.engine.dispose()


def test_a_change_and_its_wake_up_take_one_connection_from_the_pool(engine):
    db = Database(engine.url.render_as_string(hide_password=False), reactor=None)
    db.open()
    checkouts = []
    event.listen(db.engine, "checkout", lambda *_: checkouts.append(True))
    try:
        db.run_now(create_user, UserRecord(user_id="woken"), 0)
        assert len(checkouts) == 1
    finally:
        db.engine.dispose()
