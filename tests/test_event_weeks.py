"""The API's event pages on a real PostgreSQL server whose events lie in many week partitions,
some closed (gateway/store/partitions.py, "Closed weeks"): the same rows in the same order as
every stored event filtered and paged by id, late events in closed weeks and the default
partition included; and a newest page opens only the open weeks."""

import time

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, select

from gateway.http import queries
from gateway.http.queries import EVERYTHING, EventFilter, _by_week, _event, read_events
from gateway.store.database import COPY_FROM_ROWS, MIGRATIONS, Database, insert_ignoring_duplicates
from gateway.store.order import keyed
from gateway.store.partitions import DEFAULT, WEEK_IDS, WEEK_MS, close_weeks, make_weeks, week_ids, week_of
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


def test_a_users_page_from_the_copy_and_the_open_weeks_holds_what_the_week_partitions_hold_row_for_row(spread):
    """A user's page, from the copy of the closed weeks' events naming a user
    (gateway/store/user_events.py) and the open weeks, against the weeks themselves (``_by_week``,
    how every other page is read): the same rows, every column, in the same order, for each user
    filter, limit and cursor, before and after every week is closed; late events in closed weeks
    included, a resend that ON CONFLICT skips in neither, an event of no user in neither page,
    and a row a week made later took out of the closed default partition read once."""
    logged = [dict(sync_event_row(APPLIED_BY_DEVICE, 9, "u3", "a terminal's log", at_ms=NOW_MS - 5 * WEEK_MS + n), terminal_event_id=n + 1)
              for n in range(COPY_FROM_ROWS + 2)]
    for resent in (logged, logged, logged[:3]):  # stored late in a closed week, then resent by COPY and by VALUES: skipped, under new ids
        spread.run_now(lambda conn: insert_ignoring_duplicates(conn, events, keyed(conn, [dict(row) for row in resent])))
    store(spread, NOW_MS, 3, "this week, after the resends")
    spread.run_now(record_sync_events, [sync_event_row(SAVED_FROM_DEVICE, 1, None, "no user", at_ms=NOW_MS)])
    store(spread, NOW_MS + 30 * WEEK_MS, 5, "a clock ahead: the closed default partition, then a week made for it")
    spread.run_now(make_weeks, NOW_MS + 30 * WEEK_MS, 0)
    ids = spread.run_now(lambda conn: list(conn.execute(select(events.c.id).order_by(events.c.id)).scalars()))
    for closed_up_to in (NOW_MS, NOW_MS + 40 * WEEK_MS):  # as the fixture left them, then every week closed
        spread.run_now(close_weeks, closed_up_to)
        for flt in [EventFilter(user_id="u3"), EventFilter(user_id="u1", types=(SAVED_FROM_DEVICE,)), EventFilter(user_id="u2", terminal_id=2),
                    EventFilter(user_id="u4", since_ms=THIS_WEEK.start_ms - 3 * WEEK_MS), EventFilter(user_id="nobody")]:
            for limit in (1, 5, 30, 1000):
                for after, before in [(None, None), (ids[len(ids) // 2], None), (None, ids[-3]), (None, ids[20]), (ids[0], None)]:
                    from_copy, more = spread.run_now(read_events, flt, after, before, limit)
                    from_weeks = spread.run_now(_by_week, flt, after, before, limit)
                    assert from_copy == [_event(row) for row in from_weeks[:limit]] and more == (len(from_weeks) > limit), (flt, after, before, limit)
                    assert [e["id"] for e in from_copy] == expected(spread, flt, after, before, limit)[0]


def test_a_users_page_reads_the_copy_and_the_open_weeks_and_no_closed_week(spread):
    """However many closed weeks hold a user's events, the page is one statement: one index range
    of the copy beside the open weeks."""
    pages, plan = plans_of_page(spread, EventFilter(user_id="u3"), None, None, 10)
    open_weeks = {week_of(NOW_MS + WEEK_MS).name, THIS_WEEK.name, week_of(NOW_MS - WEEK_MS).name}
    assert pages == 1 and BY_USER in plan and opened_weeks(plan) == open_weeks and DEFAULT not in plan, plan


def test_a_week_closed_between_two_pages_or_within_one_read_is_read_once(spread, monkeypatch):
    """Last week closed (its events copied) after a first page, and after a read's figures were
    taken but before its rows were: paging on, and that read, hold each event once."""
    u3 = EventFilter(user_id="u3")
    every, _ = expected(spread, u3, None, None, 1000)
    first, more = page(spread, u3, None, None, 4)
    figures_before_the_close = spread.run_now(week_ids)
    assert week_of(NOW_MS - WEEK_MS).name in spread.run_now(close_weeks, NOW_MS + WEEK_MS)
    rest, _ = page(spread, u3, None, first[-1], 1000)
    assert more and first + rest == every
    monkeypatch.setattr(queries, "week_ids", lambda conn: figures_before_the_close)
    assert page(spread, u3, None, None, 1000) == (every, False)


def test_migration_0014_copies_the_closed_weeks_events_naming_a_user_and_their_trigger_every_late_one(postgres):
    """A site upgraded from 0013 with its default partition closed: the events of a user stored
    there are in the copy at once, those of the open week are not; an event stored since in the
    closed partition is copied as it is stored, by VALUES or by COPY, one in an open week is not;
    and the way back to 0013 and up again keeps them."""
    url = postgres.new_database()
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def migrate_to(revision, way=command.upgrade):
        engine = create_engine(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            way(cfg, revision)
        engine.dispose()

    def copy_and_closed_events(conn):
        copied = conn.exec_driver_sql(f"SELECT * FROM {BY_USER} ORDER BY id").mappings().all()
        return copied, conn.exec_driver_sql(f"SELECT * FROM {DEFAULT} WHERE user_id IS NOT NULL ORDER BY id").mappings().all()

    def one_each(conn, tag):
        record_sync_events(conn, [sync_event_row(SAVED_FROM_DEVICE, 1, u, tag, at_ms=at) for u, at in
                                  [("now", int(time.time() * 1000)), ("far off", NOW_MS - 300 * WEEK_MS), (None, NOW_MS - 300 * WEEK_MS)]])

    migrate_to("0013_process_reports")
    engine = create_engine(url)
    with engine.begin() as conn:
        one_each(conn, "before the close")
        conn.exec_driver_sql(f"CREATE TRIGGER {DEFAULT}_ids AFTER INSERT ON {DEFAULT} FOR EACH ROW EXECUTE FUNCTION event_week_inserted()")
        conn.exec_driver_sql(f"INSERT INTO {WEEK_IDS} (name, max_id, users_kept) SELECT '{DEFAULT}', max(id), true FROM {DEFAULT}")
    with engine.begin() as conn:
        one_each(conn, "late, before the migration")
    engine.dispose()
    db = Database(url, reactor=None)
    db.open()  # to the newest
    try:
        copied, named = db.run_now(copy_and_closed_events)
        assert [row["user_id"] for row in copied] == ["far off", "far off"] and copied == named
        db.run_now(one_each, "late, after the migration")
        store(db, NOW_MS - 300 * WEEK_MS, COPY_FROM_ROWS + 1, "late, after the migration, by COPY")
        copied, named = db.run_now(copy_and_closed_events)
        assert len(copied) == COPY_FROM_ROWS + 4 and copied == named
        migrate_to("0013_process_reports", command.downgrade)
        migrate_to("head")
        copied, named = db.run_now(copy_and_closed_events)
        assert len(copied) == COPY_FROM_ROWS + 4 and copied == named and "now" not in [row["user_id"] for row in copied]
    finally:
        db.engine.dispose()
