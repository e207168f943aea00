"""Faces and photos across a real site: a ``gateway run`` process, three ``simulator push-terminal``
processes (two of the visible-light face algorithm 58, one of algorithm 40) and a native ``simulator
terminal``. A face and photo enrolled at one PUSH device reach the server and the other device of
its algorithm; the device of the other algorithm gets the person and the photo, and keeps its own
face of them untouched; the native terminal uses only faces of the native format."""

import sqlite3
from contextlib import closing

import pytest

from processes import Process, eventually
from protocol.records import UserRecordWire
from test_push_e2e import NATIVE, Device, Native, terminal

DEVICES = {"FACEA0001": 211, "FACEB0002": 212, "FACEC0003": 213}
ALGORITHMS = {"FACEA0001": "9:58.1", "FACEB0002": "9:58.2", "FACEC0003": "9:40.0"}  # A and B differ in MinorVer only


@pytest.fixture
def site(tmp_path):
    config = tmp_path / "gateway.toml"
    devices = "".join(f'[[push.devices]]\nsn = "{sn}"\nid = {tid}\n' for sn, tid in DEVICES.items())
    config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "test-token"\n[[terminals]]\nid = {NATIVE}\nsecret = "secret-{NATIVE}"\n'
                      f'[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\n' + devices)
    db = tmp_path / "gateway.db"
    gateway = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{db}", "--tcp-port", "0", "--http-port", "0")
    started = []
    try:
        tcp_port = int(gateway.wait_for(r"listening for terminals on [\d.]+:(\d+)").group(1))
        page = gateway.wait_for(r"monitoring page at (http://\S+/)").group(1)
        push_url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        for sn in DEVICES:
            started.append(Device(push_url, sn, tmp_path / f"{sn}.json", "--face", ALGORITHMS[sn], *(["--biodata"] if sn == "FACEA0001" else [])))
        started.append(Native(tcp_port))
        eventually(lambda: all(terminal(page, tid).get("online") for tid in [*DEVICES.values(), NATIVE]), "every terminal online")
        yield dict(zip([*DEVICES, "native"], started)), db
    finally:
        for found in started:
            found.stop()
        gateway.stop()


def pictures(device, pin: str) -> list[str]:
    """``face ALGORITHM INDEX DIGEST`` and ``photo DIGEST`` lines of what the device holds of ``pin``."""
    status, lines = device.keypad.command(f"show {pin}")
    return lines if status.startswith("ok") else []


def server_record(db, user_id: str):
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute("SELECT record FROM users WHERE user_id = ?", (user_id,)).fetchone()
    return UserRecordWire.parse(row[0]) if row and row[0] else None


def test_faces_and_photos_reach_the_devices_of_their_algorithm_only(site):
    terminals, db = site
    a, b, c, native = terminals["FACEA0001"], terminals["FACEB0002"], terminals["FACEC0003"], terminals["native"]

    # A person enrolled by face at C (algorithm 40) reaches A and B with a name and no face.
    c.keypad.ok('enrol 500 name="Cy Face" face=yes')
    own_face = pictures(c, "500")
    assert [line.split()[1] for line in own_face] == ["zkface9v40"]
    eventually(lambda: a.users().get("500") == "Cy Face" and b.users().get("500") == "Cy Face", "the name at A and B")

    # A face and photo enrolled at A reach the server and B (same algorithm, another MinorVer), and C without the face.
    a.keypad.ok('enrol 600 name="Ana Face" face=yes photo=6000')
    at_a = pictures(a, "600")
    assert [line.split()[0] for line in at_a] == ["face", "photo"]
    eventually(lambda: pictures(b, "600") == at_a, "A's face and photo at B")
    eventually(lambda: pictures(c, "600") == [line for line in at_a if line.startswith("photo")], "the photo alone at C")
    record = server_record(db, "600")
    assert [(f.format, f.index) for f in record.faces] == [("zkface9v58", 0)] and len(record.photo) == 6000

    # The native terminal holds that record whole, and uses only faces of its own format: none here.
    shown = eventually(lambda: native.show("600"), "the native terminal to hold 600")
    assert (shown["faces"], shown["foreign"]) == ("(none)", "face zkface9v58")

    # A's face of the person C enrolled reaches B, and C keeps its own face of them untouched.
    a.keypad.ok("edit 500 face=yes")
    at_a = pictures(a, "500")
    eventually(lambda: pictures(b, "500") == at_a, "A's face of 500 at B")
    eventually(lambda: sorted(f.format for f in server_record(db, "500").faces) == ["zkface9v40", "zkface9v58"], "both faces on the server")
    assert pictures(c, "500") == own_face

    # A native face reaches no PUSH device.
    native.keypad.ok('enrol 9001 name="Bo Native" face=0')
    eventually(lambda: b.users().get("9001") == "Bo Native", "the native enrolment at B")
    assert pictures(b, "9001") == [] and pictures(a, "9001") == []
    assert [f.format for f in server_record(db, "9001").faces] == [None]
