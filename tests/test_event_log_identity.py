"""Event log identity on real SQLite and PostgreSQL: a counter that starts again, an id stored
twice with other content, ids leaping to 2**63-1: every event is stored and every oddity reported."""

import pytest
from sqlalchemy import insert, select

from gateway.sync.eventlog import _store, _Submission, open_log
from gateway.sync.monitor import EVENT_CONFLICT, LOG_IRREGULAR, LOG_RESTARTED
from gateway.store.schema import events, pending_pulls, terminals
from protocol.events import MAX_EVENT_ID, Event, EventCode, Origin

NOW_MS = 1_700_000_000_000
T = 7


@pytest.fixture
def db(db):
    """The shared database, with terminal T known."""
    db.run_now(lambda c: c.execute(insert(terminals).values(terminal_id=T, admission="admitted", name="", access_groups="",
                                                          model="", firmware="", link="", cursor=0)))
    return db


def enrol(event_id, user, at=0):
    return Event(event_id, 1000 + event_id % 10**6 + at, EventCode.ENROLL_SUCCESS, Origin.DEVICE, user)


def store(db, events_, epoch, logs=None):
    return db.run_now(_store, [_Submission(T, events_, pull_users=True, log_epoch=epoch)], [], NOW_MS, logs)


def rows(db, *columns):
    stmt = select(*(events.c[c] for c in columns)).order_by(events.c.id)
    return [tuple(r) for r in db.run_now(lambda c: c.execute(stmt).all())]


def owed(db):
    return sorted(db.run_now(lambda c: c.execute(select(pending_pulls.c.user_id)).scalars().all()))


def test_a_terminal_naming_a_new_log_keeps_every_event_and_the_restart_is_reported(db):
    state, ack, reported = db.run_now(open_log, T, 11, NOW_MS)
    assert (state.epoch, ack, reported) == (11, 0, [])
    store(db, [enrol(1, "a"), enrol(2, "b"), enrol(3, "c")], 11)
    assert db.run_now(open_log, T, 11, NOW_MS)[1] == 3  # same log again: resume after 3
    state, ack, reported = db.run_now(open_log, T, 22, NOW_MS)  # restarted without its state: counter at 1
    assert ack == 0 and [a.kind for a in reported] == ["restarted"]
    store(db, [enrol(1, "d", at=50), enrol(2, "e", at=50)], 22)
    assert [r for r in rows(db, "log_epoch", "terminal_event_id", "user_id") if r[1] is not None] == [
        (11, 1, "a"), (11, 2, "b"), (11, 3, "c"), (22, 1, "d"), (22, 2, "e")]
    assert [r[0] for r in rows(db, "type") if r[0] == LOG_RESTARTED] == [LOG_RESTARTED]
    assert owed(db) == ["a", "b", "c", "d", "e"]


def test_a_terminal_naming_no_log_gets_no_acknowledgement_at_the_handshake_and_a_counter_restart_opens_a_new_log(db):
    assert db.run_now(open_log, T, None, NOW_MS)[1] == 0
    logs, _ = store(db, [enrol(1, "a"), enrol(2, "b"), enrol(3, "c")], None)
    assert db.run_now(open_log, T, None, NOW_MS)[1] == 0  # never the highest: it may have started again
    logs, reported = store(db, [enrol(1, "a"), enrol(2, "b")], None, logs)  # a resend: nothing new
    assert reported == []
    logs, reported = store(db, [enrol(1, "x", at=99), enrol(2, "y", at=99)], None, logs)  # counter back at 1
    assert [a.kind for a in reported] == ["restarted"] and logs[T].epoch == -1
    stored = [r for r in rows(db, "log_epoch", "terminal_event_id", "user_id") if r[1] is not None]
    assert stored == [(0, 1, "a"), (0, 2, "b"), (0, 3, "c"), (-1, 1, "x"), (-1, 2, "y")]
    assert owed(db) == ["a", "b", "c", "x", "y"]


def test_an_id_stored_again_with_other_content_keeps_both_and_is_reported(db):
    logs, _ = store(db, [enrol(1, "a")], 5)
    logs, reported = store(db, [enrol(1, "b", at=7)], 5, logs)
    assert [a.kind for a in reported] == ["conflict"]
    found = rows(db, "type", "terminal_event_id", "user_id", "occurred_ms")
    assert found[0] == ("ENROLL_SUCCESS", 1, "a", 1001)
    assert found[1] == (EVENT_CONFLICT, None, "b", 1008)  # the second content, whole
    first_id = rows(db, "id")[0][0]
    assert f"event #{first_id} " in rows(db, "detail")[1][0]  # names the first by its stored id
    assert owed(db) == ["a", "b"]  # the conflicting event still asks for its pull


def test_an_id_leaping_to_the_last_one_never_makes_later_events_vanish(db):
    logs, _ = store(db, [enrol(1, "a")], 5)
    logs, reported = store(db, [enrol(MAX_EVENT_ID, "leap")], 5, logs)
    assert [a.kind for a in reported] == ["leap"]
    logs, reported = store(db, [enrol(2, "b"), enrol(3, "c")], 5, logs)
    assert [a.kind for a in reported] == ["backwards"]
    assert [r for r in rows(db, "terminal_event_id") if r[0] is not None] == [(1,), (MAX_EVENT_ID,), (2,), (3,)]
    assert [r for r in rows(db, "type") if r[0] == LOG_IRREGULAR] == [(LOG_IRREGULAR,)] * 2
    # A WELCOME acknowledging 2**63-1 would make the terminal forget what it still holds.
    assert db.run_now(open_log, T, 5, NOW_MS)[1] == 0


def test_a_terminal_naming_no_log_after_a_leap_still_gets_its_later_events_stored(db):
    logs, reported = store(db, [enrol(MAX_EVENT_ID, "leap")], None)
    assert [a.kind for a in reported] == ["leap"]
    logs, reported = store(db, [enrol(1, "after", at=5)], None, logs)
    assert [a.kind for a in reported] == ["restarted"]
    assert ("after",) in rows(db, "user_id")
