"""PUSH devices on a real site: a ``gateway run`` process with ``[push]``, a native ``simulator
terminal`` and ``simulator push-terminal`` processes calling it over loopback HTTP. An enrolment at
either kind reaches the other; a PUSH device whose store was wiped is refilled; an unknown serial
is recorded and never given a command; commands stored for a device outlive a gateway restart, and
a change made while others wait for a device goes with the same fetch."""

import json
import signal
import socket
import sqlite3
from contextlib import closing
from urllib import request as urlrequest
from urllib.parse import quote

import pytest

from gateway.sync.monitor import RECONCILED
from processes import KeypadClient, Process, eventually

NATIVE = 101
SN, PUSH_ID = "PUSHE2E0001", 201


class Device:
    """A ``simulator push-terminal`` process and a keypad client on its control socket."""

    def __init__(self, url: str, serial: str, state, *options: str):
        self.process = Process("simulator.cli", "push-terminal", "--server", url, "--sn", serial, "--control", "0", "--state", str(state),
                               *options)
        try:
            self.keypad = KeypadClient(int(self.process.wait_for(r"keypad control socket on 127\.0\.0\.1:(\d+)").group(1)))
        except BaseException:
            self.process.stop()
            raise

    def users(self) -> dict[str, str]:
        return {line.split("  ")[0]: line.split("  ")[1] for line in self.keypad.ok("list")}

    def stop(self):
        self.keypad.close()
        self.process.stop()


class Native:
    def __init__(self, port: int):
        self.process = Process("simulator.cli", "terminal", "--gateway", f"127.0.0.1:{port}", "--id", str(NATIVE),
                               "--secret", f"secret-{NATIVE}", "--control", "0")
        try:
            self.keypad = KeypadClient(int(self.process.wait_for(r"keypad control socket on 127\.0\.0\.1:(\d+)").group(1)))
        except BaseException:
            self.process.stop()
            raise

    def show(self, user_id: str) -> dict[str, str]:
        status, lines = self.keypad.command(f"show {user_id}")
        return dict(line.split(None, 1) for line in lines) if status == "ok" else {}

    def stop(self):
        self.keypad.close()
        self.process.stop()


@pytest.fixture
def site(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\nadmission = "pending"\n'
                      f'[[terminals]]\nid = {NATIVE}\nsecret = "secret-{NATIVE}"\n'
                      f'[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\n'
                      f'[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\nname = "PUSH door"\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}",
                      "--tcp-port", "0", "--http-port", "0")
    started = []
    try:
        tcp_port = int(gateway.wait_for(r"listening for terminals on [\d.]+:(\d+)").group(1))
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        push_url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)

        def start(kind, *args):
            found = Device(push_url, *args) if kind == "push" else Native(tcp_port)
            started.append(found)
            return found

        start.page, start.push_url, start.gateway = page, push_url, gateway
        yield start
    finally:
        for found in started:
            found.stop()
        gateway.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(page: str, path: str, method: str = "GET", body: dict | None = None):
    req = urlrequest.Request(f"{page}api/{path}", method=method, headers={"Authorization": "Bearer test-token", "Content-Type": "application/json"},
                             data=json.dumps(body or {}).encode() if method == "POST" else None)
    with urlrequest.urlopen(req, timeout=20) as response:
        return json.loads(response.read())


def terminal(page: str, terminal_id: int) -> dict:
    return next((t for t in api(page, "terminals")["terminals"] if t["id"] == terminal_id), {})


def test_an_enrolment_at_a_push_device_reaches_a_native_terminal_and_back(site, tmp_path):
    device, native = site("push", SN, tmp_path / "device.json"), site("native")
    eventually(lambda: terminal(site.page, PUSH_ID).get("online") and terminal(site.page, NATIVE).get("online"), "both online")
    device.keypad.ok('enrol 77 name="Ana Lima" card=1234 finger=1')
    shown = eventually(lambda: native.show("77"), "the native terminal to hold the PUSH enrolment")
    assert shown["name"] == "Ana Lima"
    user = api(site.page, "users/77")
    assert (user["name"], user["cards"], user["fingerprints"]) == ("Ana Lima", ["CSN"], 1)

    native.keypad.ok('enrol 9001 name="Bo Berg" card=csn:000004d2')
    eventually(lambda: device.users().get("9001") == "Bo Berg", "the PUSH device to hold the native enrolment")
    # An edit at the PUSH device's keypad: the name is the server's already, so only a vacant field could change.
    device.keypad.ok("edit 9001 password=4321")
    eventually(lambda: api(site.page, "users/9001")["has_pin"], "the PIN set at the PUSH device to reach the server")


def test_a_push_device_behind_a_nat_syncs_by_its_serial(site, tmp_path):
    """The gateway sees the device's requests come from a translated address: it is the serial that counts."""
    device = site("push", SN, tmp_path / "device.json", "--source", "127.0.0.3")
    eventually(lambda: terminal(site.page, PUSH_ID).get("link") == "push 127.0.0.3", "the PUSH device online from 127.0.0.3")
    device.keypad.ok('enrol 55 name="Nat Ada"')
    eventually(lambda: api(site.page, "users")["users"], "the enrolment on the server")
    assert api(site.page, "users/55")["name"] == "Nat Ada"


def test_a_wiped_push_device_is_refilled(site, tmp_path):
    """The repair may come from any reconciliation that lists the device after the wipe: the one
    connecting started may still be under way when the API's begins (which then runs after it and
    finds nothing left to do), so the test asks what was repaired, not which round repaired it."""
    device = site("push", SN, tmp_path / "device.json")
    eventually(lambda: terminal(site.page, PUSH_ID).get("online"), "the PUSH device online")
    people = [str(300 + n) for n in range(5)]
    for n, pin in enumerate(people):
        device.keypad.ok(f'enrol {pin} name="Person {n}"')
    eventually(lambda: api(site.page, "terminals") and terminal(site.page, PUSH_ID).get("lag") == 0
               and len(api(site.page, "users")["users"]) == 5, "the five enrolments on the server")
    device.keypad.ok("wipe")
    assert device.users() == {}
    api(site.page, "reconcile", "POST")  # runs after any reconciliation under way, so one listed the wiped device
    eventually(lambda: len(device.users()) == 5, "the wiped device refilled")
    assert device.users()["302"] == "Person 2"
    repaired = api(site.page, f"events?type={quote(RECONCILED)}&terminal={PUSH_ID}&limit=100")["events"]
    assert sorted(e["user_id"] for e in repaired if e["detail"] == "missing on the terminal: pushed") == people


def test_an_unknown_serial_is_recorded_pending_and_given_no_command(site, tmp_path):
    stranger = site("push", "STRANGER01", tmp_path / "stranger.json")
    stranger.keypad.ok('enrol 5 name="Eve"')
    pending = eventually(lambda: [t for t in api(site.page, "terminals")["terminals"] if t["admission"] == "pending"], "a pending terminal")
    assert pending[0]["link"].startswith("push 127.0.0.1") and "STRANGER01" in pending[0]["model"]
    site.gateway.wait_for(r"PUSH device STRANGER01 from 127\.0\.0\.1 refused")
    stranger.process.wait_for(r"answered the initialization")  # it is answered, so it does not spin
    status, _ = stranger.keypad.command("status")
    assert "2 lines not uploaded" in status  # it keeps its data, and retries
    assert api(site.page, "users")["users"] == []
    # An administrator admits it, with no secret (a PUSH device proves none): what it kept arrives.
    api(site.page, f"terminals/{pending[0]['id']}/admit", "POST")
    eventually(lambda: api(site.page, "users")["users"], "the stranger's enrolment once admitted", timeout=30)
    assert api(site.page, "users/5")["name"] == "Eve"


def raw(url: str, method: str, path: str, body: bytes | None = None, source: str = "127.0.0.1", headers: dict | None = None):
    """One request from ``source`` (any 127/8 address is this host): (status, body)."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=20, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_bad_requests_get_a_clear_answer_and_store_nothing(site, tmp_path):
    url = site.push_url
    device = site("push", SN, tmp_path / "device.json")
    eventually(lambda: terminal(site.page, PUSH_ID).get("online"), "the PUSH device online")
    assert raw(url, "POST", f"/iclock/cdata?SN={SN}&table=SECRETS", b"x")[0] == 400
    assert raw(url, "GET", f"/iclock/elsewhere?SN={SN}")[0] == 404
    assert raw(url, "GET", "/iclock/getrequest")[0] == 400  # no serial
    status, answer = raw(url, "POST", f"/iclock/cdata?SN={SN}&table=ATTLOG", b"1\t2024-01-01 00:00:00\t0\t1\n" * 400_000)
    assert (status, answer.strip()) == (413, b"body over 8388608 bytes")
    # A known serial from another address while it is online: refused and counted, its data untouched.
    status, answer = raw(url, "POST", f"/iclock/cdata?SN={SN}&table=ATTLOG", b"77\t2024-01-01 00:00:00\t0\t1\n", source="127.0.0.2")
    assert status == 403 and b"online from 127.0.0.1" in answer
    site.gateway.wait_for(r"PUSH device PUSHE2E0001 from 127\.0\.0\.2 refused")
    # Lines that do not parse are skipped and reported; the good one is stored.
    status, answer = raw(url, "POST", f"/iclock/cdata?SN={SN}&table=ATTLOG&Stamp=99",
                         b"77\t2024-01-01 09:00:00\t0\t1\n77\tnoon\t0\t1\n\xff\xfe\t2024-01-01 09:00:00\n")
    assert (status, answer.strip()) == (200, b"OK: 3")
    events = api(site.page, "events")["events"]
    skipped = [e for e in events if e["type"] == "Device lines skipped (PUSH)"]
    assert len(skipped) == 1 and "2 ATTLOG line(s) skipped" in skipped[0]["detail"]
    assert [e["user_id"] for e in events if e["type"] == "VERIFY_SUCCESS"] == ["77"]
    assert device.process.popen.poll() is None


def test_a_push_device_over_https(tmp_path):
    """``[push]`` with cert and key: the device checks the gateway's certificate and syncs as over HTTP."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "push.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "push.key"))
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\n'
                      f'cert = "{tmp_path / "push.pem"}"\nkey = "{tmp_path / "push.key"}"\n[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}", "--tcp-port", "0", "--http-port", "0")
    device = None
    try:
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        port = gateway.wait_for(r"listening for PUSH devices on https://127\.0\.0\.1:(\d+)/iclock/").group(1)
        device = Device(f"https://localhost:{port}", SN, tmp_path / "device.json", "--ca", str(tmp_path / "ca.pem"))
        device.keypad.ok('enrol 41 name="Tia Sol"')
        eventually(lambda: api(page, "users?limit=10")["users"], "the enrolment over HTTPS on the server")
        assert api(page, "users/41")["name"] == "Tia Sol"
    finally:
        if device is not None:
            device.stop()
        gateway.stop()


def test_a_gateway_killed_mid_uploads_loses_no_punch_and_stores_none_twice(tmp_path):
    """SIGKILL while a PUSH device uploads punches; the gateway starts again on the same database
    and port; the device sends again what was not answered: every punch stored exactly once."""
    port = _free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[push]\nhost = "127.0.0.1"\nport = {port}\ndelay_s = 1\n'
                      f'error_delay_s = 1\n[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\n')
    command = ("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}", "--tcp-port", "0", "--http-port", "0")
    gateway = Process(*command)
    device = None
    try:
        gateway.wait_for(r"listening for PUSH devices")
        device = Device(f"http://127.0.0.1:{port}", SN, tmp_path / "device.json")
        for n in range(40):
            device.keypad.ok(f"verify {n} {'finger' if n % 2 else 'card'}")
        gateway.popen.send_signal(signal.SIGKILL)  # some uploads answered, some on their way, some not sent
        gateway.popen.wait(10)
        for n in range(40, 60):
            device.keypad.ok(f"verify {n}")
        gateway = Process(*command)
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        eventually(lambda: "0 lines not uploaded" in device.keypad.command("status")[0], "every punch acknowledged", timeout=60)
        punches = [e["user_id"] for e in api(page, "events?type=VERIFY_SUCCESS&limit=500")["events"]]
        assert sorted(punches, key=int) == [str(n) for n in range(60)]
    finally:
        if device is not None:
            device.stop()
        gateway.stop()


def _queued(db_path, terminal_id: int) -> set[str]:
    """The people the gateway's stored command queue (gateway/push/queue.py) holds commands for, for one device."""
    with closing(sqlite3.connect(db_path, timeout=10)) as conn:
        return {row[0] for row in conn.execute("SELECT user_id FROM push_commands WHERE terminal_id = ?", (terminal_id,))}


def _scalar(db_path, query: str, *params):
    with closing(sqlite3.connect(db_path, timeout=10)) as conn:
        return conn.execute(query, params).fetchone()[0]


# A Delay the tests never wait for: a device fetches commands when its keypad wakes it, and the
# next fetch is this far away, so what arrives within a fraction of it came with that one fetch.
LONG_DELAY_S = 30


def test_commands_queued_for_a_push_device_survive_a_gateway_restart(tmp_path):
    """A change is stored as commands for a PUSH device and its cursor moves; the gateway is killed
    before the device fetched them. After the restart it is the stored queue, not the changes
    feed, that brings the person to the device, and the device's result settles it."""
    port, db = _free_port(), tmp_path / "gateway.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[push]\nhost = "127.0.0.1"\nport = {port}\n'
                      f'delay_s = {LONG_DELAY_S}\n[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\n')
    command = ("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{db}", "--tcp-port", "0", "--http-port", "0")
    gateway = Process(*command)
    device = None
    try:
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        device = Device(f"http://127.0.0.1:{port}", SN, tmp_path / "device.json")
        eventually(lambda: terminal(page, PUSH_ID).get("online"), "the PUSH device online")
        api(page, "users", "POST", {"user_id": "42", "name": "Queued Ada"})
        eventually(lambda: _queued(db, PUSH_ID) == {"42"}, "the commands for 42 stored")
        seq = _scalar(db, "SELECT change_seq FROM users WHERE user_id = '42'")
        eventually(lambda: _scalar(db, "SELECT cursor FROM terminals WHERE terminal_id = ?", PUSH_ID) >= seq, "the cursor past 42")
        assert "42" not in device.users()  # its next fetch is a long Delay away
        gateway.popen.send_signal(signal.SIGKILL)
        gateway.popen.wait(10)
        gateway = Process(*command)
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        device.keypad.ok("verify 7")  # wakes the device: it calls now, not a Delay later
        eventually(lambda: device.users().get("42") == "Queued Ada", "the queued person on the device after the restart", timeout=LONG_DELAY_S / 2)
        eventually(lambda: not _queued(db, PUSH_ID), "its result settling the stored commands")
        applied = api(page, f"events?type=ENROLL_SUCCESS&terminal={PUSH_ID}&limit=10")["events"]
        assert [(e["user_id"], e["origin"]) for e in applied] == [("42", "server")]
    finally:
        if device is not None:
            device.stop()
        gateway.stop()


def test_a_change_made_while_another_waits_for_a_push_device_reaches_it_with_the_same_fetch(tmp_path):
    """Two enrolments at one PUSH device, the second while the first's commands wait for the other
    device: both are queued for it at once (the pusher is answered when they are stored, not when
    the device has carried them out), so its next fetch brings both, not one now and one a Delay later."""
    second_sn, second_id = "PUSHE2E0002", 202
    db = tmp_path / "gateway.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = {LONG_DELAY_S}\n'
                      f'[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\n[[push.devices]]\nsn = "{second_sn}"\nid = {second_id}\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{db}", "--tcp-port", "0", "--http-port", "0")
    devices = []
    try:
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        devices += [Device(url, SN, tmp_path / "a.json"), Device(url, second_sn, tmp_path / "b.json")]
        enrolling, other = devices
        eventually(lambda: terminal(page, PUSH_ID).get("online") and terminal(page, second_id).get("online"), "both online")
        enrolling.keypad.ok('enrol 61 name="First"')
        eventually(lambda: "61" in _queued(db, second_id), "the first enrolment queued for the other device")
        enrolling.keypad.ok('enrol 62 name="Second"')
        eventually(lambda: _queued(db, second_id) == {"61", "62"}, "the second queued while the first waits")
        assert other.users() == {}  # its next fetch is a long Delay away
        other.keypad.ok("verify 7")  # wakes it: one fetch now
        eventually(lambda: set(other.users()) == {"61", "62"}, "both on the other device with one fetch", timeout=LONG_DELAY_S / 2)
    finally:
        for device in devices:
            device.stop()
        gateway.stop()


def test_a_fleet_of_push_devices_from_one_process_converges(tmp_path):
    """``simulator fleet --kind push``: a station of emulated PUSH devices enrols people at random
    devices, and every other device comes to hold each of them."""
    config = tmp_path / "gateway.toml"
    config.write_text('tcp_host = "127.0.0.1"\nadmission = "open"\ndefault_secret = "lab"\n[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}", "--tcp-port", "0", "--http-port", "0")
    fleet = None
    try:
        url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        fleet = Process("simulator.cli", "fleet", "--kind", "push", "--push", url, "--devices", "4", "--duration", "3", "--rate", "1",
                        "--spread-s", "1")
        fleet.wait_for(r"4 of 4 PUSH devices talking", timeout=60)
        found = fleet.wait_for(r"(\d+) enrolments at 1/s, (\d+) deliveries, never arrived: (\d+)", timeout=60)
        assert found.groups() == ("3", "9", "0")
        assert fleet.wait_exit(30) == 0
    finally:
        if fleet is not None:
            fleet.stop()
        gateway.stop()


def test_a_mixed_site_of_native_zk_and_push_devices_converges_on_enrolments_at_each_kind(tmp_path):
    """One gateway process, a native ``simulator terminal``, a ``simulator zk-terminal`` the gateway
    dials on TCP, and a ``simulator push-terminal`` calling it: people enrolled at each kind reach
    the two others. The ZK device's were enrolled by its installer before the gateway first read it."""
    ZK = 301
    started = []
    try:
        zk = Process("simulator.cli", "zk-terminal", "--port", "0", "--users", "2", "--seed", "3", "--serial", "ZKMIX0001")
        started.append(zk)
        zk_port = int(zk.wait_for(r"ZK device \S+ on 127\.0\.0\.1:(\d+)").group(1))
        config = tmp_path / "gateway.toml"
        config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[[terminals]]\nid = {NATIVE}\nsecret = "secret-{NATIVE}"\n'
                          f'[[zk]]\nid = {ZK}\nhost = "127.0.0.1"\nport = {zk_port}\npoll_s = 0.5\n'
                          f'[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\n[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\n')
        gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}",
                          "--tcp-port", "0", "--http-port", "0")
        started.append(gateway)
        tcp_port = int(gateway.wait_for(r"listening for terminals on [\d.]+:(\d+)").group(1))
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        push_url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        device, native = Device(push_url, SN, tmp_path / "device.json"), Native(tcp_port)
        started += [device, native]

        def zk_holds(user_id: str) -> bool:
            return any(t["id"] == ZK and t["holds"] for t in api(page, f"users/{user_id}/terminals")["terminals"])

        # At the ZK device (its installer's people): on the native terminal and the PUSH device.
        eventually(lambda: {"1", "2"} <= set(device.users()) and native.show("2"), "the ZK device's people everywhere", timeout=60)
        assert device.users()["2"] == native.show("2")["name"] == api(page, "users/2")["name"]
        # At the PUSH device's keypad.
        device.keypad.ok('enrol 77 name="Ana Lima" card=1234')
        eventually(lambda: native.show("77") and zk_holds("77"), "the PUSH enrolment on the native terminal and the ZK device")
        assert native.show("77")["name"] == "Ana Lima"
        # At the native terminal's keypad.
        native.keypad.ok('enrol 9001 name="Bo Berg"')
        eventually(lambda: device.users().get("9001") == "Bo Berg" and zk_holds("9001"), "the native enrolment on the PUSH and ZK devices")
    finally:
        for process in reversed(started):
            process.stop()


def test_behind_a_listed_reverse_proxy_the_device_is_where_the_proxy_saw_it(tmp_path):
    """``[push] proxies``: a request from a listed proxy comes from the last X-Forwarded-For
    address, which the device's ``networks`` then judge; the header from anyone else is ignored."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[push]\nhost = "127.0.0.1"\nport = 0\nproxies = ["127.0.0.2/32"]\n'
                      f'[[push.devices]]\nsn = "{SN}"\nid = {PUSH_ID}\nnetworks = ["10.9.0.0/16"]\n')
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}", "--tcp-port", "0", "--http-port", "0")
    try:
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        hello = f"/iclock/cdata?SN={SN}&options=all&pushver=2.4.1"
        # Not a proxy: its X-Forwarded-For is the client's word, and 127.0.0.1 is not in the device's networks.
        status, answer = raw(url, "GET", hello, headers={"X-Forwarded-For": "10.9.1.5"})
        assert status == 403 and b"127.0.0.1 is not in the device's networks" in answer
        # The proxy: the last address is the one it saw (the one before it, whatever the client said).
        status, answer = raw(url, "GET", hello, source="127.0.0.2", headers={"X-Forwarded-For": "10.9.7.7, 10.9.1.5"})
        assert status == 200 and b"ATTLOGStamp" in answer
        assert terminal(page, PUSH_ID)["link"] == "push 10.9.1.5"
    finally:
        gateway.stop()
