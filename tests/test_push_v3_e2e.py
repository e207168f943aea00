"""A PUSH 3.x access-control device on a real site: a ``gateway run`` process, a ``simulator
push-terminal --push-version 3`` (which refuses 2.x syntax, as such firmware does) and a 2.x
``simulator push-terminal`` calling it over loopback HTTP. A keypad enrolment at the 3.x device
reaches the server and the 2.x device; a server edit reaches the 3.x device (so in 3.x syntax); a
person enrolled elsewhere is let through its door (so given its door rights); its wiped store is
refilled."""

import json
from urllib import request as urlrequest

import pytest
from test_push_e2e import Device, api, terminal

from gateway.sync.monitor import PUSH_REFUSED
from processes import eventually, start_gateway

SN2, ID2 = "ATT2E2E0001", 211
SN3, ID3 = "ACC3E2E0001", 311


@pytest.fixture
def site(tmp_path):
    # Neither entry pins push_version: the gateway learns the 3.x device's dialect from what it says.
    gateway, _, page = start_gateway(tmp_path, {}, settings=f'[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\n'
                                     f'[[push.devices]]\nsn = "{SN2}"\nid = {ID2}\n[[push.devices]]\nsn = "{SN3}"\nid = {ID3}\n')
    devices = []
    try:
        push_url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        devices.append(Device(push_url, SN2, tmp_path / "att.json"))
        devices.append(Device(push_url, SN3, tmp_path / "acc.json", "--push-version", "3"))
        eventually(lambda: terminal(page, ID2).get("online") and terminal(page, ID3).get("online"), "both PUSH devices online")
        yield page, gateway, devices[0], devices[1]
    finally:
        for device in devices:
            device.stop()
        gateway.stop()


def patch_user(page: str, user_id: str, body: dict) -> dict:
    req = urlrequest.Request(f"{page}api/users/{user_id}", method="PATCH", data=json.dumps(body).encode(),
                             headers={"Authorization": "Bearer test-token", "Content-Type": "application/json"})
    with urlrequest.urlopen(req, timeout=20) as response:
        return json.loads(response.read())


def test_a_3x_enrolment_reaches_a_2x_device_and_a_server_edit_reaches_the_3x_device(site):
    page, gateway, att, acc = site
    acc.keypad.ok('enrol 41 name="Ines Acc" card=5555 finger=2')
    eventually(lambda: att.users().get("41") == "Ines Acc", "the 2.x device to hold the 3.x enrolment")
    user = api(page, "users/41")
    assert (user["name"], user["cards"], user["fingerprints"]) == ("Ines Acc", ["CSN"], 1)
    gateway.wait_for(r"PUSH device ACC3E2E0001 speaks PUSH 2 no more but 3")
    patch_user(page, "41", {"name": "Ines Server"})
    eventually(lambda: acc.users().get("41") == "Ines Server", "the server's edit at the 3.x device")
    eventually(lambda: att.users().get("41") == "Ines Server", "the server's edit at the 2.x device")
    att.keypad.ok('enrol 42 name="Otto Att"')
    eventually(lambda: acc.users().get("42") == "Otto Att", "the 2.x enrolment at the 3.x device")
    # It was given the 3.x device's doors with it (userauthorize): the door lets Otto through, and the punch arrives.
    acc.keypad.ok("verify 42 card")
    eventually(lambda: [e for e in api(page, f"events?type=VERIFY_SUCCESS&terminal={ID3}")["events"] if e["user_id"] == "42"],
               "Otto's punch at the 3.x device on the server")
    refused = [e for e in api(page, f"events?type={PUSH_REFUSED.replace(' ', '%20')}&limit=100")["events"]]
    assert refused == []  # nothing was sent to either device in the other's syntax


def test_a_wiped_3x_device_is_refilled(site):
    page, gateway, att, acc = site
    people = [str(600 + n) for n in range(4)]
    for n, pin in enumerate(people):
        acc.keypad.ok(f'enrol {pin} name="Acc {n}" finger=1')
    eventually(lambda: len(api(page, "users")["users"]) == 4 and terminal(page, ID3).get("lag") == 0, "the four 3.x enrolments on the server")
    acc.keypad.ok("wipe")
    assert acc.users() == {}
    api(page, "reconcile", "POST")
    eventually(lambda: len(acc.users()) == 4, "the wiped 3.x device refilled")
    assert acc.users()["602"] == "Acc 2"
    assert acc.keypad.ok("list")[0].endswith("fingers [1]")  # its templates too, written as templatev10


def test_an_unknown_3x_device_waits_for_admission_refused_registration_and_syncs_once_admitted(tmp_path):
    """With ``admission = "pending"`` an unknown 3.x serial is recorded; its registration is answered
    406 (the 3.x document's refusal), so it keeps its data and tries again; once admitted it syncs."""
    gateway, _, page = start_gateway(tmp_path, {}, settings='admission = "pending"\n'
                                     '[push]\nhost = "127.0.0.1"\nport = 0\ndelay_s = 1\nerror_delay_s = 1\n')
    device = None
    try:
        push_url = gateway.wait_for(r"listening for PUSH devices on (http://\S+)/iclock/").group(1)
        device = Device(push_url, "ACCSTRANGER", tmp_path / "acc.json", "--push-version", "3")
        device.keypad.ok('enrol 8 name="Vera"')
        pending = eventually(lambda: [t for t in api(page, "terminals")["terminals"] if t["admission"] == "pending"], "a pending terminal")
        device.process.wait_for(r"registration answered 406")
        assert api(page, "users")["users"] == []
        api(page, f"terminals/{pending[0]['id']}/admit", "POST")
        eventually(lambda: api(page, "users")["users"], "the 3.x device's enrolment once admitted", timeout=30)
        assert api(page, "users/8")["name"] == "Vera"
    finally:
        if device is not None:
            device.stop()
        gateway.stop()
