"""Retention on real SQLite files and a real PostgreSQL server: events older than the kept days
leave the log, exported first when the operator asked; while terminals stream, nothing else moves."""

import gzip
import json
import time

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, func, select
from twisted.internet import defer, task

from gateway.metrics import Metrics
from gateway.http.queries import EVERYTHING, read_events
from gateway.store.database import MIGRATIONS, Database
from gateway.store.partitions import DAY_MS, DEFAULT, WEEK_IDS, close_weeks, drop_week, make_weeks, week_held, week_ids, week_of, weeks, weeks_before
from gateway.store.retention import Retention, expire_batch, export, export_week
from gateway.store.schema import events
from gateway.store.user_events import BY_USER
from gateway.sync.monitor import APPLIED_BY_DEVICE, record_sync_events, sync_event_row
from live_site import KeypadStorm, LiveTestCase, Site, wait_until

NOW_MS = 1_700_000_000_000


def store(db, user_ids, at_ms: int) -> None:
    db.run_now(record_sync_events, [sync_event_row(APPLIED_BY_DEVICE, 1, u, at_ms=at_ms) for u in user_ids])


def stored_users(db) -> list[str]:
    return db.run_now(lambda conn: list(conn.execute(select(events.c.user_id).order_by(events.c.id)).scalars()))


def listed_as_attached(db) -> bool:
    """The partitions a page reads the list of (``week_ids``) are those the catalog says are attached."""
    catalog = db.run_now(lambda conn: set(conn.exec_driver_sql(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'events'::regclass").scalars()))
    return set(db.run_now(week_ids)[1]) == catalog


def exported(folder) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(path).read().splitlines()]


class NowDatabase:
    """Database.write's and read's contract, run at once on the calling thread."""

    def __init__(self, db):
        self.db = db

    def write(self, work, *args):
        return defer.maybeDeferred(self.db.run_now, work, *args)

    read = write


def test_events_older_than_the_cutoff_are_exported_then_deleted_and_newer_ones_stay(db, tmp_path):
    store(db, ["old-1", "old-2"], NOW_MS - 400 * DAY_MS)
    store(db, ["new"], NOW_MS)
    assert db.run_now(expire_batch, NOW_MS - 365 * DAY_MS, 100, str(tmp_path / "archive")) == 2
    assert stored_users(db) == ["new"]
    assert [(e["user_id"], e["type"], e["recorded_ms"]) for e in exported(tmp_path / "archive")] == [
        ("old-1", APPLIED_BY_DEVICE, NOW_MS - 400 * DAY_MS), ("old-2", APPLIED_BY_DEVICE, NOW_MS - 400 * DAY_MS)]


def test_without_an_export_folder_old_events_are_dropped_in_batches(db):
    store(db, [f"old-{n}" for n in range(7)], NOW_MS - 400 * DAY_MS)
    metrics, clock = Metrics(), task.Clock()
    clock.advance(NOW_MS / 1000)
    retention = Retention(NowDatabase(db), clock, metrics, keep_days=365, export_dir=None)
    retention.batch = 3
    gone = []
    retention.run().addCallback(gone.append)
    assert gone == [7] and stored_users(db) == []
    assert metrics.registry.get_sample_value("gateway_events_expired_total", {"action": "dropped"}) == 7


def test_an_export_that_cannot_be_written_removes_nothing_and_says_so(db, tmp_path):
    store(db, ["old"], NOW_MS - 400 * DAY_MS)
    (tmp_path / "a-file").write_text("not a folder")
    metrics, clock = Metrics(), task.Clock()
    clock.advance(NOW_MS / 1000)
    retention = Retention(NowDatabase(db), clock, metrics, keep_days=365, export_dir=str(tmp_path / "a-file"))
    gone = []
    retention.run().addCallback(gone.append)
    assert gone == [0] and stored_users(db) == ["old"]
    assert metrics.registry.get_sample_value("gateway_failures_total", {"kind": "retention"}) == 1


def week_rows(db, week) -> int:
    return db.run_now(lambda conn: conn.execute(select(func.count()).select_from(events).where(
        events.c.occurred_ms >= week.start_ms, events.c.occurred_ms < week.end_ms)).scalar())


def test_on_postgresql_a_week_older_than_the_kept_days_goes_whole_exported_first(pg, tmp_path):
    old = week_of(NOW_MS - 400 * DAY_MS)
    assert pg.run_now(make_weeks, old.start_ms, 0) == [old.name]
    store(pg, [f"old-{n}" for n in range(5)], old.start_ms + DAY_MS)
    store(pg, ["new"], NOW_MS)
    metrics, clock = Metrics(), task.Clock()
    clock.advance(NOW_MS / 1000)
    retention = Retention(NowDatabase(pg), clock, metrics, keep_days=365, export_dir=str(tmp_path / "archive"))
    gone = []
    retention.run().addCallback(gone.append)
    assert gone == [5] and stored_users(pg) == ["new"]
    weeks_now = pg.run_now(weeks)
    assert old not in weeks_now and week_of(NOW_MS) in weeks_now  # dropped whole; this week made by the run
    assert pg.run_now(week_ids)[1][DEFAULT] is not None  # and the past closed (docs/architecture.md, "Closed weeks")
    assert listed_as_attached(pg)
    assert sorted(e["user_id"] for e in exported(tmp_path / "archive")) == [f"old-{n}" for n in range(5)]
    assert (tmp_path / "archive" / f"{old.name}.jsonl.gz").exists()


def test_on_postgresql_a_week_the_cutoff_falls_in_stays_whole_until_all_of_it_is_old(pg):
    cutoff_ms = NOW_MS - 365 * DAY_MS
    straddling = week_of(cutoff_ms)
    pg.run_now(make_weeks, straddling.start_ms, 0)
    store(pg, ["older than the cutoff"], max(straddling.start_ms, cutoff_ms - DAY_MS))
    clock = task.Clock()
    clock.advance(NOW_MS / 1000)
    gone = []
    Retention(NowDatabase(pg), clock, Metrics(), keep_days=365, export_dir=None).run().addCallback(gone.append)
    assert gone == [0] and stored_users(pg) == ["older than the cutoff"]  # not deleted a day at a time


@pytest.mark.parametrize("export_dir", [None, "archive"])
def test_on_postgresql_an_old_week_holding_events_recorded_since_the_cutoff_stays_and_only_its_old_events_go(pg, tmp_path, export_dir):
    old = week_of(NOW_MS - 40 * DAY_MS)  # every moment of it older than the 30 kept days
    pg.run_now(make_weeks, old.start_ms, 0)
    store(pg, ["recorded then"], old.start_ms + DAY_MS)
    backlog = dict(sync_event_row(APPLIED_BY_DEVICE, 1, "uploaded a minute ago", at_ms=old.start_ms + DAY_MS), recorded_ms=NOW_MS - 60_000)
    pg.run_now(record_sync_events, [backlog])  # a terminal back online uploads its old log
    clock = task.Clock()
    clock.advance(NOW_MS / 1000)
    folder = None if export_dir is None else str(tmp_path / export_dir)
    gone = []
    Retention(NowDatabase(pg), clock, Metrics(), keep_days=30, export_dir=folder).run().addCallback(gone.append)
    assert gone == [1] and stored_users(pg) == ["uploaded a minute ago"]
    assert old in pg.run_now(weeks)
    if folder is not None:
        assert [e["user_id"] for e in exported(tmp_path / export_dir)] == ["recorded then"]


def copied_users(db) -> list[str]:
    """The users of the copy a user's page reads (gateway/store/user_events.py), in event id order."""
    return db.run_now(lambda conn: list(conn.exec_driver_sql(f"SELECT user_id FROM {BY_USER} ORDER BY id").scalars()))


def test_on_postgresql_the_events_retention_removes_take_their_copies_with_them(pg):
    """A week dropped whole, an old week's old events and the default partition's, removed row by
    row, all closed and copied first: none is left in the copy of the closed weeks' events naming
    a user, and everything kept is (this week's, open, is not copied)."""
    whole, backlogged = week_of(NOW_MS - 60 * DAY_MS), week_of(NOW_MS - 40 * DAY_MS)
    for week in (whole, backlogged, week_of(NOW_MS)):
        pg.run_now(make_weeks, week.start_ms, 0)
    store(pg, ["whole-1", "whole-2"], whole.start_ms + DAY_MS)
    store(pg, ["backlogged-old"], backlogged.start_ms + DAY_MS)
    late = dict(sync_event_row(APPLIED_BY_DEVICE, 1, "backlogged-new", at_ms=backlogged.start_ms + DAY_MS), recorded_ms=NOW_MS - 60_000)
    pg.run_now(record_sync_events, [late])
    store(pg, ["a clock far off"], NOW_MS - 900 * DAY_MS)  # no week holds it: the default partition
    store(pg, ["new"], NOW_MS)
    pg.run_now(close_weeks, NOW_MS)
    assert copied_users(pg) == stored_users(pg)[:-1]
    clock = task.Clock()
    clock.advance(NOW_MS / 1000)
    gone = []
    Retention(NowDatabase(pg), clock, Metrics(), keep_days=30, export_dir=None).run().addCallback(gone.append)
    assert gone == [4] and whole not in pg.run_now(weeks) and backlogged in pg.run_now(weeks)
    assert stored_users(pg) == ["backlogged-new", "new"] and copied_users(pg) == ["backlogged-new"]


def test_a_week_another_process_exported_and_dropped_is_not_exported_again_over_its_archive(pg, tmp_path):
    old = week_of(NOW_MS - 400 * DAY_MS)
    pg.run_now(make_weeks, old.start_ms, 0)
    store(pg, [f"old-{n}" for n in range(5)], old.start_ms + DAY_MS)
    cutoff_ms = NOW_MS - 365 * DAY_MS
    listed = pg.run_now(weeks_before, cutoff_ms)  # a second process lists the weeks...
    clock = task.Clock()
    clock.advance(NOW_MS / 1000)
    gone = []
    Retention(NowDatabase(pg), clock, Metrics(), keep_days=365, export_dir=str(tmp_path)).run().addCallback(gone.append)
    assert gone == [5] and listed == [old]  # ...while the first exports and drops it
    assert pg.run_now(export_week, tmp_path, old, cutoff_ms) is None  # the second's export of it writes nothing
    assert len(exported(tmp_path)) == 5


def test_an_export_never_replaces_an_archive_holding_more_events(tmp_path):
    assert export(tmp_path, "events_w1", [dict(id=n) for n in range(5)]) == 5
    assert export(tmp_path, "events_w1", [dict(id=0)]) == 1
    assert len(gzip.open(tmp_path / "events_w1.jsonl.gz").read().splitlines()) == 5
    assert sorted(e["id"] for e in exported(tmp_path)) == [0, 0, 1, 2, 3, 4]  # the smaller one beside it
    assert not list(tmp_path.glob("*.partial"))


def test_a_week_that_received_events_after_its_export_stays(pg):
    old = week_of(NOW_MS - 400 * DAY_MS)
    pg.run_now(make_weeks, old.start_ms, 0)
    store(pg, ["exported", "arrived since"], old.start_ms)
    assert pg.run_now(drop_week, old, NOW_MS, 1) is False
    assert week_rows(pg, old) == 2 and old in pg.run_now(weeks)


def test_a_week_made_after_its_events_arrived_takes_them_from_the_default_partition(pg):
    later = week_of(NOW_MS + 30 * DAY_MS)  # a terminal's clock a month fast: no week for it yet
    store(pg, ["early-1", "early-2"], later.start_ms + 5)
    in_default = "SELECT count(*) FROM events_default"
    assert pg.run_now(lambda conn: conn.exec_driver_sql(in_default).scalar()) == 2
    assert pg.run_now(make_weeks, later.start_ms, 0) == [later.name]
    assert pg.run_now(lambda conn: conn.exec_driver_sql(in_default).scalar()) == 0
    assert pg.run_now(lambda conn: conn.exec_driver_sql(f"SELECT count(*) FROM {later.name}").scalar()) == 2
    assert week_rows(pg, later) == 2


class RetentionWhileStreamingTests(LiveTestCase):
    backend = "postgresql"
    timeout = 120

    @defer.inlineCallbacks
    def test_old_events_go_while_terminals_stream_and_every_new_event_stays_stored_once(self):
        site = Site(self.db_url, events_export_dir=str(self.tmp_path / "archive"))  # no retention at start...
        old_ms = int(site.gateway.clock.seconds() * 1000) - 400 * DAY_MS
        site.gateway.db.open()
        site.gateway.db.run_now(make_weeks, old_ms, 0)  # a week of its own, dropped whole...
        store(site.gateway.db, [f"old-{n}" for n in range(2500)], old_ms)  # a year ago, before anything streams
        store(site.gateway.db, [f"older-{n}" for n in range(2500)], old_ms - 60 * DAY_MS)  # ...no week: row by row
        site.start()
        self.addCleanup(site.stop)
        yield wait_until(site.online, "all terminals online")
        storm = KeypadStorm(site.terminals, 15, seed=3)
        storm_done = storm.start(self)
        yield wait_until(storm.held, "two thirds of the storm enrolled", timeout=60)
        site.gateway.retention.keep_days = 365  # ...its run comes mid-storm
        site.gateway.retention.batch = 1000  # several transactions, between the storm's commits
        gone = yield site.gateway.retention.run()
        storm.release()
        yield storm_done
        yield wait_until(storm.everywhere, "every terminal holding every user, its log acknowledged", timeout=60)
        self.assertEqual(gone, 5000)
        self.assertEqual(len(exported(self.tmp_path / "archive")), 5000)
        self.assertEqual(site.count_events(recorded_ms=old_ms), 0)
        self.assertEqual(site.count_events(recorded_ms=old_ms - 60 * DAY_MS), 0)
        self.assertNotIn(week_of(old_ms), site.gateway.db.run_now(weeks))
        storm.check_stored(self, site.gateway.db.engine)
        self.assertGreater(site.gateway.db.run_now(lambda conn: conn.execute(select(func.count()).select_from(events)).scalar()), 0)


def test_a_week_another_process_dropped_first_is_not_dropped_or_counted_again(pg):
    old = week_of(NOW_MS - 400 * DAY_MS)
    pg.run_now(make_weeks, old.start_ms, 0)
    store(pg, ["old"], old.start_ms)
    assert pg.run_now(drop_week, old, NOW_MS, 1) is True
    assert pg.run_now(drop_week, old, NOW_MS, 1) is False
    assert pg.run_now(week_held, old) is None


def test_the_hourly_run_lists_a_week_attached_unlisted_and_forgets_a_row_whose_week_is_gone(pg):
    """A gateway of a version before migration 0015 attaches weeks without listing them; a week
    dropped by hand leaves its row: the next making of weeks mends the list, and a page reads the
    unlisted week's events."""
    unlisted, gone = week_of(NOW_MS - 400 * DAY_MS), week_of(NOW_MS - 500 * DAY_MS)

    def as_an_older_gateway(conn):
        conn.exec_driver_sql(f"CREATE TABLE {unlisted.name} (LIKE events INCLUDING DEFAULTS)")
        conn.exec_driver_sql(f"ALTER TABLE events ATTACH PARTITION {unlisted.name} FOR VALUES FROM ({unlisted.start_ms}) TO ({unlisted.end_ms})")
        conn.exec_driver_sql(f"INSERT INTO {WEEK_IDS} (name, max_id) VALUES ('{gone.name}', 7)")

    pg.run_now(as_an_older_gateway)
    store(pg, ["in the unlisted week"], unlisted.start_ms)
    assert not listed_as_attached(pg)
    pg.run_now(make_weeks, NOW_MS, 0)
    assert listed_as_attached(pg)
    assert [e["user_id"] for e in pg.run_now(read_events, EVERYTHING, None, None, 10)[0]] == ["in the unlisted week"]


def test_a_site_migrated_to_partitions_keeps_its_log_in_the_default_partition_and_this_weeks_events_move_out(postgres):
    url = postgres.new_database()
    engine = create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    now_ms = int(time.time() * 1000)
    old_row = dict(id=1, terminal_id=7, terminal_event_id=1, type="VERIFY_SUCCESS", occurred_ms=NOW_MS, recorded_ms=NOW_MS)
    new_row = dict(id=2, terminal_id=7, terminal_event_id=2, type="VERIFY_SUCCESS", occurred_ms=now_ms, recorded_ms=now_ms)
    with engine.begin() as conn:
        conn.execute(events.insert(), [old_row, new_row])
    engine.dispose()
    db = Database(url, reactor=None)
    db.open()  # 0007: the table as it was becomes the default partition
    try:
        this_week = week_of(now_ms)
        count = "SELECT count(*) FROM {}"
        assert db.run_now(lambda conn: conn.exec_driver_sql(count.format(DEFAULT)).scalar()) == 1  # the old one stays
        assert db.run_now(lambda conn: conn.exec_driver_sql(count.format(this_week.name)).scalar()) == 1  # moved out
        assert db.run_now(lambda conn: conn.execute(select(events.c.id).order_by(events.c.id)).scalars().all()) == [1, 2]
        store(db, ["after the migration"], now_ms)
        assert week_rows(db, this_week) == 2
        assert listed_as_attached(db)  # migration 0015 listed the weeks 0007 made
    finally:
        db.engine.dispose()


def test_making_a_week_finds_its_rows_in_the_default_partition_by_an_index(pg):
    """add_week's DELETE from events_default runs in the writer's group commit: no read of the whole old log."""
    later = week_of(NOW_MS + 30 * DAY_MS)
    moving = f"DELETE FROM {DEFAULT} WHERE occurred_ms >= {later.start_ms} AND occurred_ms < {later.end_ms}"

    def plan(conn) -> str:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # an empty table: a scan would be as cheap
        return "\n".join(conn.exec_driver_sql(f"EXPLAIN {moving}").scalars())

    assert "ix_events_default_occurred_ms" in pg.run_now(plan)
