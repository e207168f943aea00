"""The page's figures: per-second activity read from the events table (on a real SQLite file and
PostgreSQL, with task.Clock), and the read-only endpoints the charts and the user view use (live gateway)."""

from sqlalchemy import create_engine, insert
from twisted.internet import defer, reactor, task

from api_site import A, B, ApiTestCase
from gateway.activity import Activity, read_activity
from gateway.sync.monitor import APPLIED_BY_DEVICE, PUSH_REFUSED, SAVE_FAILED, SAVED_FROM_DEVICE
from gateway.store.schema import events, metadata
from live_site import wait_until
from protocol.events import Credential, Origin


class FileDatabase:
    """Database.read's contract, run at once on the calling thread: what Activity needs, no threads."""

    def __init__(self, url: str):
        self.engine = create_engine(url)
        metadata.create_all(self.engine)

    def read(self, work, *args):
        with self.engine.begin() as conn:
            return defer.succeed(work(conn, *args))

    def store(self, *rows):
        with self.engine.begin() as conn:
            conn.execute(insert(events), [{**dict(terminal_id=1, terminal_event_id=None, code=None, sub_code=None, detail=None), **r} for r in rows])


def terminal_event(type_, user, occurred_ms, recorded_ms, sub_code=Origin.DEVICE, event_id=None):
    return dict(type=type_, user_id=user, occurred_ms=occurred_ms, recorded_ms=recorded_ms, sub_code=int(sub_code),
                terminal_event_id=event_id if event_id is not None else recorded_ms)


def sync_event(type_, user, recorded_ms):
    return dict(type=type_, user_id=user, occurred_ms=recorded_ms, recorded_ms=recorded_ms)


def activity_at(url: str, seconds: float) -> tuple[Activity, FileDatabase, task.Clock]:
    db = FileDatabase(url)
    clock = task.Clock()
    clock.advance(seconds)
    return Activity(db, clock), db, clock


def shown(activity: Activity, seconds: int) -> dict:
    """What the charts are answered now (the database answers at once)."""
    answers = []
    activity.series(seconds).addBoth(answers.append)
    assert len(answers) == 1 and isinstance(answers[0], dict), answers
    return answers[0]


class CountingDatabase(FileDatabase):
    def __init__(self, url: str):
        super().__init__(url)
        self.reads = 0

    def read(self, work, *args):
        self.reads += 1
        return super().read(work, *args)


def test_events_deliveries_failures_and_propagation_are_counted_per_second(db_url):
    activity, db, clock = activity_at(db_url, 1003.2)
    db.store(
        terminal_event("ENROLL_SUCCESS", "u", 1000_500, 1001_000),                 # made at terminal 1 at 1000.5 s
        terminal_event("VERIFY_SUCCESS", "v", 1001_100, 1001_200, Credential.CARD),
        sync_event(SAVED_FROM_DEVICE, "u", 1001_100),
        sync_event(APPLIED_BY_DEVICE, "u", 1001_700),                               # terminal 2
        sync_event(SAVE_FAILED, "w", 1002_100),
        sync_event(PUSH_REFUSED, "x", 1002_200),
        sync_event(APPLIED_BY_DEVICE, "u", 1002_300),                               # terminal 3: the last
    )
    series = shown(activity, 4)  # the first ask reads them
    assert series["seconds"] == [1001, 1002]  # nothing was stored before 1001: nothing is known
    assert series["events_stored"] == [2, 0]
    assert series["user_deliveries"] == [1, 1]
    assert series["sync_failures"] == [0, 2]
    assert series["propagation_p99_ms"] == [None, 1800]  # counted once, at its last apply
    assert series["totals"] == {"events_stored": 2, "user_deliveries": 2, "sync_failures": 2, "changes_propagated": 1, "propagation_p99_ms": 1800}


def test_each_tick_reads_only_what_was_stored_since_and_a_new_change_is_timed_from_its_own_start(tmp_path):
    activity, db, clock = activity_at(f"sqlite:///{tmp_path / 'gateway.db'}", 1010.0)
    db.store(terminal_event("UPDATE_SUCCESS", "u", 1000_000, 1000_100), sync_event(APPLIED_BY_DEVICE, "u", 1000_900))
    shown(activity, 10)
    db.store(
        terminal_event("UPDATE_SUCCESS", "u", 1005_000, 1005_050),  # edited again at the keypad
        terminal_event("UPDATE_SUCCESS", "u", 1005_500, 1005_550),  # and again before it went anywhere
        terminal_event("UPDATE_SUCCESS", "s", 1005_600, 1005_650, sub_code=Origin.SERVER),  # a push applied: not a change to time
        sync_event(APPLIED_BY_DEVICE, "u", 1006_000),
    )
    activity.tick()
    series = shown(activity, 10)
    assert sum(series["events_stored"]) == 4 and sum(series["user_deliveries"]) == 2  # nothing counted twice
    assert [p for p in series["propagation_p99_ms"] if p is not None] == [900, 1000]  # the oldest waiting edit is timed


def test_a_change_delivered_again_after_a_pause_keeps_the_propagation_of_its_spread(tmp_path):
    """A terminal that comes online minutes later (or a sync-mode switch) gets the user again: not propagation."""
    activity, db, clock = activity_at(f"sqlite:///{tmp_path / 'gateway.db'}", 1300.0)
    db.store(terminal_event("UPDATE_SUCCESS", "u", 1000_000, 1000_100),
             sync_event(APPLIED_BY_DEVICE, "u", 1000_400),
             sync_event(APPLIED_BY_DEVICE, "u", 1008_000),   # a slow terminal, within the pause: still the spread
             sync_event(APPLIED_BY_DEVICE, "u", 1278_000))   # a terminal back online four minutes later
    series = shown(activity, 300)
    assert [p for p in series["propagation_p99_ms"] if p is not None] == [8000]
    assert series["totals"]["changes_propagated"] == 1 and sum(series["user_deliveries"]) == 3  # the delivery still counts


def test_seconds_older_than_the_window_are_forgotten_and_a_restart_reads_history_back(tmp_path):
    activity, db, clock = activity_at(f"sqlite:///{tmp_path / 'gateway.db'}", 1001.0)
    db.store(*[terminal_event("VERIFY_SUCCESS", "v", 1000_000, 1000_000 + n, Credential.CARD) for n in range(5)])
    shown(activity, 10)
    restarted = Activity(db, clock)
    restarted.history_rows = 3
    assert sum(shown(restarted, 10)["events_stored"]) == 3  # the last 3 stored, read back at start
    activity.watch_s = activity.window_s * 2  # somebody looks all along
    clock.advance(activity.window_s + 5)
    activity.tick()
    assert activity._seconds == {} and sum(shown(activity, 600)["events_stored"]) == 0


def test_nothing_is_read_while_nobody_asks_and_every_second_while_somebody_does(tmp_path):
    db = CountingDatabase(f"sqlite:///{tmp_path / 'gateway.db'}")
    clock = task.Clock()
    clock.advance(1000.0)
    activity = Activity(db, clock)
    activity.start()
    clock.pump([1.0] * 10)
    assert db.reads == 0
    shown(activity, 60)
    assert db.reads == 1  # the history read, which the answer waited for
    clock.pump([1.0] * 10)
    assert db.reads == 11
    shown(activity, 60)  # asked again at 1020: read until 1080
    clock.pump([1.0] * 59)
    assert db.reads == 70
    clock.pump([1.0] * 30)
    assert db.reads == 70  # nobody asked for a minute: no more reads
    activity.stop()


def test_after_nobody_asked_the_figures_begin_afresh_from_history_and_the_first_answer_has_them(tmp_path):
    activity, db, clock = activity_at(f"sqlite:///{tmp_path / 'gateway.db'}", 1000.0)
    activity.history_rows = 3
    activity.start()
    db.store(*[terminal_event("VERIFY_SUCCESS", "v", 999_000, 999_000 + n, Credential.CARD) for n in range(5)])
    first = shown(activity, 60)
    assert (first["seconds"], first["totals"]["events_stored"]) == ([999], 3)
    clock.pump([1.0] * 100)  # nobody looks: what is stored now is not read
    db.store(*[terminal_event("VERIFY_SUCCESS", "v", 1050_000, 1050_000 + n, Credential.CARD) for n in range(4)])
    assert activity._seconds == {}  # dropped, not kept while nobody looks
    again = shown(activity, 600)
    assert again["seconds"] == list(range(1050, 1100))  # figures begin with the history read, said as such
    assert again["totals"]["events_stored"] == 3  # the last 3 stored, as at start: none counted twice
    db.store(terminal_event("VERIFY_SUCCESS", "v", 1100_000, 1100_000, Credential.CARD))
    clock.advance(2)
    assert shown(activity, 600)["totals"]["events_stored"] == 4  # and followed again while asked
    activity.stop()


def test_a_read_begun_before_the_figures_were_dropped_adds_nothing_and_the_answer_waits_for_a_new_one(tmp_path):
    db = FileDatabase(f"sqlite:///{tmp_path / 'gateway.db'}")
    clock = task.Clock()
    clock.advance(1000.0)
    reads: list[defer.Deferred] = []

    class SlowDatabase:
        def read(self, work, *args):
            d = defer.Deferred()
            reads.append(d)
            return d.addCallback(lambda _: db.read(work, *args))

    activity = Activity(SlowDatabase(), clock)
    db.store(terminal_event("VERIFY_SUCCESS", "v", 999_000, 999_000, Credential.CARD))
    activity.series(60)
    reads.pop().callback(None)
    activity.tick()  # a read under way, slow
    clock.advance(activity.watch_s + 1)
    answers = []
    activity.series(600).addCallback(answers.append)
    assert len(reads) == 1 and answers == []  # the new read waits for the one under way
    reads.pop().callback(None)  # the old read ends: what it read is not added to the new figures
    assert answers == [] and len(reads) == 1
    reads.pop().callback(None)
    assert answers[0]["totals"]["events_stored"] == 1  # counted once


def test_a_big_backlog_is_read_a_bounded_number_of_rows_at_a_time(tmp_path):
    db = FileDatabase(f"sqlite:///{tmp_path / 'gateway.db'}")
    db.store(*[terminal_event("VERIFY_SUCCESS", "v", 1000_000, 1000_000, Credential.CARD, event_id=n) for n in range(10)])
    with db.engine.begin() as conn:
        first = read_activity(conn, 0, 4, 0)
        second = read_activity(conn, first.last_id, 4, 0)
    assert (first.last_id, first.counts, second.last_id) == (4, [(1000, 4, 0, 0)], 8)


class ActivityEndpointTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_the_activity_shows_an_enrolment_stored_delivered_and_its_propagation(self):
        yield self.enroll(A, "act-1")
        yield wait_until(lambda: self.site.count_events(type=APPLIED_BY_DEVICE, user_id="act-1") == 1, "act-1 applied on B")

        for _ in range(100):  # until the second of the apply is over (the current second is still filling)
            activity = yield self.get("/api/activity?seconds=60")
            if activity["totals"]["changes_propagated"] == 1 and activity["totals"]["user_deliveries"] == 1:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        span = len(activity["seconds"])
        self.assertTrue(0 < span < 60)  # the gateway started seconds ago: no minute to show yet
        self.assertEqual({len(activity[k]) for k in ("events_stored", "user_deliveries", "sync_failures", "propagation_p99_ms")}, {span})
        totals = activity["totals"]
        self.assertGreaterEqual(totals["events_stored"], 2)  # A's enrolment, B's apply
        self.assertEqual(totals["user_deliveries"], 1)
        self.assertIsInstance(totals["propagation_p99_ms"], int)
        yield self.assert_error("GET", "/api/activity?seconds=5", 400, "seconds")

    @defer.inlineCallbacks
    def test_a_users_terminals_say_which_hold_its_current_version(self):
        yield self.enroll(A, "held-1")
        yield wait_until(lambda: self.site.count_events(type=APPLIED_BY_DEVICE, user_id="held-1") == 1, "held-1 applied on B")

        def holders():
            return self.get("/api/users/held-1/terminals")

        found = yield holders()
        yield wait_until(lambda: self.site.gateway.registry.terminals[A].cursor >= found["change_seq"], "A's cursor past the change")
        found = yield holders()
        self.assertEqual(found["sync_mode"], "all-with-device-updates")
        self.assertEqual([(t["id"], t["targeted"], t["holds"], t["online"]) for t in found["terminals"]], [(A, True, True, True), (B, True, True, True)])

        self.site.dialers[B].go_offline()
        yield self.call("PATCH", "/api/users/held-1", {"name": "Renamed on the server"})
        found = yield holders()
        self.assertEqual({t["id"]: t["holds"] for t in found["terminals"]}, {A: found["terminals"][0]["holds"], B: False})
        yield wait_until(lambda: self.site.gateway.registry.terminals[A].cursor >= found["change_seq"], "A applied the rename")
        found = yield holders()
        self.assertEqual({t["id"]: t["holds"] for t in found["terminals"]}, {A: True, B: False})
        yield self.assert_error("GET", "/api/users/nobody/terminals", 404, "nobody")


class SpecificModeTests(ApiTestCase):
    config = {"api_token": "test-token", "sync_mode": "specific"}

    @defer.inlineCallbacks
    def test_a_terminal_the_mode_does_not_target_does_not_hold_the_user(self):
        yield self.call("POST", "/api/users", {"user_id": "g-1", "name": "Grouped", "access_groups": [5]})
        found = yield self.get("/api/users/g-1/terminals")
        self.assertEqual([(t["id"], t["targeted"], t["holds"]) for t in found["terminals"]], [(A, False, False), (B, False, False)])


class PageTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_the_chart_library_is_served_by_the_gateway_itself_under_the_strict_policy(self):
        code, page, _ = yield self.call("GET", "/", token=None)
        self.assertIn('src="/page/uPlot.iife.min.js"', page)
        self.assertNotIn("http", page.split("<body>")[0].replace("http-equiv", ""))  # nothing from elsewhere
        for path, kind, mentions in [("/page/uPlot.iife.min.js", "text/javascript", "uPlot"), ("/page/uPlot.min.css", "text/css", ".uplot")]:
            code, text, headers = yield self.call("GET", path, token=None)
            self.assertEqual(code, 200)
            self.assertTrue(headers["Content-Type"].startswith(kind))
            self.assertIn("default-src 'self'", headers["Content-Security-Policy"])
            self.assertIn(mentions, text)
