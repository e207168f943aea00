"""The API's event pages on a real PostgreSQL server whose events lie in many week partitions,
some closed (gateway/store/partitions.py, "Closed weeks"): the same rows in the same order as
every stored event filtered and paged by id, late events in closed weeks and the default
partition included; and a newest page opens only the open weeks."""

import pytest
from sqlalchemy import event, select

from gateway.http.queries import EVERYTHING, EventFilter, read_events
from gateway.store.database import COPY_FROM_ROWS
from gateway.store.partitions import DEFAULT, WEEK_IDS, WEEK_MS, WEEK_USERS, close_weeks, make_weeks, week_of
from gateway.store.schema import events
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


def test_a_users_page_opens_only_the_weeks_that_hold_that_user_a_late_event_included(spread):
    """A user with an event in a week closed later, and a late one in a week closed already: the
    page holds both and its plan lists those two weeks and the open ones, no other."""
    def one_event(conn, at_ms, tag):
        record_sync_events(conn, [sync_event_row(SAVED_FROM_DEVICE, 1, "solo", tag, at_ms=at_ms)])

    a_week_on = NOW_MS + WEEK_MS
    spread.run_now(one_event, NOW_MS - WEEK_MS, "in an open week, closed a week on")
    assert week_of(NOW_MS - WEEK_MS).name in spread.run_now(close_weeks, a_week_on)
    spread.run_now(one_event, NOW_MS - 4 * WEEK_MS, "late, in a closed week")
    solo = EventFilter(user_id="solo")
    assert page(spread, solo, None, None, 10) == expected(spread, solo, None, None, 10)
    assert len(page(spread, solo, None, None, 10)[0]) == 2
    _, plans = plans_of_page(spread, solo, None, None, 10)
    assert opened_weeks(plans) == {week_of(a_week_on).name, THIS_WEEK.name, week_of(NOW_MS - WEEK_MS).name,
                                   week_of(NOW_MS - 4 * WEEK_MS).name} and DEFAULT not in plans, plans


def test_a_week_closed_without_its_users_by_an_older_version_is_read_for_everyone_until_the_next_close_fills_it(spread):
    def one_event(conn):
        record_sync_events(conn, [sync_event_row(SAVED_FROM_DEVICE, 1, "solo", "in a closed week", at_ms=NOW_MS - 5 * WEEK_MS)])

    def as_an_older_version_closed_it(conn):
        name = week_of(NOW_MS - 5 * WEEK_MS).name
        conn.exec_driver_sql(f"DELETE FROM {WEEK_USERS} WHERE name = '{name}'")
        conn.exec_driver_sql(f"UPDATE {WEEK_IDS} SET users_kept = false WHERE name = '{name}'")

    spread.run_now(one_event)
    spread.run_now(as_an_older_version_closed_it)
    solo = EventFilter(user_id="solo")
    assert len(page(spread, solo, None, None, 10)[0]) == 1
    spread.run_now(close_weeks, NOW_MS)
    kept = spread.run_now(lambda conn: conn.exec_driver_sql(f"SELECT count(*) FROM {WEEK_USERS} WHERE user_id = 'solo'").scalar())
    assert kept == 1 and page(spread, solo, None, None, 10) == expected(spread, solo, None, None, 10)
