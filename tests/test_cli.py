"""The ``gateway`` administration commands, run as processes against a real running gateway:
readable tables, --json for scripts, and one clear line (never a traceback) when something fails."""

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

from twisted.internet import defer, threads

from wcwidth import wcswidth

import pytest

from gateway.admin import table
from gateway.cli import build_parser
from live_site import refusing_port, wait_until
from api_site import TOKEN, A, B, ApiTestCase
from gateway.sync.monitor import SAVED_FROM_DEVICE
from protocol.records import Card, CardType

ROOT = Path(__file__).resolve().parent.parent


def environment(token: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_API_TOKEN"}
    if token:
        env["GATEWAY_API_TOKEN"] = token
    return env


def gateway(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=environment(token),
                          capture_output=True, text=True, timeout=30)


def assert_one_line_error(test, done: subprocess.CompletedProcess, *mentions: str) -> None:
    test.assertEqual(done.returncode, 1, done.stdout)
    test.assertNotIn("Traceback", done.stderr)
    test.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
    test.assertTrue(done.stderr.startswith("gateway: "), done.stderr)
    for text in mentions:
        test.assertIn(text, done.stderr)


class CommandTests(ApiTestCase):
    def run_gateway(self, *args, token=None):
        return threads.deferToThread(gateway, *args, "--url", self.url, token=token)

    @defer.inlineCallbacks
    def test_terminals_and_sync_mode(self):
        done = yield self.run_gateway("terminals")
        self.assertEqual(done.returncode, 0, done.stderr)
        header, *rows = done.stdout.splitlines()
        self.assertEqual(header.split(), ["ID", "NAME", "STATE", "ADMISSION", "LINK", "LAST", "SEEN", "MODEL", "CURSOR", "LAG"])
        self.assertEqual([row.split()[:3] for row in rows], [[str(A), "online", "admitted"], [str(B), "online", "admitted"]])
        done = yield self.run_gateway("terminals", "--json")
        self.assertEqual([t["id"] for t in json.loads(done.stdout)["terminals"]], [A, B])

        done = yield self.run_gateway("terminals", "refuse", str(B), token=TOKEN)
        self.assertEqual(done.stdout, f"terminal {B} refused\n")
        yield wait_until(lambda: not self.site.online(B), "B disconnected")
        done = yield self.run_gateway("terminals", "admit", str(B), token=TOKEN)
        self.assertEqual(done.stdout, f"terminal {B} admitted\n")
        yield wait_until(lambda: self.site.online(B), "B back")

        self.assertEqual((yield self.run_gateway("sync-mode")).stdout, "all-with-device-updates\n")
        self.assertEqual((yield self.run_gateway("sync-mode", "all", token=TOKEN)).stdout,
                         "sync mode set to all: every user goes to every terminal; keypad changes are not pulled\n"
                         "stopped: keypad enrolments and edits no longer reach the server: they are logged, and pulled once "
                         "all-with-device-updates is back\n")
        said = (yield self.run_gateway("sync-mode", "specific", token=TOKEN)).stdout.splitlines()
        self.assertEqual(said[0], "sync mode set to specific: users go to the terminals sharing one of their access groups; "
                                  "keypad changes are not pulled")
        self.assertIn("only users sharing one of its access groups", said[1])
        yield self.run_gateway("sync-mode", "all", token=TOKEN)
        self.assertEqual(self.site.gateway.settings.mode, "all")
        done = yield self.run_gateway("terminals", "admit", "779", "--secret", "s", "--group", "2", "--group", "1", token=TOKEN)
        self.assertEqual(done.stdout, "terminal 779 admitted (access groups 1, 2)\n", done.stderr)
        self.assertEqual(self.site.gateway.registry.terminals[779].access_groups, {1, 2})
        wrong = yield self.run_gateway("sync-mode", "sideways", token=TOKEN)
        self.assertEqual(wrong.returncode, 2)  # a usage error, caught before asking the gateway
        self.assertIn("invalid choice: 'sideways'", wrong.stderr)

        done = yield self.run_gateway("reconcile", token=TOKEN)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines()[-1], "0 repaired, 0 left as the rules allow")
        self.assertTrue(all(line.startswith("terminal ") for line in done.stdout.splitlines()[:-1]), done.stdout)

    @defer.inlineCallbacks
    def test_users_round_trip(self):
        done = yield self.run_gateway("users", "add", "u1", "--name", "Ana", "--pin", "1234", "--group", "3", "--card", "smart_card:0a0b", token=TOKEN)
        self.assertEqual(done.stdout, "user u1 created (change 1)\n", done.stderr)
        shown = (yield self.run_gateway("users", "show", "u1")).stdout
        self.assertIn("name           Ana\n", shown)
        self.assertIn("cards          SMART_CARD\n", shown)
        self.assertIn("has_pin        True\n", shown)
        header, row = (yield self.run_gateway("users", "list")).stdout.splitlines()
        self.assertEqual(row.split(), ["u1", "Ana", "3", "SMART_CARD", "0", "0", "yes"])
        listed = json.loads((yield self.run_gateway("users", "list", "--json", "--search", "an")).stdout)
        self.assertEqual([u["user_id"] for u in listed["users"]], ["u1"])

        done = yield self.run_gateway("users", "edit", "u1", "--name", "Ana B", "--disabled", token=TOKEN)
        self.assertEqual(done.stdout, "user u1 changed (change 2)\n", done.stderr)
        self.assertEqual(self.site.server_record("u1").name, "Ana B")
        self.assertEqual((yield self.run_gateway("users", "delete", "u1", token=TOKEN)).stdout, "user u1 deleted\n")
        assert_one_line_error(self, (yield self.run_gateway("users", "show", "u1")), "no user 'u1'", "[HTTP 404]")

    @defer.inlineCallbacks
    def test_users_edit_adds_and_removes_cards_and_groups_sets_validity_and_clears_fields(self):
        done = yield self.run_gateway("users", "add", "u2", "--name", "Bo", "--card", "smart_card:0a0b", "--group", "1", "--group", "2",
                                      "--valid-from", "2025-03-01", "--valid-until", "2025-12-31", "--security-level", "3",
                                      "--auth-mode", "5", token=TOKEN)
        self.assertEqual(done.returncode, 0, done.stderr)
        start, end = datetime(2025, 3, 1).timestamp(), datetime(2025, 12, 31, 23, 59, 59).timestamp()
        self.assertEqual(self.site.server_record("u2").validity, (start, end))
        shown = (yield self.run_gateway("users", "show", "u2")).stdout
        self.assertIn("validity       from 2025-03-01 00:00:00 until 2025-12-31 23:59:59\n", shown)
        self.assertIn("security_level 3\n", shown)
        self.assertIn("auth_mode      5\n", shown)

        done = yield self.run_gateway("users", "edit", "u2", "--add-card", "csn:04a1", "--add-group", "7", "--remove-group", "2", token=TOKEN)
        self.assertEqual(done.returncode, 0, done.stderr)
        record = self.site.server_record("u2")
        self.assertEqual(([c.type.name for c in record.cards], record.access_groups), (["CSN", "SMART_CARD"], (1, 7)))
        yield self.run_gateway("users", "edit", "u2", "--remove-card", "SMART_CARD:0a0b", "--valid-until", "2026-01-31T18:00", token=TOKEN)
        record = self.site.server_record("u2")
        self.assertEqual((record.cards[0].data, record.validity), (bytes.fromhex("04a1"), (start, datetime(2026, 1, 31, 18).timestamp())))

        done = yield self.run_gateway("users", "edit", "u2", "--clear", "name", "--clear", "validity", "--clear", "auth-mode", token=TOKEN)
        self.assertEqual(done.returncode, 0, done.stderr)
        record = self.site.server_record("u2")
        self.assertEqual((record.name, record.validity, record.auth_mode, record.security_level), (None, None, None, 3))
        self.assertIn("validity       always\n", (yield self.run_gateway("users", "show", "u2")).stdout)

        assert_one_line_error(self, (yield self.run_gateway("users", "edit", "u2", "--remove-card", "csn:ffff", token=TOKEN)),
                              "user 'u2' has no card CSN:ffff to remove", "[HTTP 409]")
        assert_one_line_error(self, (yield self.run_gateway("users", "edit", "u2", "--card", "csn:01", "--add-card", "csn:02", token=TOKEN)),
                              "give one kind")
        assert_one_line_error(self, (yield self.run_gateway("users", "edit", "u2", "--clear", "name", "--name", "X", token=TOKEN)),
                              "--clear name and a new name")
        for wrong in (["--security-level", "256"], ["--valid-from", "yesterday"], ["--clear", "fingers"]):
            done = yield self.run_gateway("users", "edit", "u2", *wrong, token=TOKEN)
            self.assertEqual(done.returncode, 2, done.stderr)  # a usage error, before asking the gateway
            self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(self.site.server_record("u2").cards, record.cards)

    @defer.inlineCallbacks
    def test_writes_without_a_token_say_how_to_give_one(self):
        done = yield self.run_gateway("users", "add", "x")
        assert_one_line_error(self, done, "Authorization: Bearer", "GATEWAY_API_TOKEN", "[HTTP 401]")
        done = yield self.run_gateway("users", "add", "x", "--card", "nonsense", token=TOKEN)
        assert_one_line_error(self, done, "card must be TYPE:HEX")
        self.assertIsNone(self.site.server_record("x"))

    @defer.inlineCallbacks
    def test_events_listed_and_followed(self):
        yield self.enroll(A, "e-1")
        done = yield self.run_gateway("events", "--type", "device-update")
        header, line = done.stdout.splitlines()
        self.assertEqual(header.split(), ["ID", "WHEN", "TERMINAL", "ORIGIN", "TYPE", "USER", "DETAIL"])
        self.assertIn("User update succeeded (Device)", line)
        self.assertIn("e-1", line)
        self.assertEqual(line.split()[3], str(A))  # id, date, time, terminal

        follower = subprocess.Popen([sys.executable, "-m", "gateway.cli", "events", "--follow", "--json", "--type", "device-update",
                                     "--limit", "1", "--url", self.url], cwd=ROOT, env=environment(), stdout=subprocess.PIPE, text=True)
        watchdog = threading.Timer(20, follower.kill)  # bounds the blocking reads below
        watchdog.start()
        self.addCleanup(watchdog.cancel)
        self.addCleanup(follower.wait, 10)
        self.addCleanup(follower.kill)
        first = yield threads.deferToThread(follower.stdout.readline)
        self.assertEqual(json.loads(first)["user_id"], "e-1")
        stream = self.site.gateway.http_port.factory.stream
        yield wait_until(lambda: any(c.started for c in stream.clients), "the follower subscribed")
        yield self.enroll(B, "e-2")
        second = yield threads.deferToThread(follower.stdout.readline)
        self.assertEqual((json.loads(second)["user_id"], json.loads(second)["terminal_id"]), ("e-2", B))


class HistoryCommandTests(ApiTestCase):
    def run_gateway(self, *args, token=None):
        return threads.deferToThread(gateway, *args, "--url", self.url, token=token)

    @defer.inlineCallbacks
    def test_history_and_provenance_say_where_each_value_came_from_and_which_rule_decided(self):
        person = yield self.enroll(A, "h-1")
        card = Card(CardType.SMART_CARD, bytes.fromhex("77aa"))
        self.site.terminals[A].edit("h-1", name="Someone Else", cards=person.cards + (card,))  # the keypad edit of the issue
        yield wait_until(lambda: self.site.count_events(type=SAVED_FROM_DEVICE, user_id="h-1") == 2, "the edit merged")
        yield wait_until(lambda: card in getattr(self.site.terminals[B].users.get("h-1"), "cards", ()), "the merged version on B")
        self.site.terminals[B].delete("h-1")
        yield wait_until(lambda: "h-1" not in self.site.terminals[B].users, "deleted at B")

        events = (yield self.run_gateway("events", "--user", "h-1", "--jsonl")).stdout.splitlines()
        merged = [json.loads(e) for e in events if json.loads(e)["type"] == SAVED_FROM_DEVICE][-1]
        self.assertIn("card SMART_CARD 77aa (card added)", merged["detail"])
        self.assertIn("name 'Someone Else' (server field kept)", merged["detail"])

        done = yield self.run_gateway("users", "history", "h-1")
        self.assertEqual(done.returncode, 0, done.stderr)
        header, *rows = done.stdout.splitlines()
        self.assertEqual(header.split(), ["VERSION", "WHEN", "FROM", "FIELD", "OUTCOME", "WAS", "NOW", "/", "OFFERED", "RULE"])
        text = "\n".join(rows)
        for rule in ("new user", "card added", "server field kept"):
            self.assertIn(rule, text)
        yield wait_until(lambda: self.site.count_events(type="DELETE_SUCCESS", user_id="h-1") == 1, "the keypad delete stored")
        entries = [json.loads(line) for line in (yield self.run_gateway("users", "history", "h-1", "--jsonl")).stdout.splitlines()]
        self.assertEqual([(e["version"], e["source"], e["terminal_id"]) for e in entries], [(1, "terminal", A), (2, "terminal", A), (None, "terminal", B)])
        self.assertEqual(entries[-1]["changes"][0]["rule"], "delete at a terminal not applied to the server")

        done = yield self.run_gateway("users", "show", "h-1", "--provenance")
        given = {tuple(line.split()[:2]): line for line in done.stdout.splitlines()[1:]}
        self.assertIn(f"terminal {A}", given[("cards", "SMART_CARD")])
        self.assertIn("card added", given[("cards", "SMART_CARD")])
        self.assertIn("new user", given[("name", person.name.split()[0])])
        api = json.loads((yield self.run_gateway("users", "show", "h-1", "--provenance", "--json")).stdout)
        self.assertEqual({f["source"] for f in api["fields"]}, {"terminal"})


def test_an_unreachable_gateway_is_one_clear_line():
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        done = gateway("terminals", "--url", url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"gateway: cannot reach the gateway at {url}: ")
    assert done.stderr.rstrip().endswith("(is `gateway run` running? see --url)")
    assert len(done.stderr.splitlines()) == 1


def test_an_action_without_a_terminal_id_is_a_usage_error():
    done = gateway("terminals", "admit")
    assert done.returncode == 2
    assert "give an action and a terminal id" in done.stderr


def test_clearing_a_lockout_without_an_address_is_a_usage_error():
    done = gateway("lockouts", "clear")
    assert done.returncode == 2
    assert "give clear and an address" in done.stderr


def test_tables_line_up_by_display_width_with_wide_and_combining_characters():
    names = ["王小明", "Ana Lima", "Zoe\u0308 Ng", "佐藤 花子"]  # wide, plain, a combining mark, wide with a space
    text = table(["USER", "NAME", "CARDS"], [[n, name, "CSN"] for n, name in enumerate(names)])
    header, *rows = text.splitlines()
    assert {wcswidth(row[:row.rindex("CSN")]) for row in rows} == {wcswidth(header[:header.index("CARDS")])}


class OutageClient:
    """What the API answers while the database is down: nothing stored can be read, the
    monitoring events waiting to be saved come beside it, and the live stream brings one more."""

    WAITING = {"id": None, "terminal_id": 7, "origin": "device", "type": "Fail to save to the server DB", "user_id": "42",
               "occurred_ms": 1_700_000_000_000, "detail": "events not committed: database is locked"}

    def call(self, method, path, query=None, body=None):
        return {"events": [], "more": False, "unsaved": [self.WAITING], "database_error": "database is locked"}

    def stream(self, path, query=None):
        yield {**self.WAITING, "user_id": "43"}
        raise KeyboardInterrupt  # the operator's ^C


def test_events_during_an_outage_show_the_unsaved_events_and_the_error_and_follow_them(capsys):
    from gateway import admin

    args = build_parser().parse_args(["events", "--follow"])
    with pytest.raises(KeyboardInterrupt):
        admin.events(OutageClient(), args)
    out, err = capsys.readouterr()
    header, waiting, followed = out.splitlines()
    assert header.split() == ["ID", "WHEN", "TERMINAL", "ORIGIN", "TYPE", "USER", "DETAIL"]
    assert waiting.split()[0] == "unsaved" and "Fail to save to the server DB" in waiting and "42" in waiting
    assert followed.split()[0] == "unsaved" and "43" in followed
    assert "the database cannot be read (database is locked); 1 monitoring events wait to be saved" in err


def test_event_columns_line_up_for_every_type_of_ours_and_json_lines_are_one_object_each(capsys):
    from gateway import admin
    from gateway.sync.monitor import SYNC_EVENT_TYPES

    lines = [admin.event_line({"id": 1, "terminal_id": 7, "origin": None, "type": t, "user_id": "u-1", "occurred_ms": 1, "detail": "d"})
             for t in SYNC_EVENT_TYPES]
    assert len({line.index("u-1") for line in lines}) == 1
    assert admin.event_header().index("USER") == lines[0].index("u-1")

    class Listing(OutageClient):
        def call(self, method, path, query=None, body=None):
            return {"events": [{**self.WAITING, "id": 2}, {**self.WAITING, "id": 1}], "more": False, "unsaved": []}

    for form in ("--json", "--jsonl"):
        admin.events(Listing(), build_parser().parse_args(["events", form]))
        assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [1, 2]
