"""Order without a global lock, on a real PostgreSQL server: writers never wait for each other,
and a follower of the event log or of the changes feed never skips a row that commits late."""

import pytest
from sqlalchemy import text

from gateway.http.queries import EVERYTHING, last_event_id, read_events
from gateway.store.database import Database
from gateway.store.order import draw_keys
from gateway.sync.monitor import APPLIED_BY_DEVICE, record_sync_events, sync_event_row
from gateway.sync.pusher import read_feed
from gateway.sync.users import last_change_seq, store_record
from protocol.records import UserRecord


@pytest.fixture
def db(postgres):
    database = Database(postgres.new_database(), reactor=None)
    database.open()
    yield database
    database.engine.dispose()


def delivered(conn, user_id: str) -> None:
    record_sync_events(conn, [sync_event_row(APPLIED_BY_DEVICE, 1, user_id, at_ms=0)])


class EventFollower:
    """Reads the event log as the live stream and the page do: after the highest id seen."""

    def __init__(self, db):
        self.db, self.position, self.seen = db, 0, []

    def follow(self) -> None:
        found, _ = self.db.run_now(read_events, EVERYTHING, self.position, None, 100)
        self.seen += [e["user_id"] for e in found]
        self.position = found[-1]["id"] if found else self.position


class FeedFollower:
    """Reads the changes feed as a terminal's pusher does: after its cursor."""

    def __init__(self, db):
        self.db, self.cursor, self.seen, self.held_back = db, 0, [], False

    def follow(self) -> None:
        page = self.db.run_now(read_feed, self.cursor, 100)
        self.seen += [e.user_id for e in page]
        self.held_back = page.held_back
        self.cursor = page[-1].change_seq if page else self.cursor


def no_waiting(conn) -> None:
    """A writer that would wait for another's lock fails at once instead: the test sees it."""
    conn.execute(text("SET LOCAL lock_timeout = '1ms'"))


def test_an_event_committed_late_is_hidden_until_then_never_skipped(db):
    follower = EventFollower(db)
    with db.engine.connect() as early, db.engine.connect() as late:
        with early.begin():
            no_waiting(early)
            delivered(early, "early")  # its key is the lowest: taken first, committed last
            with late.begin():
                no_waiting(late)
                delivered(late, "late-1")
                delivered(late, "late-2")
            follower.follow()
            assert follower.seen == []  # committed, but above a transaction still running
            assert db.run_now(last_event_id) == 0
        follower.follow()
    assert follower.seen == ["early", "late-1", "late-2"]
    follower.follow()
    assert follower.seen == ["early", "late-1", "late-2"]  # nothing twice


def test_a_change_committed_late_is_hidden_until_then_never_skipped(db):
    follower = FeedFollower(db)
    db.run_now(store_record, UserRecord("before"), 0)
    with db.engine.connect() as early, db.engine.connect() as late:
        with early.begin():
            no_waiting(early)
            store_record(early, UserRecord("early"), 0)
            with late.begin():
                no_waiting(late)
                store_record(late, UserRecord("late"), 0)
                delivered(late, "late")  # a change and its event in one transaction, as a merge writes them
            follower.follow()
            assert follower.seen == ["before"]
            assert follower.held_back  # committed changes wait above the watermark: read again soon
            assert db.run_now(last_change_seq) == follower.cursor
        follower.follow()
    assert follower.seen == ["before", "early", "late"]
    assert not follower.held_back


def test_a_transaction_that_started_later_but_committed_first_waits_too(db):
    follower = FeedFollower(db)
    with db.engine.connect() as first, db.engine.connect() as second:
        with second.begin():
            draw_keys(second, 1)  # the older transaction, still running
            with first.begin():
                store_record(first, UserRecord("committed"), 0)
            follower.follow()
            assert follower.seen == [] and follower.held_back
            store_record(second, UserRecord("older"), 0)
        follower.follow()
    assert follower.seen == ["older", "committed"]


def test_a_rolled_back_change_leaves_a_gap_the_feed_reads_past(db):
    follower = FeedFollower(db)
    with db.engine.connect() as conn:
        with conn.begin() as tx:
            store_record(conn, UserRecord("never"), 0)
            tx.rollback()
    db.run_now(store_record, UserRecord("kept"), 0)
    follower.follow()
    assert follower.seen == ["kept"] and not follower.held_back


def test_keys_of_one_transaction_ascend_and_the_next_transaction_starts_above_them(db):
    with db.engine.connect() as conn:
        with conn.begin():
            first = draw_keys(conn, 3)
            second = draw_keys(conn, 2)
        with conn.begin():
            third = draw_keys(conn, 1)
    assert list(first) + list(second) == list(range(first[0], first[0] + 5))
    assert third[0] > second[-1]
