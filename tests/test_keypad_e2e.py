"""The keypad of ``simulator terminal``, driven through its control socket against a real
``gateway run`` process: what is typed at one terminal reaches the others under the merge rules,
and ``--state`` carries a terminal across a restart of its process."""

import json
from urllib import error as urlerror
from urllib import request as urlrequest

import pytest

from live_site import refusing_port
from processes import KeypadClient, Process, eventually, start_gateway

A, B = 101, 102


class Terminal:
    """A ``simulator terminal`` process and a keypad client on its control socket."""

    def __init__(self, terminal_id: int, gateway_port: int, *options: str):
        self.process = Process("simulator.cli", "terminal", "--gateway", f"127.0.0.1:{gateway_port}", "--id", str(terminal_id),
                               "--secret", f"secret-{terminal_id}", "--control", "0", *options)
        try:
            port = int(self.process.wait_for(r"keypad control socket on 127\.0\.0\.1:(\d+)").group(1))
            self.keypad = KeypadClient(port)
        except BaseException:
            self.process.stop()
            raise

    def online(self) -> bool:
        status, _ = self.keypad.command("status")
        return "authenticated with the gateway" in status

    def digests(self) -> dict[str, str]:
        return {line.split()[0]: line.split()[1] for line in self.keypad.ok("list")}

    def show(self, user_id: str) -> dict[str, str]:
        status, lines = self.keypad.command(f"show {user_id}")
        return dict(line.split(None, 1) for line in lines) if status == "ok" else {}

    def stop(self) -> None:
        self.keypad.close()
        self.process.stop()


@pytest.fixture
def site(tmp_path):
    process, tcp_port, page = start_gateway(tmp_path, {A: "Front door", B: "Back door"})
    started: list[Terminal] = []

    def terminal(terminal_id: int, *options: str, port: int | None = None) -> Terminal:
        found = Terminal(terminal_id, port or tcp_port, *options)
        started.append(found)
        return found

    terminal.page = page
    terminal.tcp_port = tcp_port
    terminal.gateway = process
    try:
        yield terminal
    finally:
        for found in started:
            found.stop()
        process.stop()


def server_user(page: str, user_id: str) -> dict | None:
    try:
        with urlrequest.urlopen(f"{page}api/users/{user_id}", timeout=10) as response:
            return json.loads(response.read())
    except urlerror.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_an_enrolment_typed_at_terminal_a_reaches_terminal_b_and_the_server(site):
    a, b = site(A), site(B)
    eventually(lambda: a.online() and b.online(), "both terminals online")
    a.keypad.ok('enrol 9001 name="Ana Lima" pin=1234 card=csn:04a1b2c3 finger=0 face=0 group=2')
    digest = a.digests()["9001"]
    eventually(lambda: b.digests().get("9001") == digest, "terminal B to hold A's enrolment, same digest")
    user = server_user(site.page, "9001")
    assert (user["name"], user["cards"], user["fingerprints"], user["faces"], user["has_pin"]) == ("Ana Lima", ["CSN"], 1, 1, True)


def test_edits_and_a_delete_at_a_terminal_follow_the_merge_rules(site):
    a, b = site(A), site(B)
    eventually(lambda: a.online() and b.online(), "both terminals online")
    a.keypad.ok('enrol 9002 name="Ana Lima" card=csn:04a1b2c3 finger=0')
    eventually(lambda: "9002" in b.digests(), "terminal B to hold 9002")

    # At B: a new name (the server's name wins), a smart card and a second finger (both added).
    b.keypad.ok('edit 9002 name="Someone Else" add-card=smart_card:00112233445566778899aabbccddeeff add-finger=3')
    both_cards = "csn:04a1b2c3, smart_card:00112233445566778899aabbccddeeff"
    merged = {"name": "Ana Lima", "cards": both_cards, "fingers": "2 (slots 0, 3)"}

    def holds_merged(terminal) -> bool:
        shown = terminal.show("9002")
        return all(shown.get(k) == v for k, v in merged.items())

    eventually(lambda: holds_merged(a), "terminal A to get B's card and finger")
    eventually(lambda: holds_merged(b), "terminal B to get the server's name back")
    eventually(lambda: a.digests()["9002"] == b.digests().get("9002"), "A and B to hold the same record")
    user = server_user(site.page, "9002")
    assert (user["name"], user["cards"], user["fingerprints"]) == ("Ana Lima", ["CSN", "SMART_CARD"], 2)

    # A removed card does not disappear from the server: cards are a union.
    a.keypad.ok("edit 9002 remove-card=csn:04a1b2c3")
    eventually(lambda: a.show("9002").get("cards") == both_cards, "terminal A to get its removed card back")

    # A delete at B is logged; the server and terminal A keep the user.
    b.keypad.ok("delete 9002")
    eventually(lambda: "9002" not in b.digests() and b.keypad.command("status")[0].endswith("0 events not acknowledged"),
               "B's delete to reach the gateway")
    assert server_user(site.page, "9002")["name"] == "Ana Lima"
    assert "9002" in a.digests()
    # The gateway's log says what it made of each keypad change: the merge's rules, and the delete not applied.
    site.gateway.wait_for(f"terminal {B}: user 9002 deleted at the keypad: delete at a terminal not applied to the server")
    assert "name 'Someone Else' (server field kept)" in site.gateway.all_output()


def test_state_keeps_users_events_and_the_counter_across_a_restart_of_the_simulator(site, tmp_path):
    state = str(tmp_path / "a-state.json")
    # First life: the gateway cannot be reached, so the enrolment's event stays unacknowledged.
    with refusing_port() as nowhere:
        a = site(A, "--state", state, port=nowhere)
        a.keypad.ok('enrol 9003 name="Offline Enrolment" card=wiegand:0a0b0c')
        status, _ = a.keypad.command("status")
        assert "next event 2, 1 event not acknowledged" in status
        digest = a.digests()["9003"]
        assert a.keypad.command("quit")[0] == "ok switching off"
        assert a.process.wait_exit() == 0

    # Second life, now reaching the gateway: the user, the counter and the unsent event are back.
    b = site(B)
    again = site(A, "--state", state)
    assert again.digests() == {"9003": digest}
    assert "next event 2" in again.keypad.command("status")[0]
    eventually(lambda: server_user(site.page, "9003"), "the gateway to pull the enrolment made before the restart")
    eventually(lambda: b.digests().get("9003") == digest, "terminal B to get it")
    again.keypad.ok("enrol 9004")
    assert again.keypad.command("status")[0].split("next event ")[1].startswith("3")


def test_a_restart_with_another_terminals_state_is_refused_in_one_line(site, tmp_path):
    state = tmp_path / "state.json"
    a = site(A, "--state", str(state))
    a.keypad.ok("quit")
    assert a.process.wait_exit() == 0
    other = Process("simulator.cli", "terminal", "--gateway", f"127.0.0.1:{site.tcp_port}", "--id", str(B), "--secret", "x",
                    "--state", str(state))
    assert other.wait_exit() == 2
    output = other.all_output()
    assert f"belongs to terminal {A}, not {B}" in output and "Traceback" not in output
