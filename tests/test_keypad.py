"""The simulated terminal's keypad (its command language), its console sessions and its flash
(--state), without a network: commands run on a Terminal, sessions on StringTransport."""

import json
from dataclasses import replace

import pytest
from twisted.internet.testing import StringTransport

from protocol.events import Credential, EventCode, Origin
from protocol.json_form import record_from_json
from protocol.messages import Command
from protocol.records import Card, CardType, UserRecord, hash_pin
from simulator.console import ControlPort, KeypadSession
from simulator.keypad import Keypad
from simulator.state import FORMAT, StateError, open_terminal
from simulator.terminal import Terminal
from protocol import auth
from test_simulated_terminal import SECRET, ask, authenticated


def handshake(terminal: Terminal) -> None:
    nonce = auth.new_nonce()
    _, hello = ask(terminal, Command.HELLO, dict(gateway_nonce=nonce, protocol_version=1))
    proof = auth.gateway_proof(SECRET.encode(), terminal.terminal_id, nonce, hello.terminal_nonce)
    ask(terminal, Command.WELCOME, dict(proof=proof, server_time_ms=5_000, keepalive_s=30, ack_through=0))


def run(keypad: Keypad, line: str) -> str:
    return keypad.run(line).text()


def ok(keypad: Keypad, line: str) -> list[str]:
    """The data lines of a reply that must be ``ok``."""
    reply = keypad.run(line)
    assert reply.status.startswith("ok"), (line, reply.status)
    return reply.lines


def error(keypad: Keypad, line: str) -> str:
    reply = keypad.run(line)
    assert reply.status.startswith("error: ") and not reply.lines, (line, reply.text())
    assert "\n" not in reply.status and "Traceback" not in reply.status
    return reply.status


def test_enrol_makes_a_user_with_every_credential_and_logs_a_device_event():
    terminal = Terminal(7, SECRET)
    keypad = Keypad(terminal)
    assert keypad.run('enrol 42 name="Ana Lima" pin=1234 card=csn:04a1b2c3 card=smart_card:00112233 finger=0 finger=3 face=0 group=2').status \
        == "ok enrolled 42 (event 1)"
    record = terminal.users["42"]
    assert (record.name, record.pin_hash, record.access_groups) == ("Ana Lima", hash_pin("42", "1234"), (2,))
    assert record.cards == (Card(CardType.CSN, bytes.fromhex("04a1b2c3")), Card(CardType.SMART_CARD, bytes.fromhex("00112233")))
    assert [f.index for f in record.fingerprints] == [0, 3] and [f.index for f in record.faces] == [0]
    event = terminal.log[-1]
    assert (event.code, event.sub_code, event.user_id) == (EventCode.ENROLL_SUCCESS, Origin.DEVICE, "42")
    assert event.is_device_user_change and "42" in terminal.changed_locally


def test_edit_changes_name_and_pin_adds_and_removes_cards_fingers_and_faces():
    terminal = Terminal(7, SECRET)
    keypad = Keypad(terminal)
    ok(keypad, "enrol 42 name=Ana pin=1111 card=csn:01 finger=0 finger=1 face=0")
    before = terminal.users["42"]
    ok(keypad, 'edit 42 name="Ana Maria" pin=2222 add-card=wiegand:0a0b0c remove-card=csn:01 add-finger=5 remove-finger=0 remove-face=0 add-face=2')
    after = terminal.users["42"]
    assert (after.name, after.pin_hash) == ("Ana Maria", hash_pin("42", "2222"))
    assert after.cards == (Card(CardType.WIEGAND, bytes.fromhex("0a0b0c")),)
    assert [f.index for f in after.fingerprints] == [1, 5]
    assert after.fingerprints[0] == before.fingerprints[1]  # a finger not touched keeps its template
    assert [f.index for f in after.faces] == [2]
    assert terminal.log[-1].code == EventCode.UPDATE_SUCCESS and terminal.log[-1].sub_code == Origin.DEVICE
    ok(keypad, "edit 42 name= pin=")
    assert (terminal.users["42"].name, terminal.users["42"].pin_hash) == (None, None)  # cleared: vacant


def test_delete_show_list_dump_verify_and_status():
    terminal = Terminal(7, SECRET)
    keypad = Keypad(terminal)
    ok(keypad, "enrol b name=Bo")
    ok(keypad, 'enrol a name="Ann Lee" card=secure_credential:ff')
    shown = ok(keypad, "show a")
    assert "name     Ann Lee" in shown and "cards    secure_credential:ff" in shown
    assert f"digest   {terminal.users['a'].digest().hex()}" in shown
    assert any(line.startswith("pending") for line in shown)  # not fetched by a gateway yet
    assert ok(keypad, "list") == [f"a  {terminal.users['a'].digest().hex()}  Ann Lee", f"b  {terminal.users['b'].digest().hex()}  Bo"]
    (line,) = ok(keypad, "dump")
    dumped = json.loads(line)
    assert dumped["terminal_id"] == 7
    assert [record_from_json(u) for u in dumped["users"]] == [terminal.users["a"], terminal.users["b"]]
    assert keypad.run("verify a card").status == "ok VERIFY_SUCCESS a card (event 3)"
    assert (terminal.log[-1].code, terminal.log[-1].sub_code) == (EventCode.VERIFY_SUCCESS, Credential.CARD)
    assert keypad.run("verify a finger").status == "ok VERIFY_FAIL a finger (event 4): the user holds no finger"
    assert (terminal.log[-1].code, terminal.log[-1].sub_code) == (EventCode.VERIFY_FAIL, Credential.FINGER)
    assert keypad.run("verify nobody").status.startswith("ok VERIFY_FAIL nobody card")
    assert keypad.run("delete b").status == "ok deleted b (event 6)"
    assert "b" not in terminal.users and terminal.log[-1].code == EventCode.DELETE_SUCCESS
    assert keypad.run("status").status == "ok terminal 7, not connected to a gateway, 1 user, next event 7, 6 events not acknowledged"


def test_verify_opens_only_for_a_held_credential_of_an_enabled_user_within_the_validity_period():
    terminal = Terminal(7, SECRET)
    keypad = Keypad(terminal)
    now_s = terminal.now_ms() // 1000
    ok(keypad, "enrol 77 card=csn:01020304 pin=1234")
    assert keypad.run("verify 77 face").status.endswith(": the user holds no face")
    assert keypad.run("verify 77 pin").status.startswith("ok VERIFY_SUCCESS")
    terminal.users["77"] = replace(terminal.users["77"], validity=(0, now_s - 3600))
    assert "VERIFY_FAIL" in keypad.run("verify 77").status and ": expired at " in keypad.run("verify 77").status
    terminal.users["77"] = replace(terminal.users["77"], validity=(now_s + 3600, now_s + 7200))
    assert ": not valid before " in keypad.run("verify 77").status
    terminal.users["77"] = replace(terminal.users["77"], validity=None, disabled=True)
    assert keypad.run("verify 77").status.endswith(": the user is disabled")


def test_show_counts_fingers_and_names_their_slots():
    keypad = Keypad(Terminal(7, SECRET))
    ok(keypad, "enrol 42 finger=0")
    assert "fingers  1 (slot 0)" in ok(keypad, "show 42")
    ok(keypad, "edit 42 add-finger=6")
    assert "fingers  2 (slots 0, 6)" in ok(keypad, "show 42")
    assert keypad.run("quit").quit


def test_list_reports_the_digests_list_users_reports():
    terminal = authenticated(7)
    keypad = Keypad(terminal)
    for user_id in ("u1", "u2", "u3"):
        ok(keypad, f"enrol {user_id} name=N{user_id} card=csn:0{user_id[-1]} finger=1")
    _, page = ask(terminal, Command.LIST_USERS, dict(after_user_id="", limit=10))
    assert [line.split()[:2] for line in ok(keypad, "list")] == [[e.user_id, e.digest.hex()] for e in page.entries]


@pytest.mark.parametrize("line, mentions", [
    ("frobnicate", "unknown command 'frobnicate'"),
    ("enrol", "usage: enrol ID"),
    ("enrol 1 nam=x", "unknown option 'nam=x'"),
    ("enrol 1 pin=12a", "a PIN is 1 to 16 digits"),
    ("enrol 1 card=csn", "give its data as 1 to 32 bytes of hex"),
    ("enrol 1 card=badge:00", "type must be one of csn, wiegand, smart_card, secure_credential"),
    ("enrol 1 finger=10", "finger slot index must be 0 to 9"),
    ("enrol 1 group=-1", "group must be a number"),
    ("enrol 1 name=" + "x" * 49, "name longer than 48 characters"),
    ("enrol " + "x" * 33, "user id must be 1 to 32 bytes"),
    ('enrol "unclosed', "No closing quotation"),
    ("enrol 42", "user 42 is enrolled already: use edit"),
    ("edit 42", "nothing to change"),
    ("edit 9 name=x", "no user 9 on this terminal"),
    ("edit 42 remove-card=csn:99", "holds no card csn:99"),
    ("edit 42 remove-finger=4", "no finger in slot 4"),
    ("delete 9", "no user 9"),
    ("show", "usage: show ID"),
    ("list everything", "usage: list"),
    ("verify 42 retina", "credential must be one of card, finger, face, pin"),
])
def test_mistakes_get_one_clear_error_line_and_change_nothing(line, mentions):
    terminal = Terminal(7, SECRET)
    keypad = Keypad(terminal)
    ok(keypad, "enrol 42 name=Ana card=csn:01 finger=0")
    users, next_event = dict(terminal.users), terminal.next_event_id
    assert mentions in error(keypad, line)
    assert (terminal.users, terminal.next_event_id) == (users, next_event)


def test_help_lists_every_command():
    lines = ok(Keypad(Terminal(7, SECRET)), "help")
    for name in ("enrol", "edit", "delete", "show", "list", "dump", "verify", "status", "help", "quit"):
        assert any(line.startswith(name + " ") or line == name for line in lines), name


# -- console sessions -------------------------------------------------------------------------


class Switch:
    def __init__(self):
        self.off = 0

    def __call__(self):
        self.off += 1


def session(ends_terminal=False, prompt=False):
    switch = Switch()
    keypad = Keypad(Terminal(7, SECRET))
    proto = KeypadSession(keypad, switch, prompt=prompt, ends_terminal=ends_terminal) if ends_terminal \
        else ControlPort(keypad, switch).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, switch


def test_a_control_session_answers_each_line_and_quit_switches_the_terminal_off():
    proto, transport, switch = session()
    proto.dataReceived(b"enrol 1 name=A\r\nlist\nbogus\n")
    assert transport.value().decode().splitlines() == [
        "ok enrolled 1 (event 1)", f"  1  {proto.keypad.terminal.users['1'].digest().hex()}  A", "ok 1 user", "error: unknown command 'bogus'; type help",
    ]
    proto.connectionLost(None)
    assert switch.off == 0  # closing a control connection leaves the terminal on
    proto, transport, switch = session()
    proto.dataReceived(b"quit\n")
    assert transport.value() == b"ok switching off\n" and transport.disconnecting
    proto.connectionLost(None)
    assert switch.off == 1


def test_a_session_answers_a_script_that_closed_its_end_and_refuses_bad_bytes_and_long_lines():
    proto, transport, _ = session()
    proto.dataReceived(b"\xff\xfe\n")
    assert transport.value() == b"error: commands are UTF-8 text\n"
    proto.readConnectionLost()
    assert transport.disconnecting  # after the answers are written, not before
    proto, transport, _ = session()
    proto.dataReceived(b"x" * (proto.MAX_LENGTH + 10))
    assert transport.value().startswith(b"error: a command is at most") and transport.disconnecting


def test_the_end_of_standard_input_switches_the_terminal_off_and_a_person_gets_a_prompt():
    proto, transport, switch = session(ends_terminal=True, prompt=True)
    proto.dataReceived(b"status\n")
    assert transport.value().decode().endswith("not acknowledged\n> ")
    proto.connectionLost(None)
    assert switch.off == 1


# -- flash (--state) --------------------------------------------------------------------------


def test_a_restart_keeps_users_the_event_counter_unacknowledged_events_and_pending_keypad_changes(tmp_path):
    path = tmp_path / "t7.json"
    terminal = open_terminal(path, 7, SECRET)
    keypad = Keypad(terminal)
    ok(keypad, "enrol 1 name=A card=csn:01 finger=2 face=0")
    ok(keypad, "enrol 2 name=B")
    terminal.acknowledge(1)
    again = open_terminal(path, 7, SECRET)
    assert again.users == terminal.users
    assert (again.next_event_id, again.acked_through, list(again.log)) == (3, 1, list(terminal.log))
    assert again.changed_locally == {"1", "2"}
    assert Keypad(again).run("enrol 3").status == "ok enrolled 3 (event 3)"  # the counter goes on
    assert not (tmp_path / "t7.json.tmp").exists()


def test_a_restart_with_its_state_keeps_the_event_log_epoch_and_one_without_picks_a_new_one(tmp_path):
    path = tmp_path / "t7.json"
    terminal = open_terminal(path, 7, SECRET)
    assert 0 < terminal.log_epoch < 2**63
    assert open_terminal(path, 7, SECRET).log_epoch == terminal.log_epoch  # same counter, same log
    assert open_terminal(tmp_path / "wiped.json", 7, SECRET).log_epoch != terminal.log_epoch  # counter at 1: a new log
    _, hello = ask(terminal, Command.HELLO, dict(gateway_nonce=auth.new_nonce(), protocol_version=1))
    assert hello.log_epoch == terminal.log_epoch


def test_a_version_1_state_file_keeps_its_counter_under_a_log_epoch_of_its_own(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "terminal_id": 7, "next_event_id": 9, "acked_through": 8,
                                "overwritten": 0, "changed_locally": [], "events": [], "users": []}))
    terminal = open_terminal(path, 7, SECRET)
    assert terminal.next_event_id == 9 and terminal.log_epoch
    assert json.loads(path.read_bytes())["log_epoch"] == terminal.log_epoch


def test_what_the_gateway_changes_is_saved_before_the_terminal_answers(tmp_path):
    path = tmp_path / "t5.json"
    terminal = open_terminal(path, 5, SECRET)
    handshake(terminal)
    Keypad(terminal).run("enrol k name=Keypad")
    ask(terminal, Command.PUT_USERS, dict(keep_local_changes=False, users=[UserRecord("s", name="Server")]))
    saved = json.loads(path.read_bytes())
    assert [u["user_id"] for u in saved["users"]] == ["k", "s"]
    ask(terminal, Command.GET_USERS, dict(user_ids=["k"]))  # fetched: no longer a pending keypad change
    assert json.loads(path.read_bytes())["changed_locally"] == []
    ask(terminal, Command.POLL, dict(ack_through=1, max_events=10))  # acknowledged events are forgotten
    assert [e["event_id"] for e in json.loads(path.read_bytes())["events"]] == [2]


@pytest.mark.parametrize("content, mentions", [
    (b"\x00garbage", "is not a simulated terminal's state file (not JSON"),
    (b'{"users": []}', 'no "format"'),
    (json.dumps({"format": FORMAT, "version": 99}).encode(), "state file version 99"),
    (json.dumps({"format": FORMAT, "version": 1, "terminal_id": 8}).encode(), "belongs to terminal 8, not 7"),
    (json.dumps({"format": FORMAT, "version": 1, "terminal_id": 7}).encode(), "corrupt: next_event_id missing"),
    (json.dumps({"format": FORMAT, "version": 1, "terminal_id": 7, "next_event_id": 1, "acked_through": 0, "overwritten": 0,
                 "changed_locally": [], "events": [], "users": [{"user_id": "1", "cards": [{"type": "CSN", "data": "zz"}]}]}).encode(),
     "corrupt: users[0].cards[0].data: expected bytes as hex digits"),
    (json.dumps({"format": FORMAT, "version": 1, "terminal_id": 7, "next_event_id": 2, "acked_through": 0, "overwritten": 0,
                 "changed_locally": [], "events": [{"event_id": 5, "timestamp_ms": 0, "code": 4096, "sub_code": 1, "user_id": ""}],
                 "users": []}).encode(),
     "events must lie between acked_through and next_event_id"),
])
def test_a_corrupt_or_foreign_state_file_is_a_clear_error_and_is_left_alone(tmp_path, content, mentions):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as caught:
        open_terminal(path, 7, SECRET)
    assert mentions in str(caught.value)
    assert path.read_bytes() == content


def test_a_bad_state_file_ends_simulator_terminal_with_one_line_and_status_2(tmp_path, capsys):
    from simulator.cli import main

    path = tmp_path / "state.json"
    path.write_text("[1, 2")
    with pytest.raises(SystemExit) as exited:
        main(["terminal", "--gateway", "127.0.0.1:1", "--id", "7", "--secret", "s", "--keypad", "off", "--state", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("simulator: ") and err.count("\n") == 1 and "not JSON" in err
