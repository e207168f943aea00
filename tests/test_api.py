"""The HTTP API against a real gateway (a real SQLite file, and PostgreSQL where the SQL differs)
with simulated terminals dialled in: every endpoint, paging, filters, the live stream, and bad
input answered with a clear 4xx JSON error and nothing else.
"""

import json
from datetime import datetime, timezone
from urllib import request as urlrequest

from twisted.internet import defer, threads
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gateway.admin import ApiClient
from gateway.http.api import ApiResource, BoundedBody, Route
from gateway.http.sse import StreamClient, encode
from gateway.sync.monitor import APPLIED_BY_DEVICE, SAVED_FROM_DEVICE, SYNC_EVENT_TYPES
from gateway.http.queries import EventFilter
from api_site import TOKEN, A, B, ApiTestCase
from gateway.logs import log_line
from live_site import wait_until
from protocol.events import Credential
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal

USER_KEYS = {"user_id", "name", "access_groups", "cards", "fingerprints", "faces", "has_pin", "has_photo", "disabled", "validity",
             "security_level", "auth_mode", "change_seq", "updated_ms"}


def first_streamed(url: str, headers=()) -> dict:
    """The first event of a stream (blocking), read with urllib as any script would."""
    req = urlrequest.Request(url)
    for name, value in headers:
        req.add_header(name, value)
    with urlrequest.urlopen(req, timeout=10) as response:
        for line in response:
            if line.startswith(b"data:"):
                return json.loads(line[5:])
    raise AssertionError("the stream ended without an event")


class TerminalTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_terminals_show_online_state_link_model_and_sync_lag(self):
        listed = yield self.get("/api/terminals")
        self.assertEqual([t["id"] for t in listed["terminals"]], [A, B])
        for term in listed["terminals"]:
            self.assertEqual((term["online"], term["admission"], term["model"], term["firmware"]), (True, "admitted", "SIM-1", "1.0.0"))
            self.assertIn("127.0.0.1", term["link"])
            self.assertEqual(term["lag"], 0)

        self.site.dialers[B].go_offline()
        yield wait_until(lambda: not self.site.online(B), "B offline")
        code, _, _ = yield self.call("POST", "/api/users", {"user_id": "lag-1", "name": "Lag"})
        self.assertEqual(code, 201)
        gateway = self.site.gateway
        yield wait_until(lambda: gateway.registry.terminals[A].cursor == 1, "A applied the change")

        listed = yield self.get("/api/terminals")
        self.assertEqual(listed["last_change_seq"], 1)
        a, b = listed["terminals"]
        self.assertEqual((a["online"], a["cursor"], a["lag"]), (True, 1, 0))
        self.assertEqual((b["online"], b["cursor"], b["lag"]), (False, 0, 1))
        self.assertIsNotNone(b["last_seen_ms"])
        self.assertEqual((yield self.get(f"/api/terminals/{B}")), b)
        yield self.assert_error("GET", "/api/terminals/999", 404, "no terminal 999")
        yield self.assert_error("GET", "/api/terminals/seven", 400, "terminal_id must be an integer")

    @defer.inlineCallbacks
    def test_terminals_come_in_pages_with_the_whole_fleets_figures(self):
        whole = yield self.get("/api/terminals")
        self.assertEqual((whole["more"], whole["next"], whole["fleet"]), (False, None, {"terminals": 2, "admitted": 2, "online": 2}))
        first = yield self.get("/api/terminals?limit=1")
        self.assertEqual(([t["id"] for t in first["terminals"]], first["more"], first["next"]), ([A], True, A))
        self.assertEqual(first["fleet"], whole["fleet"])
        rest = yield self.get(f"/api/terminals?after={A}&limit=1")
        self.assertEqual(([t["id"] for t in rest["terminals"]], rest["more"], rest["next"]), ([B], False, None))
        self.assertEqual((yield self.get(f"/api/terminals?after={B}"))["terminals"], [])
        yield self.assert_error("GET", "/api/terminals?limit=0", 400, "limit")


    @defer.inlineCallbacks
    def test_reconcile_counts_the_repairs_of_a_round_under_way_that_it_waited_for(self):
        yield self.enroll(A, "w-1")
        yield wait_until(lambda: self.site.count_events(type=APPLIED_BY_DEVICE, user_id="w-1") == 1, "w-1 applied on B")
        reconciler = self.site.gateway.reconciler
        yield reconciler.reconcile(B)  # a first round: B is known to the comparison
        self.site.terminals[B].users.clear()  # B wiped
        # A round of B under way (held for a slot) when the call comes, as the one connecting starts:
        for _ in range(reconciler.at_once):
            yield reconciler._slots.acquire()
        under_way = reconciler.reconcile(B)
        asked = []
        reconciler.ask_others = lambda: asked.append(True)
        answer = self.call("POST", "/api/reconcile", {})
        yield wait_until(lambda: asked, "the call began reconciling")
        for _ in range(reconciler.at_once):
            reconciler._slots.release()
        yield under_way
        code, found, _ = yield answer
        self.assertEqual(code, 200, found)
        self.assertIn("w-1", self.site.terminals[B].users)
        self.assertEqual(found["repaired"], 1)  # by the round under way: the call's own found nothing left

class PendingAdmissionTests(ApiTestCase):
    config = {"api_token": TOKEN, "admission": "pending"}

    @defer.inlineCallbacks
    def test_a_pending_terminal_is_admitted_refused_and_removed(self):
        stranger = DialingTerminal(Terminal(555, "secret-555"), self.site.gateway.reactor, "127.0.0.1", self.site.port).start()
        self.addCleanup(stranger.go_offline)
        registry = self.site.gateway.registry
        yield wait_until(lambda: 555 in registry.terminals, "terminal 555 recorded as pending")
        term = yield self.get("/api/terminals/555")
        self.assertEqual((term["admission"], term["online"], term["lag"], term["model"]), ("pending", False, None, "SIM-1"))

        code, body, headers = yield self.call("POST", "/api/terminals/555/admit", {"secret": "secret-555"}, token=None)
        self.assertEqual((code, headers["WWW-Authenticate"]), (401, "Bearer"), body)
        yield self.assert_error("POST", "/api/terminals/555/admit", 403, "wrong API token", body={"secret": "secret-555"}, token="guess")
        yield self.assert_error("POST", "/api/terminals/555/admit", 400, "give its secret", body={})
        code, term, _ = yield self.call("POST", "/api/terminals/555/admit", {"secret": "secret-555"})
        self.assertEqual((code, term["admission"]), (200, "admitted"))
        yield wait_until(lambda: self.site.online(555), "555 connects once admitted")

        code, term, _ = yield self.call("POST", "/api/terminals/555/refuse")
        self.assertEqual((code, term["admission"]), (200, "refused"))
        yield wait_until(lambda: not self.site.online(555), "555 disconnected once refused")

        yield self.assert_error("DELETE", f"/api/terminals/{A}", 409, "configuration")
        stranger.go_offline()
        code, body, _ = yield self.call("DELETE", "/api/terminals/555")
        self.assertEqual((code, body), (200, {"removed": 555}))
        yield self.assert_error("GET", "/api/terminals/555", 404, "no terminal 555")

    @defer.inlineCallbacks
    def test_a_terminal_admitted_before_it_first_connects_is_let_in(self):
        yield self.assert_error("POST", "/api/terminals/777/admit", 404, "give its secret", body={})
        code, term, _ = yield self.call("POST", "/api/terminals/777/admit", {"secret": "secret-777"})
        self.assertEqual((code, term["admission"], term["online"]), (200, "admitted", False))
        newcomer = DialingTerminal(Terminal(777, "secret-777"), self.site.gateway.reactor, "127.0.0.1", self.site.port).start()
        self.addCleanup(newcomer.go_offline)
        yield wait_until(lambda: self.site.online(777), "777 let in on its first connection")

    @defer.inlineCallbacks
    def test_a_terminal_admitted_with_access_groups_gets_their_users_in_specific_mode(self):
        yield self.call("PUT", "/api/sync", {"mode": "specific"})
        for user_id, groups in (("g3", [3]), ("g4", [4])):
            code, _, _ = yield self.call("POST", "/api/users", {"user_id": user_id, "name": user_id, "access_groups": groups})
            self.assertEqual(code, 201)
        code, term, _ = yield self.call("POST", "/api/terminals/778/admit", {"secret": "secret-778", "access_groups": [3]})
        self.assertEqual((code, term["access_groups"]), (200, [3]))
        newcomer = Terminal(778, "secret-778")
        link = DialingTerminal(newcomer, self.site.gateway.reactor, "127.0.0.1", self.site.port).start()
        self.addCleanup(link.go_offline)
        yield wait_until(lambda: "g3" in newcomer.users, "the user of group 3 on the terminal admitted with group 3")
        self.assertNotIn("g4", newcomer.users)
        yield self.assert_error("POST", f"/api/terminals/{A}/admit", 409, "configuration", body={"access_groups": [1]})


class UserTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_users_created_edited_and_deleted_reach_the_terminals(self):
        new = {"user_id": "srv-1", "name": "Ana", "pin": "1234", "access_groups": [1], "cards": [{"type": "SMART_CARD", "data": "0a0b0c"}]}
        code, user, _ = yield self.call("POST", "/api/users", new)
        self.assertEqual(code, 201, user)
        self.assertEqual(set(user), USER_KEYS)
        self.assertEqual((user["name"], user["has_pin"], user["cards"], user["access_groups"]), ("Ana", True, ["SMART_CARD"], [1]))
        terminal = self.site.terminals[A]
        yield wait_until(lambda: "srv-1" in terminal.users and terminal.users["srv-1"].name == "Ana", "srv-1 on terminal A")

        code, user, _ = yield self.call("PATCH", "/api/users/srv-1", {"name": "Ana B", "disabled": True})
        self.assertEqual((code, user["name"], user["disabled"]), (200, "Ana B", True))
        yield wait_until(lambda: terminal.users["srv-1"].name == "Ana B", "the edit on terminal A")

        code, body, _ = yield self.call("DELETE", "/api/users/srv-1")
        self.assertEqual((code, body), (200, {"deleted": "srv-1"}))
        yield wait_until(lambda: "srv-1" not in terminal.users, "the deletion on terminal A")
        yield self.assert_error("GET", "/api/users/srv-1", 404, "no user 'srv-1'")

    @defer.inlineCallbacks
    def test_user_changes_that_cannot_apply_are_refused(self):
        code, _, _ = yield self.call("POST", "/api/users", {"user_id": "dup"})
        self.assertEqual(code, 201)
        yield self.assert_error("POST", "/api/users", 409, "already exists", body={"user_id": "dup"})
        yield self.assert_error("PATCH", "/api/users/ghost", 404, "no user 'ghost'", body={"name": "X"})
        yield self.assert_error("DELETE", "/api/users/ghost", 404, "no user 'ghost'")
        yield self.assert_error("PATCH", "/api/users/dup", 400, "body must give at least one of name, pin", body={})

    @defer.inlineCallbacks
    def test_an_edit_adds_and_removes_some_cards_and_groups_and_keeps_the_others(self):
        smart, csn = {"type": "SMART_CARD", "data": "00112233"}, {"type": "CSN", "data": "04a1b2c3"}
        new = {"user_id": "m-1", "access_groups": [1, 2], "cards": [smart], "validity": {"start": 10, "end": 20},
               "security_level": 3, "auth_mode": 5}
        code, user, _ = yield self.call("POST", "/api/users", new)
        self.assertEqual((code, user["validity"], user["security_level"], user["auth_mode"]), (201, {"start": 10, "end": 20}, 3, 5))
        code, user, _ = yield self.call("PATCH", "/api/users/m-1", {"add_cards": [csn], "add_access_groups": [3, 1],
                                                                    "remove_access_groups": [2]})
        self.assertEqual((code, user["cards"], user["access_groups"]), (200, ["CSN", "SMART_CARD"], [1, 3]), user)  # records keep cards in canonical order
        before = self.site.server_record("m-1")
        code, again, _ = yield self.call("PATCH", "/api/users/m-1", {"add_cards": [csn], "name": before.name})  # all held already
        self.assertEqual((code, again["change_seq"]), (200, user["change_seq"]), "no new version of a user the edit left as it was")
        code, user, _ = yield self.call("PATCH", "/api/users/m-1", {"remove_cards": [smart]})
        self.assertEqual(user["cards"], ["CSN"])
        self.assertEqual(self.site.server_record("m-1").cards[0].data, bytes.fromhex("04a1b2c3"))

        yield self.assert_error("PATCH", "/api/users/m-1", 409, "has no card SMART_CARD:00112233 to remove", body={"remove_cards": [smart]})
        yield self.assert_error("PATCH", "/api/users/m-1", 409, "has no access group 9 to remove", body={"remove_access_groups": [9]})
        yield self.assert_error("PATCH", "/api/users/m-1", 400, "not both: give cards or add_cards/remove_cards", body={"cards": [], "add_cards": [csn]})
        self.assertEqual(self.site.server_record("m-1").access_groups, (1, 3))  # a refused edit changed nothing
        code, user, _ = yield self.call("PATCH", "/api/users/m-1", {"validity": None, "security_level": None, "auth_mode": None})
        self.assertEqual((user["validity"], user["security_level"], user["auth_mode"]), (None, None, None))

    @defer.inlineCallbacks
    def test_users_are_paged_by_id_and_searched_by_id_or_name(self):
        for user_id, name in [("p-1", "Ana Silva"), ("p-2", "Bo Chen"), ("p-3", "ana maria"), ("p-4", "Dee"), ("p-5", "100% Eve")]:
            code, _, _ = yield self.call("POST", "/api/users", {"user_id": user_id, "name": name})
            self.assertEqual(code, 201)
        seen, after = [], ""
        while True:
            page = yield self.get(f"/api/users?limit=2{after}")
            seen += [u["user_id"] for u in page["users"]]
            if not page["more"]:
                break
            self.assertEqual(page["next"], seen[-1])
            after = f"&after={page['next']}"
        self.assertEqual(seen, ["p-1", "p-2", "p-3", "p-4", "p-5"])
        found = yield self.get("/api/users?search=ANA")
        self.assertEqual([u["user_id"] for u in found["users"]], ["p-1", "p-3"])
        found = yield self.get("/api/users?search=%25")  # a literal %, not a wildcard
        self.assertEqual([u["user_id"] for u in found["users"]], ["p-5"])
        found = yield self.get("/api/users?search=p-4")
        self.assertEqual([u["user_id"] for u in found["users"]], ["p-4"])

    @defer.inlineCallbacks
    def test_a_user_enrolled_at_a_terminal_is_shown_as_a_credentials_summary(self):
        person = yield self.enroll(A, "t-1")
        code, user, _ = yield self.call("GET", "/api/users/t-1", token=None)
        self.assertEqual(code, 200)
        self.assertEqual(set(user), USER_KEYS)  # nothing else: no templates, no PIN hash
        self.assertEqual(user["fingerprints"], len(person.fingerprints))
        self.assertEqual(user["faces"], len(person.faces))
        self.assertEqual(user["cards"], [card.type.name for card in person.cards])
        self.assertTrue(user["has_pin"])
        self.assertEqual(user["name"], person.name)


class EventTests(ApiTestCase):
    @defer.inlineCallbacks
    def enroll_and_verify(self):
        """e-1 enrolled at A (pulled, pushed to B), then verified at B: terminal and sync events."""
        yield self.enroll(A, "e-1")
        yield wait_until(lambda: self.site.count_events(type=APPLIED_BY_DEVICE, user_id="e-1") == 1, "e-1 applied on B")
        self.site.terminals[B].verify("e-1", Credential.CARD)
        yield wait_until(lambda: self.site.count_events(type="VERIFY_SUCCESS") == 1, "the verification stored")

    @defer.inlineCallbacks
    def test_events_filter_by_type_terminal_user_and_time(self):
        yield self.enroll_and_verify()
        everything = (yield self.get("/api/events"))["events"]
        ids = [e["id"] for e in everything]
        self.assertEqual(ids, sorted(ids, reverse=True))  # newest first

        def types(events):
            return sorted(e["type"] for e in events)

        device = (yield self.get("/api/events?type=device-update"))["events"]
        self.assertEqual([(e["type"], e["terminal_id"], e["user_id"], e["sync"]) for e in device], [(SAVED_FROM_DEVICE, A, "e-1", True)])
        self.assertEqual((yield self.get("/api/events?type=User%20update%20succeeded%20(Device)"))["events"], device)
        both = (yield self.get("/api/events?type=device-update&type=server-update"))["events"]
        self.assertEqual(types(both), [SAVED_FROM_DEVICE, APPLIED_BY_DEVICE])
        sync = (yield self.get("/api/events?type=sync"))["events"]
        self.assertEqual(types(sync), types(e for e in everything if e["type"] in SYNC_EVENT_TYPES))
        self.assertTrue(all(e["sync"] for e in sync))

        verify = (yield self.get("/api/events?type=VERIFY_SUCCESS"))["events"]
        self.assertEqual([(e["terminal_id"], e["user_id"]) for e in verify], [(B, "e-1")])
        on_b = (yield self.get(f"/api/events?terminal={B}"))["events"]
        self.assertEqual({e["terminal_id"] for e in on_b}, {B})
        self.assertIn(verify[0], on_b)
        self.assertEqual(on_b, [e for e in everything if e["terminal_id"] == B])
        of_user = (yield self.get("/api/events?user=e-1"))["events"]
        self.assertEqual(of_user, [e for e in everything if e["user_id"] == "e-1"])

        moment = verify[0]["occurred_ms"]
        since = (yield self.get(f"/api/events?since={moment}"))["events"]
        self.assertEqual(since, [e for e in everything if e["occurred_ms"] >= moment])
        until = (yield self.get(f"/api/events?until={moment}"))["events"]
        self.assertEqual(until, [e for e in everything if e["occurred_ms"] < moment])
        iso = datetime.fromtimestamp(moment / 1000, timezone.utc).isoformat().replace("+", "%2B")
        self.assertEqual((yield self.get(f"/api/events?since={iso}"))["events"], since)
        yield self.assert_error("GET", "/api/events?type=NOPE", 400, "type must be an event type GET /api/event-types lists")

    @defer.inlineCallbacks
    def test_events_are_paged_by_id_both_ways(self):
        for _ in range(5):
            self.site.terminals[A].verify("nobody")
        yield wait_until(lambda: self.site.count_events(type="VERIFY_FAIL") == 5, "five failed verifications")
        everything = [e["id"] for e in (yield self.get("/api/events?type=VERIFY_FAIL"))["events"]]
        back, before = [], ""
        while True:
            page = yield self.get(f"/api/events?type=VERIFY_FAIL&limit=2{before}")
            back += [e["id"] for e in page["events"]]
            if not page["more"]:
                break
            before = f"&before={back[-1]}"
        self.assertEqual(back, everything)
        forward = yield self.get(f"/api/events?type=VERIFY_FAIL&after={everything[-1]}&limit=3")
        self.assertEqual([e["id"] for e in forward["events"]], sorted(everything)[1:4])
        self.assertTrue(forward["more"])
        window = yield self.get(f"/api/events?type=VERIFY_FAIL&after={everything[-1]}&before={everything[0]}")
        self.assertEqual([e["id"] for e in window["events"]], sorted(everything)[1:-1])

    @defer.inlineCallbacks
    def test_event_types_list_the_sync_events_first(self):
        listed = (yield self.get("/api/event-types"))["types"]
        self.assertEqual([t["type"] for t in listed if t["sync"]], list(SYNC_EVENT_TYPES))
        self.assertIn({"type": SAVED_FROM_DEVICE, "sync": True, "short": "device-update"}, listed)
        self.assertIn({"type": "ENROLL_SUCCESS", "sync": False, "short": None}, listed)


class PostgresUserTests(UserTests):
    """Search and paging are SQL that differs between dialects: run them on PostgreSQL too."""

    backend = "postgresql"


class PostgresEventTests(EventTests):
    backend = "postgresql"


class StreamTests(ApiTestCase):
    @property
    def stream(self):
        return self.site.gateway.http_port.factory.stream

    @defer.inlineCallbacks
    def test_the_stream_delivers_new_events_as_they_are_stored(self):
        client = ApiClient(self.url)

        def first_device_update():
            for event in client.stream("/api/stream", {"type": "device-update"}, idle_timeout=10):
                return event

        received = threads.deferToThread(first_device_update)
        yield wait_until(lambda: any(c.started for c in self.stream.clients), "the stream client subscribed")
        yield self.enroll(A, "s-1")
        event = yield received
        self.assertEqual((event["type"], event["user_id"], event["terminal_id"]), (SAVED_FROM_DEVICE, "s-1", A))
        yield wait_until(lambda: not self.stream.clients, "the client gone from the stream")

    @defer.inlineCallbacks
    def test_a_resumed_stream_replays_what_was_stored_since(self):
        yield self.enroll(A, "r-1")
        yield wait_until(lambda: self.site.count_events(type=APPLIED_BY_DEVICE, user_id="r-1") == 1, "r-1 applied on B")
        stored = list(reversed((yield self.get("/api/events?user=r-1"))["events"]))
        url = f"{self.url}/api/stream?user=r-1&after={stored[0]['id']}"
        replayed = yield threads.deferToThread(first_streamed, url)
        self.assertEqual(replayed, stored[1])
        resumed = yield threads.deferToThread(first_streamed, url, [("Last-Event-ID", str(stored[1]["id"]))])
        self.assertEqual(resumed, stored[2])


class SyncModeTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_the_sync_mode_is_read_and_changed(self):
        shown = yield self.get("/api/sync")
        self.assertEqual(shown["mode"], "all-with-device-updates")
        self.assertEqual(shown["modes"], ["disabled", "specific", "all", "all-with-device-updates"])
        yield self.assert_error("PUT", "/api/sync", 401, "Authorization: Bearer", body={"mode": "all"}, token=None)
        code, shown, _ = yield self.call("PUT", "/api/sync", {"mode": "all"})
        self.assertEqual((code, shown["mode"], shown["pulls_device_updates"]), (200, "all", False))
        self.assertEqual(self.site.gateway.settings.mode, "all")
        self.assertEqual((yield self.get("/api/sync"))["mode"], "all")
        yield self.assert_error("PUT", "/api/sync", 400, "mode must be one of disabled, specific", body={"mode": "sideways"})
        yield self.assert_error("PUT", "/api/sync", 400, "mode must be a string", body={"mode": 3})


class BadInputTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_bad_bodies_get_a_clear_4xx_and_change_nothing(self):
        cases = [
            ({"raw": b"{not json"}, 400, "not valid JSON"),
            ({}, 400, "needs a JSON body with user_id"),
            ({"body": ["x"]}, 400, "body must be an object"),
            ({"body": {"user_id": 5}}, 400, "user_id must be a string"),
            ({"body": {"user_id": "x", "access_groups": "1"}}, 400, "access_groups must be a list"),
            ({"body": {"user_id": "x", "access_groups": [True]}}, 400, "access_groups[0] must be an integer"),
            ({"body": {"user_id": "x", "access_groups": [-1]}}, 400, "access_groups[0] must be from 0"),
            ({"body": {"user_id": "x", "colour": "red"}}, 400, "unknown field(s) colour"),
            ({"body": {"user_id": "x", "cards": [{"type": "CSN", "data": "zz"}]}}, 400, "cards[0].data must be lowercase hex"),
            ({"body": {"user_id": "x", "cards": [{"type": "PUNCHCARD", "data": "00"}]}}, 400, "cards[0].type must be one of"),
            ({"body": {"user_id": "x", "pin": "12a4"}}, 400, "pin must be digits"),
            ({"body": {"user_id": "é" * 20}}, 400, "user id must be 1 to 32 bytes"),
            ({"raw": b'{"user_id": "x", "name": "' + b"a" * 70_000 + b'"}'}, 413, "larger than 65536 bytes"),
        ]
        for options, status, mentions in cases:
            yield self.assert_error("POST", "/api/users", status, mentions, **options)
        self.assertEqual((yield self.get("/api/users"))["users"], [])

    @defer.inlineCallbacks
    def test_a_body_of_whitespace_is_no_json_and_no_body_is_an_empty_one(self):
        yield self.assert_error("POST", "/api/reconcile", 400, "not valid JSON", raw=b" \n\t")
        code, found, _ = yield self.call("POST", "/api/reconcile", raw=b"")
        self.assertEqual(code, 200, found)

    @defer.inlineCallbacks
    def test_the_document_states_the_set_field_rule_and_lists_what_no_schema_can(self):
        document = yield self.get("/api/openapi.json")
        edit = document["paths"]["/api/users/{user_id}"]["patch"]
        schema = edit["requestBody"]["content"]["application/json"]["schema"]
        self.assertEqual(schema["dependentSchemas"]["cards"]["not"], {"anyOf": [{"required": ["add_cards"]}, {"required": ["remove_cards"]}]})
        self.assertIn("access_groups", schema["dependentSchemas"])
        self.assertIn("validity period ends before it starts", edit["responses"]["400"]["description"])

    @defer.inlineCallbacks
    def test_an_operation_without_parameters_lists_the_400_an_unknown_one_gets(self):
        document = yield self.get("/api/openapi.json")
        yield self.assert_error("GET", "/api/sync?x=1", 400, "unknown query parameter 'x'")
        self.assertIn("400", document["paths"]["/api/sync"]["get"]["responses"])

    @defer.inlineCallbacks
    def test_bad_paths_methods_and_parameters_get_a_clear_4xx(self):
        yield self.assert_error("GET", "/api/events?limit=0", 400, "limit must be from 1 to 1000")
        yield self.assert_error("GET", "/api/events?limit=many", 400, "limit must be an integer")
        yield self.assert_error("GET", f"/api/events?after={10**20}", 400, "after must be from 0 to")
        yield self.assert_error("GET", f"/api/events?after=-{10**300}", 400, "after must be from 0 to")
        yield self.assert_error("GET", f"/api/events?limit={10**30}", 400, "limit must be from 1 to 1000")
        code, _, _ = yield self.call("GET", "/api/events?limit=" + "0" * 30 + "50")  # leading zeros: still 50
        self.assertEqual(code, 200)
        yield self.assert_error("GET", "/api/stream", 400, "Last-Event-ID must be from 0", headers=[("Last-Event-ID", "-5")])
        yield self.assert_error("GET", "/api/events?after=--5", 400, "after must be an integer")
        yield self.assert_error("GET", f"/api/events?after={2**63}", 400, "after must be from")
        yield self.assert_error("GET", "/api/events?after=-1", 400, "after must be")
        yield self.assert_error("GET", "/api/events?since=%C2%B2", 400, "since must be")
        yield self.assert_error("GET", "/api/stream", 400, "Last-Event-ID must be an integer", headers=[("Last-Event-ID", "x")])
        yield self.assert_error("GET", "/api/events?colour=red", 400, "unknown query parameter 'colour'")
        yield self.assert_error("GET", "//nope", 404, "nothing at //nope")
        yield self.assert_error("GET", "//api/users", 404, "nothing at //api/users")
        yield self.assert_error("GET", "/api/events?since=yesterday", 400, "since must be milliseconds since the epoch or an ISO 8601 time")
        yield self.assert_error("GET", "/api/events?user=a&user=b", 400, "user may be given once")
        yield self.assert_error("GET", "/api/nowhere", 404, "no such API endpoint")
        body = yield self.assert_error("DELETE", "/api/sync", 405, "use GET, PUT")
        yield self.assert_error("GET", "/nowhere", 404, "nothing at /nowhere")
        yield self.assert_error("GET", "/page", 404, "nothing at /page")  # the page's folder itself
        yield self.assert_error("DELETE", "/page", 404, "nothing at /page")
        yield self.assert_error("GET", "/api/terminals?limit", 400, "query parameter 'limit' has no value")
        yield self.assert_error("GET", "/api/terminals?limit%3D5", 400, "query parameter 'limit=5' has no value")
        yield self.assert_error("GET", "/api/terminals?after=5;limit", 400, "query parameter 'limit' has no value")
        self.assertEqual(body["status"], 405)

    @defer.inlineCallbacks
    def test_hostile_input_gets_a_clear_400_never_a_500(self):
        plain = "no control or bidirectional-control characters"
        yield self.assert_error("POST", "/api/users", 400, "lone surrogate", raw=b'{"user_id":"\\ud800"}')
        yield self.assert_error("POST", "/api/users", 400, "names 'user_id' twice", raw=b'{"user_id":"u1","user_id":"u2"}')
        yield self.assert_error("POST", "/api/users", 400, "a number of 5000 digits", raw=b'{"user_id":"big","security_level":' + b"9" * 5000 + b"}")
        yield self.assert_error("POST", "/api/users", 400, "nests deeper than", raw=b"[" * 30_000 + b"]" * 30_000)
        yield self.assert_error("POST", "/api/users", 400, "nests deeper than", raw=b'{"user_id":"x","name":' + b"[" * 20 + b"]" * 20 + b"}")
        yield self.assert_error("GET", "/api/users?search=%00", 400, f"search holds a control character (U+0000) at character 1: {plain}")
        yield self.assert_error("POST", "/api/users", 400, f"user_id holds RIGHT-TO-LEFT OVERRIDE (U+202E) at character 4: {plain}", body={"user_id": "abc\u202edef"})
        yield self.assert_error("POST", "/api/users", 400, plain, body={"user_id": "a\x00b"})
        yield self.assert_error("POST", "/api/users", 400, plain, body={"user_id": "x", "name": "Eve\u2066"})
        yield self.assert_error("GET", "/api/users/a%E2%80%AEb", 400, plain)
        for hostile in ("\x1b[2J", "a\r\nb", "a\x85b", "a\u200fb", "a\u061cb"):  # ESC, CR/LF, C1, RLM, ALM
            yield self.assert_error("POST", "/api/users", 400, "user_id holds", body={"user_id": hostile})
            yield self.assert_error("POST", "/api/users", 400, "name holds", body={"user_id": "x", "name": hostile})
        yield self.assert_error("POST", "/api/users", 400, "name is not in Unicode normalization form NFC",
                                body={"user_id": "x", "name": "Jose\u0301"})
        yield self.assert_error("POST", "/api/users", 400, "request body is not UTF-8",
                                raw='{"user_id": "utf16"}'.encode("utf-16"))
        yield self.assert_error("POST", "/api/users", 400, "validity period ends before it starts",
                                body={"user_id": "x", "validity": {"start": 10, "end": 5}})
        yield self.assert_error("POST", "/api/terminals/9223372036854775806/admit", 400, "terminal_id must be from 0 to 4294967295",
                                body={"secret": "s"})
        yield self.assert_error("GET", "/api/events?type=", 400, "type must be an event type")
        for path in ("/", "/metrics", "/page/app.js", "/api/users"):
            body = yield self.assert_error("TRACE", path, 405, "TRACE is not allowed here")
            self.assertEqual(body["status"], 405)
        self.assertEqual((yield self.get("/api/users"))["users"], [])

    @defer.inlineCallbacks
    def test_requests_naming_another_host_are_refused_on_loopback(self):
        """A web page that rebinds its DNS name to 127.0.0.1 must not read the API."""
        yield self.assert_error("GET", "/api/terminals", 403, "localhost or 127.0.0.1 only", headers=[("Host", "evil.example")])
        yield self.assert_error("GET", "/", 403, "Host header", headers=[("Host", "evil.example:8080")])
        code, _, _ = yield self.call("GET", "/api/terminals", headers=[("Host", f"localhost:{self.site.gateway.http_port.getHost().port}")])
        self.assertEqual(code, 200)


class NoTokenTests(ApiTestCase):
    config = {}

    @defer.inlineCallbacks
    def test_writes_are_refused_until_a_token_is_configured(self):
        yield self.assert_error("POST", "/api/users", 403, "set api_token in the gateway configuration", body={"user_id": "x"})
        yield self.assert_error("PUT", "/api/sync", 403, "set api_token", body={"mode": "all"}, token=None)
        self.assertEqual((yield self.get("/api/users"))["users"], [])


class DocumentTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_the_openapi_document_describes_every_endpoint_and_they_answer(self):
        spec = yield self.get("/api/openapi.json")
        self.assertEqual(spec["openapi"], "3.1.0")
        routes = {(r.method.lower(), r.path) for r in self.site.gateway.http_port.factory.resource.children[b"api"].routes}
        documented = {(method, path) for path, ops in spec["paths"].items() for method in ops if path.startswith("/api/")}
        self.assertEqual(documented, routes)
        text = json.dumps(spec)
        for name in spec["components"]["schemas"]:
            self.assertIn(f"#/components/schemas/{name}", text)
        for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
            self.assertIn(ref.rsplit("/", 1)[1], spec["components"]["schemas"])
        for path, ops in spec["paths"].items():
            if "get" in ops and "{" not in path and path != "/api/stream":
                code, _, _ = yield self.call("GET", path, token=None)
                self.assertEqual(code, 200, path)

    @defer.inlineCallbacks
    def test_the_page_and_its_files_are_served_with_a_strict_policy(self):
        for path, kind in [("/", "text/html"), ("/page/app.js", "text/javascript"), ("/page/style.css", "text/css")]:
            code, text, headers = yield self.call("GET", path, token=None)
            self.assertEqual(code, 200)
            self.assertTrue(headers["Content-Type"].startswith(kind))
            self.assertIn("default-src 'self'", headers["Content-Security-Policy"])
        self.assertIn("EventSource", (yield self.call("GET", "/page/app.js"))[1])


# -- without sockets ------------------------------------------------------------------------------


class FakeGateway:
    class config:
        api_token = TOKEN


def test_the_log_line_of_a_500_carries_its_traceback():
    try:
        raise ZeroDivisionError("the bug")
    except ZeroDivisionError:
        failure = Failure()
    line = log_line({"log_format": "API request {method} {path} failed", "method": b"GET", "path": b"/api/x",
                      "log_failure": failure, "log_level": LogLevel.critical, "log_namespace": "gateway.http"})
    assert line.startswith("CRITICAL gateway.http: API request")
    assert "Traceback" in line and "ZeroDivisionError: the bug" in line


def test_an_unexpected_error_is_logged_with_its_traceback_and_answered_with_json():
    def broken(call):
        raise ZeroDivisionError("the bug")

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        request = DummyRequest([])
        request.path, request.method, request.content = b"/api/broken", b"GET", BoundedBody()
        assert ApiResource(FakeGateway(), None, [Route("GET", "/api/broken", broken, "fails")], None).render(request) is NOT_DONE_YET
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert request.responseCode == 500
    assert json.loads(b"".join(request.written)) == {"error": "internal error; the gateway log has the details", "status": 500}
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert [f.type for f in failures] == [ZeroDivisionError]


class FakeStreamRequest:
    """What StreamClient uses of a request, recording what was written and whether it was cut off."""

    def __init__(self):
        self.written, self.headers, self.aborted = [], {}, False
        self.channel = self
        self.transport = self
        self._finished = []

    def setHeader(self, name, value):
        self.headers[name] = value

    def registerProducer(self, producer, streaming):
        assert streaming

    def notifyFinish(self):
        d = defer.Deferred()
        self._finished.append(d)
        return d

    def write(self, data):
        self.written.append(data)

    def getClientAddress(self):
        return "client"

    def abortConnection(self):
        self.aborted = True
        for d in self._finished:
            d.errback(ConnectionError("aborted"))


def events(first, n):
    return [dict(id=i, type="VERIFY_FAIL", terminal_id=1, user_id="u", occurred_ms=i) for i in range(first, first + n)]


def encoded(found: list[dict]) -> list[tuple[dict, bytes]]:
    return [(event, encode(event)) for event in found]


def written_ids(request) -> list[int]:
    return [int(w.split(b"\n")[0][4:]) for w in request.written if w.startswith(b"id: ")]


def test_a_stream_client_buffers_while_its_socket_is_full_and_is_dropped_beyond_its_bound():
    request, dropped = FakeStreamRequest(), []
    client = StreamClient(request, EventFilter(), dropped.append)
    client.open()
    client.start(events(1, 2), skipped=False)
    client.pauseProducing()
    client.offer(encoded(events(3, 2)))
    assert written_ids(request) == [1, 2]
    client.resumeProducing()
    assert written_ids(request) == [1, 2, 3, 4]
    client.pauseProducing()
    client.offer(encoded(events(5, StreamClient.max_buffered + 1)))
    assert request.aborted and dropped == [client] and client.gone


def test_live_events_wait_for_the_replay_and_a_gap_is_announced():
    request = FakeStreamRequest()
    client = StreamClient(request, EventFilter(), lambda c: None)
    client.open()
    client.offer(encoded(events(9, 1)))  # arrives while the replay is being read
    client.start([], skipped=True)
    assert request.written[1] == b"event: gap\ndata: {}\n\n"  # the gap is announced first...
    assert len(request.written) == 3 and request.written[2].startswith(b"id: 9\n")  # ...then the live event
    assert written_ids(request) == [9]


def test_a_stream_client_sends_only_matching_events():
    request = FakeStreamRequest()
    client = StreamClient(request, EventFilter(types=("VERIFY_SUCCESS",)), lambda c: None)
    client.open()
    client.start([], skipped=False)
    client.offer(encoded(events(1, 3) + [dict(id=4, type="VERIFY_SUCCESS", terminal_id=1, user_id="u", occurred_ms=4)]))
    assert written_ids(request) == [4]
