"""The page's figures: per-second activity read from the events table (on a real SQLite file and
PostgreSQL, with task.Clock), and the read-only endpoints the charts and the user view use (live gateway)."""

from sqlalchemy import create_engine, insert
from twisted.internet import defer, task

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
    activity.tick()
    series = activity.series(4)
    assert series["seconds"] == [1001, 1002]  # nothing was stored before 1001: nothing is known
    assert series["events_stored"] == [2, 0]
    assert series["user_deliveries"] == [1, 1]
    assert series["sync_failures"] == [0, 2]
    assert series["propagation_p99_ms"] == [None, 1800]  # counted once, at its last apply
    assert series["totals"] == {"events_stored": 2, "user_deliveries": 2, "sync_failures": 2, "changes_propagated": 1, "propagation_p99_ms": 1800}


def test_each_tick_reads_only_what_was_stored_since_and_a_new_change_is_timed_from_its_own_start(tmp_path):
    activity, db, clock = activity_at(f"sqlite:///{tmp_path / 'gateway.db'}", 1010.0)
    db.store(terminal_event("UPDATE_SUCCESS", "u", 1000_000, 1000_100), sync_event(APPLIED_BY_DEVICE, "u", 1000_900))
    activity.tick()
    db.store(
        terminal_event("UPDATE_SUCCESS", "u", 1005_000, 1005_050),  # edited again at the keypad
        terminal_event("UPDATE_SUCCESS", "u", 1005_500, 1005_550),  # and again before it went anywhere
        terminal_event("UPDATE_SUCCESS", "s", 1005_600, 1005_650, sub_code=Origin.SERVER),  # a push applied: not a change to time
        sync_event(APPLIED_BY_DEVICE, "u", 1006_000),
    )
    activity.tick()
    series = activity.series(10)
    assert sum(series["events_stored"]) == 4 and sum(series["user_deliveries"]) == 2  # nothing counted twice
    assert [p for p in series["propagation_p99_ms"] if p is not None] == [900, 1000]  # the oldest waiting edit is timed


def test_seconds_older_than_the_window_are_forgotten_and_a_restart_reads_history_back(tmp_path):
    activity, db, clock = activity_at(f"sqlite:///{tmp_path / 'gateway.db'}", 1001.0)
    db.store(*[terminal_event("VERIFY_SUCCESS", "v", 1000_000, 1000_000 + n, Credential.CARD) for n in range(5)])
    activity.tick()
    restarted = Activity(db, clock)
    restarted.history_rows = 3
    restarted.tick()
    assert sum(restarted.series(10)["events_stored"]) == 3  # the last 3 stored, read back at start
    clock.advance(activity.window_s + 5)
    activity.tick()
    assert activity._seconds == {} and sum(activity.series(600)["events_stored"]) == 0


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

        def shown():
            """The second of the apply is over, so the figures show it (the current second is still filling)."""
            self.site.gateway.activity.tick()
            series = self.site.gateway.activity.series(60)
            return series["totals"]["changes_propagated"] == 1 and series["totals"]["user_deliveries"] == 1

        yield wait_until(shown, "the activity to show the delivery")
        activity = yield self.get("/api/activity?seconds=60")
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
