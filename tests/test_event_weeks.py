"""The API's event pages on a real PostgreSQL server whose events lie in many week partitions,
some closed (gateway/store/partitions.py, "Closed weeks"): the same rows in the same order as
every stored event filtered and paged by id, late events in closed weeks and the default
partition included; and a newest page opens only the open weeks."""

import time

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, select

from gateway.http.queries import EVERYTHING, EventFilter, _by_week, _event, read_events
from gateway.store.database import COPY_FROM_ROWS, MIGRATIONS, Database, insert_ignoring_duplicates
from gateway.store.order import keyed
from gateway.store.partitions import DEFAULT, WEEK_MS, close_weeks, make_weeks, week_of
from gateway.store.schema import events
from gateway.store.user_events import BY_USER
from gateway.sync.monitor import APPLIED_BY_DEVICE, SAVED_FROM_DEVICE, record_sync_events, sync_event_row

NOW_MS = 1_700_000_000_000
THIS_WEEK = week_of(NOW_MS)
FILTERS = [EVERYTHING, EventFilter(types=(SAVED_FROM_DEVICE,)), EventFilter(terminal_id=2), EventFilter(user_id="u3"),
           EventFilter(since_ms=THIS_WEEK.start_ms - 3 * WEEK_MS)]


def store(db, at_ms: int, n: int, tag: str) -> None:
    rows = [sync_event_row(SAVED_FROM_DEVICE if i % 3 == 0 else APPLIED_BY_DEVICE, i % 4, f"u{i % 5}", tag, at_ms=at_ms + i)
            for i in range(n)]
    db.run_now(record_sync_events, rows)


def expected(db, flt, after, before, limit) -> tuple[list[int], bool]:
    """The page read_events owes, worked out from every stored event."""
    every = db.run_now(lambda conn: conn.execute(select(events).order_by(events.c.id)).mappings().all())
    ids = [e["id"] for e in every if flt.matches(e) and (after is None or e["id"] > after) and (before is None or e["id"] < before)]
    page = ids if after is not None else ids[::-1]
    return page[:limit], len(page) > limit


def page(db, flt, after, before, limit) -> tuple[list[int], bool]:
    found, more = db.run_now(read_events, flt, after, before, limit)
    return [e["id"] for e in found], more


@pytest.fixture
def spread(pg):
    """Ten weeks of events, then all but the last two closed, then late events in closed weeks."""
    make_weeks_from = week_of(NOW_MS - 9 * WEEK_MS)
    pg.run_now(make_weeks, make_weeks_from.start_ms, 11)
    store(pg, NOW_MS - 100 * WEEK_MS, 4, "older than every week: default partition")
    for n in range(9, -1, -1):
        store(pg, NOW_MS - n * WEEK_MS, 12, f"week -{n}")
    assert DEFAULT in pg.run_now(close_weeks, NOW_MS)
    store(pg, NOW_MS - 6 * WEEK_MS, COPY_FROM_ROWS + 5, "late, in a closed week, enough to go by COPY (its week's trigger fires)")
    store(pg, NOW_MS, 3, "this week")
    store(pg, NOW_MS - 200 * WEEK_MS, 2, "late, in the closed default partition")
    store(pg, NOW_MS - 8 * WEEK_MS, 1, "late, in a closed week, the newest event")
    return pg


def test_every_page_holds_what_the_whole_log_says_late_events_in_closed_weeks_included(spread):
    ids = spread.run_now(lambda conn: list(conn.execute(select(events.c.id).order_by(events.c.id)).scalars()))
    for flt in FILTERS:
        for limit in (1, 5, 30, 1000):
            for after, before in [(None, None), (ids[len(ids) // 2], None), (ids[-10], None), (None, ids[-3]), (None, ids[20]), (ids[0], None)]:
                assert page(spread, flt, after, before, limit) == expected(spread, flt, after, before, limit), (flt, after, before, limit)


def test_paging_back_and_following_visit_every_event_once(spread):
    every = spread.run_now(lambda conn: list(conn.execute(select(events.c.id).order_by(events.c.id)).scalars()))
    back, before, more = [], None, True
    while more:
        found, more = page(spread, EVERYTHING, None, before, 7)
        back += found
        before = found[-1] if found else None
    forward, after, more = [], 0, True
    while more:
        found, more = page(spread, EVERYTHING, after, None, 7)
        forward += found
        after = found[-1]
    assert back == every[::-1] and forward == every


def plans_of_page(db, flt, after, before, limit) -> tuple[int, str]:
    """How many statements a page read rows with, and the database's plans of them together."""
    asked = []
    listen = lambda conn, cursor, statement, parameters, context, many: asked.append((statement, parameters))
    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        page(db, flt, after, before, limit)
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)
    pages = [(s, p) for s, p in asked if "ORDER BY" in s]
    return len(pages), "\n".join("\n".join(db.run_now(lambda conn: list(conn.exec_driver_sql("EXPLAIN " + s, p).scalars())))
                                 for s, p in pages)


def opened_weeks(plan: str) -> set[str]:
    """The weekly partitions a plan names, of the weeks around NOW_MS."""
    return {w for w in ("events_w%d" % (NOW_MS // WEEK_MS - n) for n in range(-1, 10)) if w in plan}


def test_a_newest_page_and_a_follower_open_only_the_open_weeks(spread):
    """Once the newest events are newer than the late ones, the head of the log and a follower of
    it are read from the open weeks (this one, the last, and the next made ahead): their plans
    list no other partition."""
    store(spread, NOW_MS, 3, "this week, after the late events")
    newest, more = page(spread, EVERYTHING, None, None, 2)
    assert more
    for after, before in [(None, None), (newest[-1] - 2, None)]:
        pages, plan = plans_of_page(spread, EVERYTHING, after, before, 2)
        assert pages == 1
        open_weeks = {week_of(NOW_MS + WEEK_MS).name, THIS_WEEK.name, week_of(NOW_MS - WEEK_MS).name}  # next week's made ahead
        assert opened_weeks(plan) == open_weeks and DEFAULT not in plan, plan


def test_a_users_page_from_the_copy_holds_what_the_week_partitions_hold_row_for_row_resends_skipped(spread):
    """The copy of the events naming a user (gateway/store/user_events.py) against the weeks
    themselves (``_by_week``, how every other page is read): the same rows, every column, in the
    same order, for each user filter, limit and cursor; a resend that ON CONFLICT skips is in
    neither, an event of no user in neither page."""
    logged = [dict(sync_event_row(APPLIED_BY_DEVICE, 9, "u3", "a terminal's log", at_ms=NOW_MS - 5 * WEEK_MS + n), terminal_event_id=n + 1)
              for n in range(COPY_FROM_ROWS + 2)]
    for resent in (logged, logged, logged[:3]):  # stored, then resent by COPY and by VALUES: skipped, under new ids
        spread.run_now(lambda conn: insert_ignoring_duplicates(conn, events, keyed(conn, [dict(row) for row in resent])))
    store(spread, NOW_MS, 3, "this week, after the resends")
    spread.run_now(record_sync_events, [sync_event_row(SAVED_FROM_DEVICE, 1, None, "no user", at_ms=NOW_MS)])
    ids = spread.run_now(lambda conn: list(conn.execute(select(events.c.id).order_by(events.c.id)).scalars()))
    for flt in [EventFilter(user_id="u3"), EventFilter(user_id="u1", types=(SAVED_FROM_DEVICE,)), EventFilter(user_id="u2", terminal_id=2),
                EventFilter(user_id="u4", since_ms=THIS_WEEK.start_ms - 3 * WEEK_MS), EventFilter(user_id="nobody")]:
        for limit in (1, 5, 30, 1000):
            for after, before in [(None, None), (ids[len(ids) // 2], None), (None, ids[-3]), (None, ids[20]), (ids[0], None)]:
                from_copy, more = spread.run_now(read_events, flt, after, before, limit)
                from_weeks = spread.run_now(_by_week, flt, after, before, limit)
                assert from_copy == [_event(row) for row in from_weeks[:limit]] and more == (len(from_weeks) > limit), (flt, after, before, limit)
                assert [e["id"] for e in from_copy] == expected(spread, flt, after, before, limit)[0]


def test_a_users_page_reads_the_copy_and_no_week(spread):
    """However many weeks hold a user's events, the page is one read of one index range."""
    pages, plan = plans_of_page(spread, EventFilter(user_id="u3"), None, None, 10)
    assert pages == 1 and BY_USER in plan and not opened_weeks(plan) and DEFAULT not in plan, plan


def test_migration_0014_copies_every_stored_event_naming_a_user_and_the_trigger_every_later_one(postgres):
    """A site upgraded from 0013: its events of a user are in the copy at once, in this week and
    in the default partition; events stored since are copied as they are stored; and the way back
    to 0013 and up again keeps them."""
    url = postgres.new_database()
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def migrate_to(revision, way=command.upgrade):
        engine = create_engine(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            way(cfg, revision)
        engine.dispose()

    def copy_and_events(conn):
        copied = conn.exec_driver_sql(f"SELECT * FROM {BY_USER} ORDER BY id").mappings().all()
        return copied, conn.execute(select(events).where(events.c.user_id.is_not(None)).order_by(events.c.id)).mappings().all()

    migrate_to("0013_process_reports")
    engine = create_engine(url)
    with engine.begin() as conn:
        record_sync_events(conn, [sync_event_row(SAVED_FROM_DEVICE, 1, u, at_ms=at) for u, at in
                                  [("now", int(time.time() * 1000)), ("far off", NOW_MS - 300 * WEEK_MS), (None, NOW_MS)]])
    engine.dispose()
    db = Database(url, reactor=None)
    db.open()  # to the newest
    try:
        copied, named = db.run_now(copy_and_events)
        assert [row["user_id"] for row in copied] == ["now", "far off"] and copied == named
        store(db, NOW_MS, COPY_FROM_ROWS + 1, "after the migration")
        migrate_to("0013_process_reports", command.downgrade)
        migrate_to("head")
        copied, named = db.run_now(copy_and_events)
        assert len(copied) == COPY_FROM_ROWS + 3 and copied == named
    finally:
        db.engine.dispose()
