"""Storage on real SQLite files and a real PostgreSQL server: schema, dedup, changes feed, merge."""

import re
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import bindparam, create_engine, event, func, inspect, select, update

from gateway.store.partitions import DAY_MS, DEFAULT, WEEK_IDS, make_weeks, week_of
from gateway.store.user_events import BY_USER
from gateway.store.database import COPY_FROM_ROWS, MIGRATIONS, Database, DatabaseFailure, execute_many, insert_ignoring_duplicates, insert_many, upsert
from gateway.store.order import keyed
from gateway.sync.eventlog import _store, _Submission, highest_event_id, last_stored_event_id, went_irregular
from gateway.sync.monitor import EVENT_CONFLICT, LOG_IRREGULAR, SAVED_FROM_DEVICE, record_sync_events, sync_event_row
from gateway.sync.puller import merge_pulled
from gateway.sync.pusher import advance_cursors, read_feed
from gateway.store.schema import events, metadata, pending_pulls, push_commands, settings, terminals
from gateway.sync.users import (
    UnknownUser,
    create_user,
    delete_user,
    edit_user,
    last_change_seq,
    load_record,
    republish_users,
    store_record,
)
from protocol.events import Event, EventCode, Origin
from protocol.records import Card, CardType, UserRecord

NOW_MS = 1_700_000_000_000


def enroll(event_id, user="u1", origin=Origin.DEVICE):
    return Event(event_id, 1000 + event_id, EventCode.ENROLL_SUCCESS, origin, user)


def schema_differences(engine) -> list:
    """What tells the migrated schema from the declared one, but for what PostgreSQL must differ in:
    a partitioned table's unique key holds its partition key (migration 0007), and the unique key's
    predicate, which alembic does not compare (``key_predicate``)."""
    declared = dict(include_name=lambda name, type_, _parents: type_ != "table" or not name.startswith(("events_w", DEFAULT, WEEK_IDS, BY_USER)))
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts=declared), metadata)
    if engine.dialect.name == "postgresql":
        key = [(d[0], [c.name for c in d[1].columns]) for d in differences if d[0] in ("add_index", "remove_index") and d[1].name == KEY]
        assert sorted(key) == [("add_index", list(IDENTITY)), ("remove_index", [*IDENTITY, "occurred_ms"])]
        differences = [d for d in differences if d[0] not in ("add_index", "remove_index") or d[1].name != KEY]
    return differences


KEY = "uq_events_terminal_log_event"
IDENTITY = ("terminal_id", "log_epoch", "terminal_event_id")


def key_predicate(engine) -> str | None:
    with engine.connect() as conn:
        key = next(i for i in inspect(conn).get_indexes("events") if i["name"] == KEY)
    where = key["dialect_options"].get(f"{engine.dialect.name}_where")
    return None if where is None else str(where).strip("()")


def test_migrations_match_the_declared_schema(db):
    assert schema_differences(db.engine) == []
    assert key_predicate(db.engine) == "terminal_event_id IS NOT NULL"


def key_entries(conn) -> int:
    """The entries the events table's unique key holds, as ANALYZE counts them: every row of a
    table this small is read, and a partial index's count is that of the rows it holds."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("ANALYZE events")
        key = f"idx = '{KEY}' OR idx LIKE 'sqlite_autoindex_events_%'"  # its name while it was a table constraint
        return int(conn.exec_driver_sql(f"SELECT stat FROM sqlite_stat1 WHERE {key}").scalar().split()[0])
    conn.exec_driver_sql("ANALYZE events")
    return int(conn.exec_driver_sql(f"SELECT sum(c.reltuples) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                    f" WHERE i.inhparent = '{KEY}'::regclass").scalar())


def terminal_event(event_id: int, at_ms: int) -> dict:
    return dict(terminal_id=7, terminal_event_id=event_id, log_epoch=0, type="ENROLL_SUCCESS", code=EventCode.ENROLL_SUCCESS,
                sub_code=Origin.DEVICE, user_id="u1", occurred_ms=at_ms, recorded_ms=at_ms, detail=None)


@pytest.mark.parametrize("copies", [1, COPY_FROM_ROWS], ids=["one statement", "copy"])
def test_the_unique_key_holds_a_terminals_events_once_and_no_monitoring_row(db, copies):
    """A resend is skipped by the key (VALUES and COPY alike), one with other content is kept as a
    conflict, every monitoring row is kept: none has an event id, and none is in the key."""
    db.run_now(_store, [_Submission(7, [enroll(1), enroll(2)], pull_users=True, log_epoch=0)], [], NOW_MS)
    db.run_now(_store, [_Submission(7, [enroll(2, user="other")], pull_users=True, log_epoch=0)], [], NOW_MS)  # kept as a conflict
    resent = terminal_event(1, enroll(1).timestamp_ms)
    monitoring = [sync_event_row(SAVED_FROM_DEVICE, 7, "u1", at_ms=NOW_MS)] * copies
    db.run_now(lambda c: insert_ignoring_duplicates(c, events, keyed(c, [resent] * copies + monitoring)))
    stored = db.run_now(lambda c: c.execute(select(events.c.terminal_event_id, events.c.type).order_by(events.c.id)).all())
    assert [tuple(r) for r in stored] == [(1, "ENROLL_SUCCESS"), (2, "ENROLL_SUCCESS"), (None, EVENT_CONFLICT)] + [(None, SAVED_FROM_DEVICE)] * copies
    assert db.run_now(key_entries) == 2


def plan_of(db, work, *args) -> str:
    """The database's plan for the one statement ``work`` runs (PostgreSQL: as if its tables were big)."""
    ran = []

    def note(_conn, _cursor, statement, parameters, _context, _many):
        ran.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        db.run_now(work, *args)
    finally:
        event.remove(db.engine, "before_cursor_execute", note)
    [(statement, parameters)] = ran

    def explain(conn) -> str:
        if conn.dialect.name == "sqlite":
            return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return "\n".join(conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars())

    return db.run_now(explain)


def test_a_logs_highest_event_id_is_read_from_the_unique_key(db):
    """Not from every row of the terminal: a connecting terminal's log is opened with it."""
    db.run_now(_store, [_Submission(7, [enroll(1), enroll(2)], pull_users=True, log_epoch=0)], [], NOW_MS)
    db.run_now(record_sync_events, [sync_event_row(SAVED_FROM_DEVICE, 7, "u1", at_ms=NOW_MS)])
    assert db.run_now(highest_event_id, 7, 0) == 2
    plan = plan_of(db, highest_event_id, 7, 0)
    assert KEY in plan or "terminal_id_log_epoch_terminal_event_id" in plan, plan  # PostgreSQL names each partition's own


def test_a_logs_irregularities_are_read_from_an_index_of_their_own_not_from_every_row_of_the_terminal(db):
    """Each connect asks whether the log went irregular: the answer comes from the few rows of that
    type, not from a walk over the terminal's whole log."""
    db.run_now(_store, [_Submission(7, [enroll(1), enroll(2)], pull_users=True, log_epoch=0)], [], NOW_MS)
    assert not db.run_now(went_irregular, 7, 0)
    db.run_now(record_sync_events, [sync_event_row(LOG_IRREGULAR, 7, "", at_ms=NOW_MS, log_epoch=0)])
    assert db.run_now(went_irregular, 7, 0)
    assert not db.run_now(went_irregular, 8, 0) and not db.run_now(went_irregular, 7, 1)
    plan = plan_of(db, went_irregular, 7, 0)
    used = re.findall(r"(?:USING (?:COVERING )?INDEX|using) (\S+)", plan)  # SQLite's words, PostgreSQL's
    assert used and all(index == "ix_events_irregular" or index.endswith("_terminal_id_log_epoch_idx") for index in used), plan


def test_a_site_at_migration_0015_keeps_every_event_and_gets_the_key_without_monitoring_rows(db_url):
    """The upgrade rebuilds the key (SQLite: the table) with the site's rows in it: every row stays,
    the schema is a fresh one's, the key still refuses a resend, and on PostgreSQL every partition,
    those made later too, holds it."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0015_pg_event_weeks_listed")
    now_ms = int(time.time() * 1000)
    rows = [terminal_event(n, at_ms) for n, at_ms in enumerate((now_ms, now_ms, NOW_MS, NOW_MS), 1)]  # PostgreSQL: this week's partition, the default
    rows += [sync_event_row(SAVED_FROM_DEVICE, 7, "u1", at_ms=at_ms) for at_ms in (now_ms, NOW_MS) for _ in range(3)]
    with engine.begin() as conn:
        conn.execute(events.insert(), [row | dict(id=n) for n, row in enumerate(rows, 1)])
        before = conn.execute(select(events).order_by(events.c.id)).all()
    engine.dispose()
    db = Database(db_url, reactor=None)
    db.open()
    try:
        assert db.run_now(lambda c: c.execute(select(events).order_by(events.c.id)).all()) == before
        assert schema_differences(db.engine) == []
        assert key_predicate(db.engine) == "terminal_event_id IS NOT NULL"
        assert db.run_now(key_entries) == 4
        db.run_now(lambda c: insert_ignoring_duplicates(c, events, keyed(c, rows[:1])))
        with pytest.raises(DatabaseFailure, match="(?i)unique"):
            db.run_now(lambda c: insert_many(c, events, keyed(c, rows[:1])))
        assert db.run_now(lambda c: c.execute(select(func.count()).select_from(events)).scalar()) == len(before)
        if db.engine.dialect.name == "postgresql":
            later = week_of(now_ms + 30 * DAY_MS)
            db.run_now(make_weeks, later.start_ms, 0)
            keys = db.run_now(lambda c: dict(c.exec_driver_sql(
                f"SELECT c.relname, pg_get_indexdef(i.inhrelid) FROM pg_inherits i JOIN pg_class c ON c.oid = (SELECT indrelid FROM pg_index"
                f" WHERE indexrelid = i.inhrelid) WHERE i.inhparent = '{KEY}'::regclass").all()))
            partitions = db.run_now(lambda c: set(c.exec_driver_sql(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'events'::regclass").scalars()))
            assert set(keys) == partitions and later.name in partitions
            assert all("WHERE (terminal_event_id IS NOT NULL)" in key for key in keys.values())
    finally:
        db.engine.dispose()



def test_migrations_0016_and_0017_go_back_to_0015_with_every_event(db_url):
    """A site that must return to the previous version: the downgrade keeps every row and gives
    back the key with the monitoring rows in it (SQLite: the table constraint), and the upgrade
    after it ends where a fresh database does."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    db = Database(db_url, reactor=None)
    db.open()
    rows = [terminal_event(1, NOW_MS), sync_event_row(SAVED_FROM_DEVICE, 7, "u1", at_ms=NOW_MS)]
    db.run_now(lambda c: insert_many(c, events, keyed(c, rows)))
    before = db.run_now(lambda c: c.execute(select(events).order_by(events.c.id)).all())
    try:
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0015_pg_event_weeks_listed")
        with db.engine.connect() as conn:
            assert KEY in [u["name"] for u in inspect(conn).get_unique_constraints("events")]  # a constraint again
        assert db.run_now(lambda c: c.execute(select(events).order_by(events.c.id)).all()) == before
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        assert schema_differences(db.engine) == [] and key_predicate(db.engine) == "terminal_event_id IS NOT NULL"
        assert db.run_now(lambda c: c.execute(select(events).order_by(events.c.id)).all()) == before
    finally:
        db.engine.dispose()

def test_events_are_stored_once_however_often_they_are_resent(db):
    batch = [_Submission(7, [enroll(1), enroll(2)], pull_users=True)]
    db.run_now(_store, batch, [], NOW_MS)
    db.run_now(_store, [_Submission(7, [enroll(2), enroll(3)], pull_users=True)], [], NOW_MS)
    count = db.run_now(lambda c: c.execute(select(func.count()).select_from(events)).scalar())
    assert count == 3
    assert db.run_now(last_stored_event_id, 7) == 3
    assert db.run_now(last_stored_event_id, 8) == 0
    owed = db.run_now(lambda c: c.execute(select(pending_pulls.c.user_id)).scalars().all())
    assert owed == ["u1"]


def test_server_origin_events_owe_no_pull(db):
    db.run_now(_store, [_Submission(7, [enroll(1, origin=Origin.SERVER)], pull_users=True)], [], NOW_MS)
    assert db.run_now(lambda c: c.execute(select(func.count()).select_from(pending_pulls)).scalar()) == 0


def test_every_change_takes_the_next_sequence_value(db):
    a = db.run_now(store_record, UserRecord("a", name="A"), NOW_MS)
    b = db.run_now(store_record, UserRecord("b", name="B"), NOW_MS)
    a2 = db.run_now(store_record, UserRecord("a", name="A2"), NOW_MS)
    assert a < b < a2
    feed = db.run_now(read_feed, 0, 10)
    assert [(e.user_id, e.change_seq) for e in feed] == [("b", b), ("a", a2)]


def test_republishing_puts_every_live_user_after_every_cursor_in_the_same_order(db):
    for user_id in ("a", "b", "c"):
        db.run_now(store_record, UserRecord(user_id, name=user_id.upper()), NOW_MS)
    db.run_now(delete_user, "b", NOW_MS)
    cursor = db.run_now(last_change_seq)
    assert db.run_now(republish_users) == 2
    feed = db.run_now(read_feed, cursor, 10)
    assert [e.user_id for e in feed] == ["a", "c"]
    assert db.run_now(last_change_seq) == feed[-1].change_seq
    assert db.run_now(store_record, UserRecord("d"), NOW_MS) > feed[-1].change_seq  # dense on SQLite only


def test_server_side_edit_and_delete_go_through_the_feed(db):
    db.run_now(create_user, UserRecord("u1", name="Ana", access_groups=(3,)), NOW_MS)
    db.run_now(edit_user, "u1", {"name": "Ana B"}, NOW_MS)
    assert db.run_now(load_record, "u1").name == "Ana B"
    db.run_now(delete_user, "u1", NOW_MS)
    assert db.run_now(load_record, "u1") is None
    (entry,) = db.run_now(read_feed, 0, 10)
    assert entry.record is None and entry.access_groups == {3}
    with pytest.raises(UnknownUser):
        db.run_now(delete_user, "u1", NOW_MS)


def test_merge_keeps_server_fields_and_settles_the_pull(db):
    db.run_now(create_user, UserRecord("u1", name="Server", cards=(Card(CardType.CSN, b"\x01"),)), NOW_MS)
    db.run_now(_store, [_Submission(5, [enroll(1)], pull_users=True)], [], NOW_MS)
    pulled = UserRecord("u1", name="Terminal", cards=(Card(CardType.SMART_CARD, b"\x02"),))
    assert db.run_now(merge_pulled, 5, [pulled], [], 2**62, NOW_MS).saved == ["u1"]
    merged = db.run_now(load_record, "u1")
    assert merged.name == "Server"
    assert {c.type for c in merged.cards} == {CardType.CSN, CardType.SMART_CARD}
    assert db.run_now(lambda c: c.execute(select(func.count()).select_from(pending_pulls)).scalar()) == 0
    types = db.run_now(lambda c: c.execute(select(events.c.type)).scalars().all())
    assert SAVED_FROM_DEVICE in types


def test_a_pull_asked_for_again_after_it_started_stays_owed(db):
    db.run_now(_store, [_Submission(5, [enroll(1)], pull_users=True)], [], NOW_MS)
    db.run_now(merge_pulled, 5, [UserRecord("u1", name="x")], [], 0, NOW_MS)
    assert db.run_now(lambda c: c.execute(select(func.count()).select_from(pending_pulls)).scalar()) == 1


def test_merge_that_changes_nothing_for_the_terminal_marks_it_as_holder(db):
    rec = UserRecord("u1", name="Ana")
    db.run_now(merge_pulled, 5, [rec], [], 2**62, NOW_MS)
    (entry,) = db.run_now(read_feed, 0, 10)
    assert entry.holder_terminal == 5


def test_cursor_only_moves_forward(db):
    db.run_now(lambda c: c.execute(terminals.insert().values(
        terminal_id=1, name="", admission="admitted", access_groups="", model="", firmware="", link="", cursor=0)))
    db.run_now(advance_cursors, [(1, 10, [])])
    db.run_now(advance_cursors, [(1, 5, []), (1, 7, [])])
    assert db.run_now(lambda c: c.execute(select(terminals.c.cursor)).scalar()) == 10


def test_one_commit_moves_each_terminals_cursor_to_its_own_highest(db):
    db.run_now(lambda c: c.execute(terminals.insert(), [
        dict(terminal_id=t, name="", admission="admitted", access_groups="", model="", firmware="", link="", cursor=0) for t in (1, 2, 3)]))
    db.run_now(advance_cursors, [(2, 50, [])])
    db.run_now(advance_cursors, [(1, 2**60, []), (2, 40, []), (1, 7, []), (3, 9, []), (2, 60, [])])
    cursors = db.run_now(lambda c: dict(c.execute(select(terminals.c.terminal_id, terminals.c.cursor)).all()))
    assert cursors == {1: 2**60, 2: 60, 3: 9}


_RENAME = update(settings).where(settings.c.key == bindparam("old"), settings.c.value != bindparam("new")).values(value=bindparam("new"))


def test_a_statement_run_with_many_parameter_sets_names_a_parameter_twice_and_in_any_order(db):
    """execute_many gives SQLite's driver tuples in the compiled statement's order, a bind named twice twice."""
    db.run_now(insert_many, settings, [dict(key=k, value="-") for k in "abc"])
    db.run_now(execute_many, _RENAME, [dict(new="1", old="a"), dict(old="c", new="3")])
    db.run_now(execute_many, _RENAME, [])
    assert db.run_now(lambda c: dict(c.execute(select(settings.c.key, settings.c.value)).all())) == dict(a="1", b="-", c="3")


def test_a_failed_transaction_is_reported_and_writes_nothing(db):
    def half_then_fail(conn):
        store_record(conn, UserRecord("half", name="x"), NOW_MS)
        conn.execute(select(func.no_such_function()))

    with pytest.raises(DatabaseFailure):
        db.run_now(half_then_fail)
    assert db.run_now(load_record, "half") is None


def test_a_batch_insert_that_breaks_a_key_fails_as_a_database_failure_and_stores_nothing(db):
    with pytest.raises(DatabaseFailure, match="(?i)unique"):
        db.run_now(insert_many, settings, [dict(key="k", value="1"), dict(key="k", value="2")])
    assert db.run_now(lambda c: c.execute(select(func.count()).select_from(settings)).scalar()) == 0


AWKWARD_TEXT = ["tab\there", "two\nlines\r\n", "back\\slash \\N \\t", "", "\\", "Zoë 李 😀"]


@pytest.mark.parametrize("copies", [1, COPY_FROM_ROWS], ids=["one statement", "copy"])
def test_a_batch_insert_stores_any_text_as_written_and_none_as_null(db, copies):
    texts = AWKWARD_TEXT * copies
    rows = [dict(terminal_id=None, terminal_event_id=None, log_epoch=0, type="t", code=None, sub_code=EventCode.ENROLL_SUCCESS,
                 user_id=None if i == 3 else text, occurred_ms=NOW_MS, recorded_ms=NOW_MS, detail=text) for i, text in enumerate(texts)]
    db.run_now(lambda c: insert_many(c, events, keyed(c, rows)))
    stored = db.run_now(lambda c: c.execute(select(events.c.detail, events.c.user_id, events.c.sub_code, events.c.code).order_by(events.c.id)).all())
    assert [tuple(r) for r in stored] == [(text, None if i == 3 else text, EventCode.ENROLL_SUCCESS, None) for i, text in enumerate(texts)]


@pytest.mark.parametrize("padding", [0, COPY_FROM_ROWS], ids=["one statement", "copy"])
def test_inserts_ignoring_duplicates_twice_in_one_transaction_and_after_a_rolled_back_one(db, padding):
    def pulls(users, call):
        return [dict(terminal_id=1, user_id=u, since_ms=NOW_MS) for u in users + [f"pad-{call}-{i}" for i in range(padding)]]

    def rolled_back_then_twice(conn):
        with pytest.raises(ZeroDivisionError), conn.begin_nested():
            insert_ignoring_duplicates(conn, pending_pulls, pulls(["gone"], 1))
            raise ZeroDivisionError
        insert_ignoring_duplicates(conn, pending_pulls, pulls(["a", "b"], 2))
        insert_ignoring_duplicates(conn, pending_pulls, pulls(["b", "c"], 3))

    db.run_now(rolled_back_then_twice)
    db.run_now(insert_ignoring_duplicates, pending_pulls, pulls(["c", "d"], 4))
    users = db.run_now(lambda c: c.execute(select(pending_pulls.c.user_id).where(pending_pulls.c.user_id.not_like("pad-%"))).scalars().all())
    assert sorted(users) == list("abcd")
    assert db.run_now(lambda c: c.execute(select(func.count()).select_from(pending_pulls)).scalar()) == 4 + 3 * padding


def test_an_upsert_batch_naming_one_key_twice_keeps_the_last(db):
    db.run_now(upsert, settings, [dict(key="k", value="1"), dict(key="k", value="2")], ["key"], ["value"])
    assert db.run_now(lambda c: c.execute(select(settings.c.value)).scalars().all()) == ["2"]


def test_a_batch_of_rows_with_bytes_and_nulls_is_stored_as_given_whatever_the_path(db):
    """On PostgreSQL a batch this big goes by COPY, whose text format must carry bytes (bytea's
    hex form), NULLs and text with tabs and backslashes exactly."""
    rows = [dict(terminal_id=7, command_id=n, queued_ms=NOW_MS + n, text=f"C:{n}:DATA UPDATE USERINFO PIN={n}\tName=A\\B",
                 group_id=n // 2, user_id=str(n), action="update", digest=bytes([n % 256, 0, 92, 9]), written=None if n % 2 else b"")
            for n in range(COPY_FROM_ROWS + 6)]
    db.run_now(insert_many, push_commands, rows)
    stored = db.run_now(lambda conn: [dict(r) for r in conn.execute(select(push_commands).order_by(push_commands.c.command_id)).mappings()])
    assert [{k: (bytes(v) if isinstance(v, memoryview) else v) for k, v in row.items()} for row in stored] == rows
