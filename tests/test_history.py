"""Each user's history and provenance, on real SQLite and PostgreSQL: every merge outcome names
the rule that decided it, for changes from our terminals, from ZK devices (through the same
puller and merge) and from the API; and who gave each value the user holds now."""

from sqlalchemy import func, select

from gateway.store.schema import events, user_history
from gateway.sync import changes as rules
from gateway.sync.eventlog import _store, _Submission
from gateway.sync.history import provenance, read_history
from gateway.sync.monitor import CHANGE_DROPPED, MERGED_UNCHANGED, SAVED_FROM_DEVICE
from gateway.sync.puller import merge_pulled
from gateway.sync.reconcile import CHANGED_AT_KEYPAD, DELETED_AT_KEYPAD, _record_findings
from gateway.sync.history import RECONCILIATION, noted
from gateway.sync.users import Members, create_user, delete_user, edit_user, load_record
from gateway.zk.mapping import DeviceProfile, holdable_copy
from protocol.events import Event, EventCode, Origin
from protocol.records import MAX_CARDS, Card, CardType, Fingerprint, UserRecord

NOW_MS = 1_700_000_000_000
T = 5
CSN = Card(CardType.CSN, bytes.fromhex("04a1b2c3"))
SMART = Card(CardType.SMART_CARD, bytes.fromhex("0a1b"))
ZK = DeviceProfile(record_size=72, template_format="zk10")


def finger(index, fill):
    return Fingerprint(index, fill * 384, fill * 384)


def history(db, user_id="u1"):
    return db.run_now(read_history, user_id)[0]


def decided(entry) -> list[tuple]:
    return [(c["field"], c["outcome"], c["rule"]) for c in entry["changes"]]


def monitoring(db):
    stmt = select(events.c.type, events.c.detail).where(events.c.terminal_event_id.is_(None)).order_by(events.c.id)
    return [tuple(r) for r in db.run_now(lambda c: c.execute(stmt).all())]


def pull(db, record, at_ms=NOW_MS, holdable=None):
    extra = (holdable,) if holdable else ()
    return db.run_now(merge_pulled, T, [record], [], 2**62, at_ms, *extra)


def keypad(db, code, user, pulled=True, event_id=1):
    event = Event(event_id, NOW_MS, code, Origin.DEVICE, user)
    db.run_now(_store, [_Submission(T, [event], pull_users=pulled)], [], NOW_MS)


# -- our terminals ------------------------------------------------------------------------------


def test_a_user_new_to_the_server_is_taken_whole_by_the_new_user_rule(db):
    pull(db, UserRecord("u1", name="Ana", cards=(CSN,)))
    (entry,) = history(db)
    assert entry["version"] == 1 and entry["source"] == "terminal" and entry["terminal_id"] == T
    assert decided(entry) == [("name", "taken", rules.NEW_USER), ("cards", "taken", rules.NEW_USER)]
    assert entry["changes"][1]["new"] == "CSN 04a1b2c3"


def test_a_keypad_edit_that_adds_a_card_and_renames_names_both_rules_in_the_event_and_the_history(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    pull(db, UserRecord("u1", name="Anna", cards=(CSN,), pin_hash=b"p" * 32))
    entry = history(db)[-1]
    assert entry["version"] == 2
    assert sorted(decided(entry)) == [("cards", "taken", rules.CARD_ADDED), ("name", "refused", rules.SERVER_KEPT),
                                      ("pin_hash", "taken", rules.VACANT_FILLED)]
    name = next(c for c in entry["changes"] if c["field"] == "name")
    assert (name["old"], name["new"]) == ("Ana", "Anna")  # what stayed, what the terminal offered
    ((kind, detail),) = monitoring(db)
    assert kind == SAVED_FROM_DEVICE
    assert "card CSN 04a1b2c3 (card added)" in detail and "name 'Anna' (server field kept)" in detail
    assert detail.index("taken") < detail.index("card ") < detail.index("refused") < detail.index("name")


def test_a_keypad_edit_the_server_keeps_everything_of_is_history_without_a_version(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    pull(db, UserRecord("u1", name="Anna"))
    entry = history(db)[-1]
    assert entry["version"] is None and entry["change_seq"] is None
    assert decided(entry) == [("name", "refused", rules.SERVER_KEPT)]
    assert monitoring(db)[0][0] == MERGED_UNCHANGED and "server field kept" in monitoring(db)[0][1]


def test_a_card_beyond_the_limit_is_refused_by_its_rule(db):
    full = tuple(Card(CardType.CSN, bytes([i])) for i in range(MAX_CARDS))
    db.run_now(create_user, UserRecord("u1", name="Ana", cards=full), NOW_MS)
    pull(db, UserRecord("u1", name="Ana", cards=full + (SMART,)))
    assert decided(history(db)[-1]) == [("cards", "refused", rules.CARD_LIMIT)]
    assert [m[0] for m in monitoring(db)] == [CHANGE_DROPPED, MERGED_UNCHANGED]


def test_an_empty_finger_slot_is_filled_and_a_taken_one_kept(db):
    db.run_now(create_user, UserRecord("u1", fingerprints=(finger(0, b"a"),)), NOW_MS)
    pull(db, UserRecord("u1", fingerprints=(finger(0, b"b"), finger(1, b"c"))))
    assert sorted(decided(history(db)[-1])) == [("fingerprints", "refused", rules.SERVER_KEPT),
                                                ("fingerprints", "taken", rules.VACANT_FILLED)]


def test_a_keypad_edit_of_a_user_the_server_deleted_is_refused_by_the_delete(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    db.run_now(delete_user, "u1", NOW_MS + 10)
    keypad(db, EventCode.UPDATE_SUCCESS, "u1")
    pull(db, UserRecord("u1", name="Ana"), NOW_MS + 30)
    assert decided(history(db)[-1]) == [("user", "noted", rules.SERVER_DELETED)]


def test_a_keypad_delete_is_noted_as_not_applied_on_the_event_and_in_the_history(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    keypad(db, EventCode.DELETE_SUCCESS, "u1")
    entry = history(db)[-1]
    assert decided(entry) == [("user", "noted", rules.TERMINAL_DELETE)] and entry["version"] is None
    detail = db.run_now(lambda c: c.execute(select(events.c.detail).where(events.c.type == "DELETE_SUCCESS")).scalar_one())
    assert rules.TERMINAL_DELETE in detail
    assert db.run_now(load_record, "u1").name == "Ana"


def test_a_keypad_change_in_a_mode_that_does_not_pull_is_noted_with_its_rule(db):
    keypad(db, EventCode.ENROLL_SUCCESS, "u9", pulled=False)
    assert decided(history(db, "u9")[-1]) == [("user", "noted", rules.NOT_PULLED)]


def test_an_event_that_is_no_keypad_change_writes_no_history(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    before = len(history(db))
    event = Event(1, NOW_MS, EventCode.UPDATE_SUCCESS, Origin.SERVER, "u1")  # a delivery the terminal applied
    db.run_now(_store, [_Submission(T, [event], pull_users=True)], [], NOW_MS)
    keypad(db, EventCode.UPDATE_SUCCESS, "u1", event_id=2)  # pulled: its merge tells
    assert len(history(db)) == before


# -- ZK devices: the same puller and merge, with what the device can hold -----------------------


def test_what_a_zk_device_cannot_hold_is_not_taken_for_an_edit(db):
    long_name = "Ana Maria Lima de Souza Ferreira"  # over the 24 bytes a ZK name holds
    db.run_now(create_user, UserRecord("u1", name=long_name, validity=(0, 99), cards=(SMART,)), NOW_MS)
    pulled = UserRecord("u1", name=long_name[:24], cards=(CSN,))  # as mapping.to_server gives it
    pull(db, pulled, holdable=lambda record: holdable_copy(record, ZK))
    assert sorted(decided(history(db)[-1])) == [("cards", "refused", rules.DEVICE_CANNOT_HOLD), ("cards", "taken", rules.CARD_ADDED),
                                                ("name", "refused", rules.DEVICE_CANNOT_HOLD),
                                                ("validity", "refused", rules.DEVICE_CANNOT_HOLD)]


def test_a_name_changed_at_a_zk_device_is_refused_as_the_servers(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    pull(db, UserRecord("u1", name="Bia"), holdable=lambda record: holdable_copy(record, ZK))
    assert decided(history(db)[-1]) == [("name", "refused", rules.SERVER_KEPT)]


# -- the API and reconciliation ----------------------------------------------------------------


def test_api_changes_are_versions_set_by_the_operator_with_old_and_new(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    db.run_now(edit_user, "u1", {"name": "Ana Lima", "cards": Members(add=(SMART,))}, NOW_MS + 1)
    db.run_now(delete_user, "u1", NOW_MS + 2)
    first, edit, gone = history(db)
    assert [e["version"] for e in (first, edit, gone)] == [1, 2, 3]
    assert {e["source"] for e in (first, edit, gone)} == {"api"}
    assert decided(first) == [("name", "set", rules.OPERATOR)]
    assert [(c["field"], c["old"], c["new"]) for c in edit["changes"]] == [("name", "Ana", "Ana Lima"), ("cards", None, "SMART_CARD 0a1b")]
    assert [(c["field"], c["new"]) for c in gone["changes"]] == [("user", "deleted")]


def test_a_pin_changed_through_the_api_is_a_change_though_both_show_as_set(db):
    db.run_now(create_user, UserRecord("u1", pin_hash=b"a" * 32), NOW_MS)
    db.run_now(edit_user, "u1", {"pin_hash": b"b" * 32}, NOW_MS + 1)
    assert [(c["field"], c["old"], c["new"]) for c in history(db)[-1]["changes"]] == [("pin_hash", "set", "set")]


def test_reconciliation_findings_are_noted_with_their_rules(db):
    rows = [noted(u, RECONCILIATION, rule, why, NOW_MS, T) for u, rule, why in
            (("u1", rules.TERMINAL_DELETE, DELETED_AT_KEYPAD), ("u2", rules.NOT_PULLED, CHANGED_AT_KEYPAD))]
    db.run_now(_record_findings, [], rows)
    assert [(e["source"], decided(e)) for e in history(db, "u1") + history(db, "u2")] == [
        (RECONCILIATION, [("user", "noted", rules.TERMINAL_DELETE)]), (RECONCILIATION, [("user", "noted", rules.NOT_PULLED)])]


def test_reconciliation_does_not_note_again_a_keypad_delete_the_event_log_noted(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    keypad(db, EventCode.DELETE_SUCCESS, "u1")
    db.run_now(_record_findings, [], [noted("u1", RECONCILIATION, rules.TERMINAL_DELETE, DELETED_AT_KEYPAD, NOW_MS, T)])
    assert [e["source"] for e in history(db)] == ["api", "terminal"]


# -- provenance and paging ----------------------------------------------------------------------


def test_provenance_names_who_gave_each_current_value(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    pull(db, UserRecord("u1", name="Anna", cards=(CSN,)), NOW_MS + 5)
    db.run_now(edit_user, "u1", {"cards": Members(add=(SMART,))}, NOW_MS + 9)
    given = {(g["field"], g["value"]): (g["source"], g["terminal_id"], g["at_ms"], g["rule"])
             for g in db.run_now(provenance, db.run_now(load_record, "u1"))}
    assert given == {("name", "Ana"): ("api", None, NOW_MS, rules.OPERATOR),
                     ("cards", "CSN 04a1b2c3"): ("terminal", T, NOW_MS + 5, rules.CARD_ADDED),
                     ("cards", "SMART_CARD 0a1b"): ("api", None, NOW_MS + 9, rules.OPERATOR)}


def test_a_value_older_than_the_history_says_so(db):
    db.run_now(create_user, UserRecord("u1", name="Ana"), NOW_MS)
    db.run_now(lambda c: c.execute(user_history.delete()))  # as a user stored before the history existed
    (given,) = db.run_now(provenance, db.run_now(load_record, "u1"))
    assert given["source"] is None and given["value"] == "Ana"


def test_history_pages_keep_counting_versions(db):
    db.run_now(create_user, UserRecord("u1", name="v0"), NOW_MS)
    for i in range(1, 5):
        db.run_now(edit_user, "u1", {"name": f"v{i}"}, NOW_MS + i)
    page, more = db.run_now(read_history, "u1", None, 2)
    rest, _ = db.run_now(read_history, "u1", page[-1]["id"], 10)
    assert more and [e["version"] for e in page + rest] == [1, 2, 3, 4, 5]
    assert db.run_now(lambda c: c.execute(select(func.count()).select_from(user_history)).scalar()) == 5


def test_a_new_users_event_names_it_in_a_few_words():
    from gateway.sync.changes import NEW_USER, TAKEN, record_changes, summary

    record = UserRecord("u1", name="Ana", pin_hash=b"p" * 32, cards=(CSN, SMART), fingerprints=(finger(0, b"a"),))
    assert summary(record_changes(None, record, TAKEN, NEW_USER)) == "new user, taken whole: name 'Ana', pin, 2 cards, 1 finger"
