"""What a merge keeps, drops and sends back, on real SQLite and PostgreSQL: nothing of a keypad
change vanishes without a monitoring event naming the user, the terminal, what and why."""

from sqlalchemy import select

from gateway.sync.eventlog import _store, _Submission
from gateway.sync.monitor import CHANGE_DROPPED, MERGED_UNCHANGED, SAVED_FROM_DEVICE
from gateway.sync.puller import merge_pulled
from gateway.store.schema import events
from gateway.sync.users import create_user, delete_user, last_change_seq, load_record
from protocol.events import Event, EventCode, Origin
from protocol.records import MAX_CARDS, Card, CardType, UserRecord, UserRecordWire

NOW_MS = 1_700_000_000_000
T = 5


def keypad(db, code, user, at_ms):
    db.run_now(_store, [_Submission(T, [Event(at_ms - NOW_MS + 1, at_ms, code, Origin.DEVICE, user)], pull_users=True)], [], at_ms)


def monitoring(db):
    stmt = select(events.c.type, events.c.terminal_id, events.c.user_id, events.c.detail).where(events.c.terminal_event_id.is_(None))
    return [tuple(r) for r in db.run_now(lambda c: c.execute(stmt.order_by(events.c.id)).all())]


def cards(n, first=0):
    return tuple(Card(CardType.CSN, bytes([first + i])) for i in range(n))


def test_a_card_beyond_the_records_limit_is_reported_and_the_terminal_corrected(db):
    server = UserRecord("u1", name="Ana", cards=cards(MAX_CARDS))
    db.run_now(create_user, server, NOW_MS)
    seq = db.run_now(last_change_seq)
    pulled = UserRecord("u1", name="Ana", cards=cards(MAX_CARDS) + (Card(CardType.SMART_CARD, b"\x99"),))
    outcome = db.run_now(merge_pulled, T, [pulled], [], 2**62, NOW_MS)
    assert outcome.saved == [] and outcome.corrections == {"u1": UserRecordWire.build(server)}
    assert db.run_now(last_change_seq) == seq  # nothing new for the terminals that hold the server's record
    (dropped, unchanged) = monitoring(db)
    assert dropped[:3] == (CHANGE_DROPPED, T, "u1")
    assert "SMART_CARD 99" in dropped[3] and f"{MAX_CARDS} of at most {MAX_CARDS}" in dropped[3]
    assert unchanged[:3] == (MERGED_UNCHANGED, T, "u1") and "card SMART_CARD 99 (card beyond the limit)" in unchanged[3]


def test_an_edit_the_server_fields_win_over_is_merged_with_nothing_changed(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    seq = db.run_now(last_change_seq)
    outcome = db.run_now(merge_pulled, T, [UserRecord("u1", name="Anna")], [], 2**62, NOW_MS)
    assert outcome.saved == [] and list(outcome.corrections) == ["u1"]
    assert db.run_now(last_change_seq) == seq
    assert [m[0] for m in monitoring(db)] == [MERGED_UNCHANGED]
    assert "name" in monitoring(db)[0][3]


def test_the_servers_delete_wins_over_an_offline_keypad_edit_and_says_so(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    db.run_now(delete_user, "u1", NOW_MS + 10)
    keypad(db, EventCode.UPDATE_SUCCESS, "u1", NOW_MS + 20)
    outcome = db.run_now(merge_pulled, T, [UserRecord("u1", name="Ana", pin_hash=b"p" * 32)], [], 2**62, NOW_MS + 30)
    assert outcome.saved == [] and outcome.corrections == {"u1": None}  # the terminal deletes it too
    assert db.run_now(load_record, "u1") is None
    ((kind, terminal, user, detail),) = monitoring(db)
    assert (kind, terminal, user) == (CHANGE_DROPPED, T, "u1") and "deleted on the server" in detail


def test_someone_enrolled_again_after_a_server_delete_comes_back(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    db.run_now(delete_user, "u1", NOW_MS + 10)
    keypad(db, EventCode.ENROLL_SUCCESS, "u1", NOW_MS + 20)
    outcome = db.run_now(merge_pulled, T, [UserRecord("u1", name="Ana again")], [], 2**62, NOW_MS + 30)
    assert outcome.saved == ["u1"]
    assert db.run_now(load_record, "u1").name == "Ana again"
    assert [m[0] for m in monitoring(db)] == [SAVED_FROM_DEVICE]


def test_an_edit_a_server_delete_reached_first_is_reported_lost(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    db.run_now(delete_user, "u1", NOW_MS + 10)
    db.run_now(merge_pulled, T, [], ["u1"], 2**62, NOW_MS + 30)
    ((kind, _, user, detail),) = monitoring(db)
    assert (kind, user) == (CHANGE_DROPPED, "u1") and "before the change was fetched" in detail


def test_a_terminal_record_whose_id_or_name_breaks_the_text_rule_is_refused_and_said(db):
    pulled = [UserRecord("u\u202e1", name="Ana"), UserRecord("u2", name="Eve\x1b[2J"), UserRecord("u3", name="Jose\u0301")]
    outcome = db.run_now(merge_pulled, T, pulled, [], 2**62, NOW_MS)
    assert outcome.saved == [] and outcome.corrections == {}
    assert [db.run_now(load_record, u) for u in ("u\u202e1", "u2", "u3")] == [None, None, None]
    refused = monitoring(db)
    assert [(kind, user) for kind, _, user, _ in refused] == [(CHANGE_DROPPED, "u\\u202e1"), (CHANGE_DROPPED, "u2"), (CHANGE_DROPPED, "u3")]
    assert "user id holds RIGHT-TO-LEFT OVERRIDE (U+202E)" in refused[0][3]
    assert "name holds a control character (U+001B)" in refused[1][3]
    assert "name is not in Unicode normalization form NFC" in refused[2][3]
