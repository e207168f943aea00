"""End to end: every terminal provably in step with the server, and nothing lost or changed unseen.

A terminal that restarts with its counter back at 1, one whose store was wiped while it was
away, a keypad delete the gateway must not undo, a keypad change made while the mode did not
pull: real gateway, real database, simulated terminals on loopback TCP, every wait bounded.
"""

import sqlite3
from dataclasses import replace
from urllib.parse import quote

from twisted.internet import defer, reactor, task, threads

from api_site import TOKEN, http
from gateway.sync.monitor import CHANGE_DROPPED, LOG_RESTARTED, RECONCILED, SAVE_FAILED
from gateway.sync.reconcile import DELETED_AT_KEYPAD
from gateway.store.schema import pending_pulls
from gateway.sync.syncmode import SyncMode
from live_site import LiveTestCase, Site, secret_of, wait_until
from simulator.people import People
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal

A, B, C = 101, 102, 103


class ConsistencySite(LiveTestCase):
    """A site with terminals A, B, C, whose API the tests read as an operator would."""

    @defer.inlineCallbacks
    def start_site(self, **options):
        self.site = Site(self.db_url, api_token=TOKEN, **options).start()
        self.addCleanup(self.site.stop)
        self.site.gateway.reconciler.after_connect_s = 0.1
        self.people = People(seed=12)
        yield wait_until(self.site.online, "all terminals online")
        return self.site

    def api(self, path):
        url = f"http://127.0.0.1:{self.site.gateway.http_port.getHost().port}{path}"
        return threads.deferToThread(http, "GET", url).addCallback(lambda answer: answer[1])

    def holds(self, terminal_id, record) -> bool:
        return self.site.terminals[terminal_id].users.get(record.user_id) == record

    @defer.inlineCallbacks
    def restart(self, terminal_id, **options) -> Terminal:
        """The terminal's process ends and starts again without its state: same id, counter at 1, no users."""
        yield self.site.dialers[terminal_id].go_offline()
        yield wait_until(lambda: not self.site.online(terminal_id), "the old link gone")
        fresh = self.site.terminals[terminal_id] = Terminal(terminal_id, secret_of(terminal_id), **options)
        self.site.dialers[terminal_id] = DialingTerminal(fresh, reactor, "127.0.0.1", self.site.port).start()
        yield wait_until(lambda: self.site.online(terminal_id), "the restarted terminal online")
        return fresh


class ConsistencyScenarios(ConsistencySite):
    @defer.inlineCallbacks
    def _people_the_server_deleted_come_back_when_re_enrolled(self, **terminal_options):
        site = yield self.start_site()
        first = [self.people.person(f"70{n}") for n in range(3)]
        for person in first:
            site.terminals[A].enroll(person)
        yield wait_until(lambda: all(self.holds(B, p) for p in first), "the first enrolments everywhere")
        for person in first:
            yield site.gateway.users.delete(person.user_id)
        yield wait_until(lambda: not any(p.user_id in site.terminals[A].users for p in first), "the deletions reached A")
        fresh = yield self.restart(A, **terminal_options)
        again = [self.people.person(p.user_id) for p in first]
        for person in again:
            fresh.enroll(person)
        yield wait_until(lambda: all(site.server_record(p.user_id) == p for p in again), "the people enrolled again on the server")
        yield wait_until(lambda: all(self.holds(B, p) for p in again), "and on the other terminals")
        yield wait_until(lambda: not fresh.log, "every event of the new counter acknowledged")
        self.assertEqual(site.count_events(type=LOG_RESTARTED, terminal_id=A), 1)
        self.assertEqual(site.count_events(type=CHANGE_DROPPED), 0)

    def test_a_terminal_restarted_without_its_state_loses_none_of_its_new_events(self):
        return self._people_the_server_deleted_come_back_when_re_enrolled()

    def test_a_first_generation_terminal_restarted_without_its_state_loses_none_either(self):
        return self._people_the_server_deleted_come_back_when_re_enrolled(log_epoch=None)

    @defer.inlineCallbacks
    def test_a_store_wiped_while_offline_is_refilled_by_reconciliation_and_the_api_shows_it(self):
        site = yield self.start_site()
        people = [self.people.person(f"80{n}") for n in range(4)]
        for person in people:
            yield site.gateway.users.create(person)
        yield wait_until(lambda: all(self.holds(B, p) for p in people), "the users on B")
        yield site.dialers[B].go_offline()
        site.terminals[B].users.clear()  # a factory reset while away: the gateway's cursor says it holds them all
        site.dialers[B].come_back()
        yield wait_until(lambda: all(self.holds(B, p) for p in people), "B refilled")
        reconciler = site.gateway.reconciler
        yield wait_until(lambda: B in reconciler.last and reconciler.last[B].repaired, "the repair counted")
        listed = yield self.api("/api/terminals")
        (b,) = [t for t in listed["terminals"] if t["id"] == B]
        self.assertEqual(b["reconciliation"]["repaired"], {"pushed": len(people)})
        self.assertEqual(b["reconciliation"]["differences"], 0)
        self.assertEqual(site.count_events(type=RECONCILED, terminal_id=B), len(people))
        self.assertEqual(site.gateway.metrics.value(site.gateway.metrics.reconcile_repairs, kind="pushed"), len(people))

    @defer.inlineCallbacks
    def test_a_user_deleted_at_a_keypad_is_shown_as_a_difference_not_pushed_back(self):
        site = yield self.start_site()
        person = self.people.person("9001")
        yield site.gateway.users.create(person)
        yield wait_until(lambda: all(self.holds(t, person) for t in (A, B, C)), "the user everywhere")
        # Until C's cursor is stored past the user, reconciliation leaves it to the pusher.
        yield wait_until(lambda: site.gateway.registry.terminals[C].cursor >= site.last_change_seq(), "C's cursor moved")
        site.terminals[C].delete("9001")
        yield wait_until(lambda: site.count_events(type="DELETE_SUCCESS", terminal_id=C) == 1, "the keypad delete logged")
        found = yield site.gateway.reconciler.reconcile(C)
        self.assertEqual(found.differences, {"9001": DELETED_AT_KEYPAD})
        self.assertNotIn("9001", site.terminals[C].users)
        self.assertEqual(site.server_record("9001"), person)  # a keypad delete deletes nothing on the server
        listed = yield self.api(f"/api/terminals/{C}/differences")
        self.assertEqual(listed["differences"], [{"user_id": "9001", "why": DELETED_AT_KEYPAD}])
        shown = yield self.api(f"/api/terminals/{C}")
        self.assertEqual(shown["reconciliation"]["why"], {DELETED_AT_KEYPAD: 1})

    @defer.inlineCallbacks
    def test_a_keypad_change_made_while_the_mode_did_not_pull_is_pulled_once_it_does(self):
        site = yield self.start_site(sync_mode="all")
        person = self.people.person("m1")
        yield site.gateway.users.create(replace(person, pin_hash=None))
        yield wait_until(lambda: "m1" in site.terminals[A].users, "m1 on A")
        pin = b"p" * 32
        site.terminals[A].edit("m1", pin_hash=pin)
        yield wait_until(lambda: site.count_events(type="UPDATE_SUCCESS", terminal_id=A, sub_code=2) == 1, "the keypad edit logged")
        yield site.dialers[A].go_offline()
        yield site.gateway.settings.set_mode(SyncMode.ALL_WITH_DEVICE_UPDATES)
        yield site.gateway.users.edit("m1", name="Renamed on the server")
        shown = yield self.api(f"/api/terminals/{A}")
        self.assertEqual(shown["pulls_owed"], 1)  # owed, and A's lag says so while it is away
        self.assertGreaterEqual(shown["lag"], 2)
        site.dialers[A].come_back()
        yield wait_until(lambda: (site.server_record("m1") or person).pin_hash == pin, "the keypad PIN merged into the server")
        merged = site.server_record("m1")
        self.assertEqual(merged.name, "Renamed on the server")
        yield wait_until(lambda: all(self.holds(t, merged) for t in (A, B, C)), "every terminal holding the merged record")
        owed = site.gateway.db.run_now(lambda conn: conn.execute(pending_pulls.select()).all())
        self.assertEqual(owed, [])


class OutageVisibleAtOnce(ConsistencySite):
    """The database refuses writes (another process holds SQLite's write lock) but can be read."""

    @defer.inlineCallbacks
    def test_fail_to_save_is_listed_and_counted_while_the_database_refuses_it(self):
        site = yield self.start_site()
        site.gateway.eventlog.retry_after = lambda attempt: 0.2
        locker = sqlite3.connect(str(self.tmp_path / "gateway.db"), isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        site.terminals[A].enroll(self.people.person("out-1"))
        wanted = "/api/events?type=" + quote("Fail to save to the server DB")
        listed = {}

        @defer.inlineCallbacks
        def listed_now():
            listed.update((yield self.api(wanted)))
            return any(e["user_id"] == "out-1" for e in listed["unsaved"])

        yield wait_until_deferred(listed_now, "the failure listed by the API during the outage", timeout=30)
        (failure,) = [e for e in listed["unsaved"] if e["user_id"] == "out-1"][:1]
        self.assertEqual((failure["id"], failure["unsaved"], failure["terminal_id"], failure["origin"]), (None, True, A, "device"))
        self.assertGreaterEqual(site.gateway.metrics.value(site.gateway.metrics.unsaved_events), 1)
        locker.execute("ROLLBACK")
        yield wait_until(lambda: site.count_events(type=SAVE_FAILED, user_id="out-1") >= 1, "the failure stored once the lock is gone")
        yield wait_until(lambda: not site.gateway.eventlog.unsaved, "nothing left waiting")


@defer.inlineCallbacks
def wait_until_deferred(check, what: str, timeout: float):
    """``wait_until`` for a check that needs a request (it fires with True or False)."""
    deadline = reactor.seconds() + timeout
    while not (yield check()):
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        yield task.deferLater(reactor, 0.1, lambda: None)


class PostgresConsistency(ConsistencyScenarios):
    backend = "postgresql"
