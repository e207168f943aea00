"""End to end: a gateway on SQLite and on PostgreSQL, simulated terminals on loopback TCP.

Each scenario is one of the promises of design.md: a user enrolled or edited at one terminal
reaches the server and the others, merged by the rules; nothing is lost when a terminal or the
database is away.
"""

from dataclasses import replace

from sqlalchemy import text
from twisted.internet import defer

from gateway.sync.monitor import APPLIED_BY_DEVICE, SAVE_FAILED, SAVED_FROM_DEVICE
from gateway.sync.syncmode import SyncMode
from live_site import LiveTestCase, Site, wait_until
from protocol.records import Card, CardType, Face, UserRecord
from simulator.people import People

A, B, C = 101, 102, 103
D = 104  # listens; the gateway dials out to it


class SyncScenarios:
    """The scenarios; subclasses below choose the database."""

    @defer.inlineCallbacks
    def start_site(self, **options):
        self.site = Site(self.db_url, **options).start()
        self.addCleanup(self.site.stop)
        self.people = People(seed=7)
        yield wait_until(self.site.online, "all terminals online")
        return self.site

    def holds(self, terminal_id, record) -> bool:
        return self.site.terminals[terminal_id].users.get(record.user_id) == record

    @defer.inlineCallbacks
    def test_enrolment_on_one_terminal_reaches_the_server_and_the_others(self):
        site = yield self.start_site()
        person = self.people.person("1001")
        site.terminals[A].enroll(person)
        yield wait_until(lambda: self.holds(B, person) and self.holds(C, person), "the user on B and C")
        self.assertEqual(site.server_record("1001"), person)
        yield wait_until(lambda: site.count_events(type=APPLIED_BY_DEVICE, user_id="1001") == 2, "two applied events")
        self.assertEqual(site.count_events(type=SAVED_FROM_DEVICE, user_id="1001", terminal_id=A), 1)
        self.assertEqual(site.count_events(type=APPLIED_BY_DEVICE, user_id="1001", terminal_id=B), 1)
        self.assertEqual(site.count_events(type=APPLIED_BY_DEVICE, user_id="1001", terminal_id=C), 1)
        self.assertEqual(site.count_events(type=SAVE_FAILED), 0)

    @defer.inlineCallbacks
    def test_a_terminal_the_gateway_dials_out_to_syncs_both_ways(self):
        site = yield self.start_site(listening_ids=(D,))
        from_dial_out, to_dial_out = self.people.person("1101"), self.people.person("1102")
        site.terminals[D].enroll(from_dial_out)
        site.terminals[A].enroll(to_dial_out)
        yield wait_until(lambda: self.holds(B, from_dial_out) and self.holds(D, to_dial_out), "users crossing both ways")

    @defer.inlineCallbacks
    def test_merge_keeps_server_fields_and_fills_vacant_ones(self):
        site = yield self.start_site()
        card = Card(CardType.CSN, b"\x01\x02\x03\x04")
        server_user = UserRecord(user_id="2002", name="Server Name", cards=(card,))
        yield site.gateway.users.create(server_user)
        yield wait_until(lambda: all(self.holds(t, server_user) for t in (A, B, C)), "the server user on every terminal")

        finger = self.people.fingerprint(3)
        site.terminals[A].edit("2002", name="Terminal Name", fingerprints=(finger,))
        expected = UserRecord(user_id="2002", name="Server Name", cards=(card,), fingerprints=(finger,))
        yield wait_until(lambda: all(self.holds(t, expected) for t in (A, B, C)), "every terminal holding the merged user")
        self.assertEqual(site.server_record("2002"), expected)

    @defer.inlineCallbacks
    def test_a_burst_of_records_too_big_for_one_frame_is_pulled_in_several(self):
        site = yield self.start_site()
        faces = tuple(Face(i, bytes(range(256)) * 32) for i in range(5))  # 5 x 8 KiB: the largest records
        people = [replace(self.people.person(f"big-{n:02d}"), faces=faces, photo=bytes(16 * 1024)) for n in range(40)]
        for person in people:
            site.terminals[A].enroll(person)
        yield wait_until(lambda: all(self.holds(B, p) and self.holds(C, p) for p in people), "every big record on B and C")

    @defer.inlineCallbacks
    def test_a_keypad_change_racing_a_server_change_is_merged_not_overwritten(self):
        site = yield self.start_site()
        person = UserRecord("4242", name="Server Name", cards=(Card(CardType.CSN, b"\x42"),))
        yield site.gateway.users.create(person)
        yield wait_until(lambda: all(self.holds(t, person) for t in (A, B, C)), "the user everywhere")
        site.dialers[C].go_offline()
        yield wait_until(lambda: not site.online(C), "C offline")
        finger = self.people.fingerprint(2)
        site.terminals[C].edit("4242", fingerprints=(finger,))  # at C's keypad, while it is away
        yield site.gateway.users.edit("4242", name="Renamed on the server")
        site.dialers[C].come_back()  # the server's version and C's change now cross
        expected = replace(person, name="Renamed on the server", fingerprints=(finger,))
        yield wait_until(lambda: all(self.holds(t, expected) for t in (A, B, C)), "both changes on every terminal")
        self.assertEqual(site.server_record("4242"), expected)

    @defer.inlineCallbacks
    def test_smart_card_user_enrolled_on_a_terminal_syncs(self):
        site = yield self.start_site()
        cards = (Card(CardType.SMART_CARD, bytes(range(16))), Card(CardType.SECURE_CREDENTIAL, bytes(range(32))))
        person = replace(self.people.person("3003"), cards=cards)
        site.terminals[B].enroll(person)
        yield wait_until(lambda: self.holds(A, person) and self.holds(C, person), "the smart-card user on A and C")
        self.assertEqual(site.server_record("3003").cards, person.cards)

    @defer.inlineCallbacks
    def test_delete_on_a_terminal_keeps_the_server_user(self):
        site = yield self.start_site()
        person = self.people.person("4004")
        site.terminals[A].enroll(person)
        yield wait_until(lambda: self.holds(B, person) and self.holds(C, person), "the user everywhere")
        site.terminals[B].delete("4004")
        yield wait_until(lambda: site.count_events(terminal_id=B, type="DELETE_SUCCESS", user_id="4004") == 1,
                         "the terminal's delete event stored")
        self.assertEqual(site.server_record("4004"), person)
        self.assertTrue(self.holds(A, person) and self.holds(C, person))

    @defer.inlineCallbacks
    def test_ten_changes_while_a_terminal_is_away_arrive_as_one_record(self):
        site = yield self.start_site()
        person = self.people.person("5005")
        yield site.gateway.users.create(person)
        yield wait_until(lambda: self.holds(C, person), "the user on C")
        applied = []
        site.terminals[C].applied_listeners.append(lambda user_id, record: applied.append(user_id))
        site.dialers[C].go_offline()
        yield wait_until(lambda: not site.online(C), "C offline")
        for n in range(10):
            yield site.gateway.users.edit("5005", name=f"Edit {n}")
        yield wait_until(lambda: site.terminals[A].users["5005"].name == "Edit 9", "A holding the last edit")
        site.dialers[C].come_back()
        # The terminal applies the record before the pusher commits the cursor: wait for the commit.
        last = site.last_change_seq()
        yield wait_until(lambda: site.committed_cursor(A) == site.committed_cursor(C) == last, "A's and C's cursors committed at the last change")
        self.assertEqual(site.terminals[C].users["5005"].name, "Edit 9")
        self.assertEqual(applied, ["5005"])

    @defer.inlineCallbacks
    def test_database_refusing_a_merge_records_the_failure_and_catches_up(self):
        site = yield self.start_site()
        site.gateway.puller.retry_after = lambda attempt: 0.2
        refuse_user_writes(site.gateway.db.engine)
        person = self.people.person("6006")
        site.terminals[A].enroll(person)
        yield wait_until(lambda: site.count_events(type=SAVE_FAILED, user_id="6006") >= 1, "the save failure recorded")
        self.assertIsNone(site.server_record("6006"))
        self.assertNotIn("6006", site.terminals[B].users)
        self.assertEqual(site.terminals[A].users["6006"], person)  # the terminal keeps its data

        allow_user_writes(site.gateway.db.engine)
        yield wait_until(lambda: self.holds(B, person) and self.holds(C, person), "the user on B and C after recovery")
        self.assertEqual(site.server_record("6006"), person)
        self.assertEqual(site.count_events(type=SAVED_FROM_DEVICE, user_id="6006"), 1)

    @defer.inlineCallbacks
    def test_server_side_changes_reach_every_terminal_without_echo(self):
        site = yield self.start_site()
        person = self.people.person("7007")
        yield site.gateway.users.create(person)
        yield wait_until(lambda: all(self.holds(t, person) for t in (A, B, C)), "the user on every terminal")
        yield site.gateway.users.delete("7007")
        yield wait_until(lambda: all("7007" not in site.terminals[t].users for t in (A, B, C)), "the user gone everywhere")
        yield wait_until(lambda: site.count_events(type="DELETE_SUCCESS", user_id="7007") == 3, "three delete events stored")
        self.assertEqual(site.count_events(type=SAVED_FROM_DEVICE), 0)  # server-origin events are never pulled


    @defer.inlineCallbacks
    def test_specific_mode_sends_a_user_only_where_access_groups_meet_until_widened(self):
        site = yield self.start_site(sync_mode="specific", groups={A: [1], B: [2], C: [1, 2]})
        cursors = site.gateway.registry.terminals
        person = replace(self.people.person("8008"), access_groups=(1,))
        yield site.gateway.users.create(person)
        yield wait_until(lambda: self.holds(A, person) and self.holds(C, person), "the user on A and C")
        yield wait_until(lambda: min(site.committed_cursor(A), site.committed_cursor(C)) >= site.last_change_seq(), "A's and C's cursors moved")
        # B was not woken for a change not meant for it: no round, so no cursor move (before, one
        # came in the same commit as A's and C's), and the sweep finds it lacking nothing.
        self.assertEqual((cursors[B].cursor, site.committed_cursor(B)), (0, 0))
        yield site.gateway.sweep()
        self.assertEqual(site.gateway.metrics.sync_lag.labels(str(B))._value.get(), 0)
        self.assertNotIn("8008", site.terminals[B].users)
        # A change meant for B reaches it from its old cursor, passing over the one that is not.
        other = replace(self.people.person("8009"), access_groups=(2,))
        yield site.gateway.users.create(other)
        yield wait_until(lambda: self.holds(B, other) and site.committed_cursor(B) == site.last_change_seq(), "the second user on B")
        self.assertNotIn("8008", site.terminals[B].users)
        self.assertNotIn("8009", site.terminals[A].users)
        yield site.gateway.settings.set_mode(SyncMode.ALL)
        yield wait_until(lambda: self.holds(B, person) and self.holds(A, other), "both users everywhere once the mode widened to all")

    @defer.inlineCallbacks
    def test_changes_held_back_while_sync_is_disabled_arrive_once_it_is_enabled(self):
        site = yield self.start_site(sync_mode="disabled")
        person = self.people.person("9009")
        yield site.gateway.users.create(person)
        yield site.gateway.sweep()  # whatever a sweep would push has been started by now: nothing
        self.assertFalse(any("9009" in t.users for t in site.terminals.values()))
        yield site.gateway.settings.set_mode(SyncMode.ALL)
        yield wait_until(lambda: all(self.holds(t, person) for t in (A, B, C)), "the user everywhere once enabled")


def refuse_user_writes(engine) -> None:
    """Make the database itself refuse writes to users, as a full disk or a broken table would."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for op in ("INSERT", "UPDATE"):
                conn.execute(text(f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON users "
                                  "BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END"))
        else:
            conn.execute(text("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                              "RAISE EXCEPTION 'disk full (test)'; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION refuse()"))


def allow_user_writes(engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER refuse_insert"))
            conn.execute(text("DROP TRIGGER refuse_update"))
        else:
            conn.execute(text("DROP TRIGGER refuse ON users"))


class SqliteSync(SyncScenarios, LiveTestCase):
    backend = "sqlite"


class PostgresSync(SyncScenarios, LiveTestCase):
    backend = "postgresql"
