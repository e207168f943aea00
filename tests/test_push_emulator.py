"""The emulated PUSH device with no I/O (simulator/push/device.py): what it sends, how it carries
out commands, its stamps, and its flash (``--state``)."""

from datetime import datetime, timezone

from twisted.internet import defer, task

from protocol.zk.push.commands import PushCommand
from protocol.zk.push.lines import parse_attlog, parse_operlog
from simulator.push.client import PushCaller
from simulator.push.device import UNKNOWN_COMMAND, PushTerminal

NOON = datetime(2024, 3, 5, 12, 0, 0, tzinfo=timezone.utc)


def test_keypad_changes_become_uploads_acknowledged_once():
    device = PushTerminal("EMU1")
    device.configure(b"GET OPTION FROM: EMU1\nATTLOGStamp=None\nTimeZone=2\nDelay=5\n")
    device.enroll("7", name="Ann", fingers=(1,), now=NOON)
    device.verify("7", "card", now=NOON)
    query, body, token = device.next_upload()
    assert query["table"] == "ATTLOG" and parse_attlog(body)[0][0].time == "2024-03-05 14:00:00"  # its clock: TimeZone=2
    device.uploaded(token)
    query, body, token = device.next_upload()
    items, bad = parse_operlog(body)
    assert query["table"] == "OPERLOG" and bad == [] and [type(i).__name__ for i in items] == ["OpLog", "UserLine", "FingerLine"]
    device.uploaded(token)
    assert device.next_upload() is None


def test_a_server_whose_stamp_is_past_its_log_gets_all_of_it_again():
    device = PushTerminal("EMU1")
    for pin in ("1", "2"):
        device.verify(pin, now=NOON)
    device.configure(b"ATTLOGStamp=1\n")
    assert len(parse_attlog(device.next_upload()[1])[0]) == 1  # the server holds the first
    device.configure(b"ATTLOGStamp=900\n")  # another log's stamp: a wiped or replaced device
    assert len(parse_attlog(device.next_upload()[1])[0]) == 2


def test_commands_keep_the_fields_they_do_not_name():
    device = PushTerminal("EMU1")
    device.enroll("7", name="Ann")
    lines, result = device.execute(PushCommand(5, "DATA UPDATE USERINFO PIN=7\tName=Ann Lee"))
    assert result.code == 0 and dict(device.users["7"])["TZ"] == "0000000100000000" and dict(device.users["7"])["Name"] == "Ann Lee"
    lines, result = device.execute(PushCommand(6, "DATA QUERY USERINFO"))
    assert result.code == 0 and lines[0].startswith("USER PIN=7\tName=Ann Lee")
    assert device.execute(PushCommand(7, "SHELL rm -rf /"))[1].code == UNKNOWN_COMMAND
    assert device.execute(PushCommand(8, "DATA DELETE USERINFO PIN=7"))[1].code == 0 and device.users == {}


def test_the_flash_keeps_users_logs_and_stamps(tmp_path):
    device = PushTerminal("EMU1", biodata=True)
    device.enroll("7", name="Zoë", fingers=(3,))
    device.verify("7")
    device.uploaded(device.next_upload()[2])
    device.save(str(tmp_path / "flash.json"))
    again = PushTerminal.load(str(tmp_path / "flash.json"), "EMU1")
    assert (again.users, again.fingers, again.punches, again.sent_stamp, again.oplog, again.biodata) == (
        device.users, device.fingers, device.punches, device.sent_stamp, device.oplog, True)


def test_a_3x_device_registers_uploads_rtlog_and_tabledata_and_refuses_2x_syntax(tmp_path):
    from protocol.zk.push import v3

    device = PushTerminal("ACC1", version=3)
    assert "DeviceType" not in device.init_query() and device.init_query()["pushver"].startswith("3")
    device.configure(b"OK")
    assert not device.registered and device.registry_body().startswith(b"DeviceType=acc,")
    device.configure(b"RegistryCode=ACC1")
    device.configure(b"ServerVersion=3.1.2\nRequestDelay=4\nRealtime=1\n")
    assert device.registered and device.delay_s == 4
    device.enroll("7", name="Ann", fingers=(1,), now=NOON)
    device.verify("7", "card", now=NOON)
    query, body, token = device.next_upload()
    assert query["table"] == "rtlog" and v3.parse_rtlog(body)[0][0].verify == 2
    assert device.accepts(query, b"OK")
    device.uploaded(token)
    query, body, token = device.next_upload()
    assert (query["table"], query["tablename"], query["count"]) == ("tabledata", "user", "1")
    assert not device.accepts(query, b"OK") and device.accepts(query, b"user=1")  # 3.x wants its table named back
    device.uploaded(token)
    query, body, token = device.next_upload()
    assert query["tablename"] == "templatev10" and v3.parse_table("templatev10", body)[0][0].fid == 1
    device.uploaded(token)
    assert device.next_upload() is None
    for text in ("DATA UPDATE USERINFO PIN=7\tName=X", "DATA QUERY USERINFO", "DATA DELETE FINGERTMP PIN=7\tFID=1"):
        assert device.execute(PushCommand(1, text))[1].code == -629  # 2.x syntax: no such table
    lines, result = device.execute(PushCommand(2, "DATA UPDATE user CardNo=\tPin=7\tPassword=\tGroup=2\tStartTime=0\tEndTime=0\tName=Ann Lee\tPrivilege=0"))
    assert result.code == 0 and dict(device.users["7"])["name"] == "Ann Lee" and dict(device.users["7"])["uid"] == "1"
    lines, result = device.execute(PushCommand(3, v3.query(v3.USER)))
    assert result.code == 1 and lines[0].startswith("user uid=1\tcardno=\tpin=7\tpassword=\tgroup=2")
    assert device.query_upload(PushCommand(3, ""), lines) == ("/iclock/querydata", {
        "SN": "ACC1", "type": "tabledata", "cmdid": "3", "tablename": "user", "count": "1", "packcnt": "1", "packidx": "1"})
    assert device.execute(PushCommand(4, "DATA UPDATE templatev10 Pin=8\tFingerID=1\tValid=1\tTemplate=AAAA"))[1].code == -27  # no such user
    assert device.execute(PushCommand(5, v3.authorize("7")))[1].code == 0 and device.authorized == {"7": "1"}
    for n, text in enumerate(v3.deletion("7")):  # rights and templates first: DATA DELETE user leaves them
        assert device.execute(PushCommand(6 + n, text))[1].code == 0
    assert (device.users, device.fingers, device.authorized) == ({}, {}, {})
    device.enroll("9", now=NOON)
    device.verify("9", now=NOON)  # enrolled at its keypad: door rights of its own
    device.execute(PushCommand(9, "DATA UPDATE user Pin=10\tName=Al"))
    device.verify("10", now=NOON)  # written by the server without userauthorize: refused at the door
    assert [p.pin for p in v3.parse_rtlog(device.next_upload()[1])[0]] == ["9"]
    device.save(str(tmp_path / "flash.json"))
    assert PushTerminal.load(str(tmp_path / "flash.json"), "ACC1").version == 3


def test_a_refused_upload_is_tried_again_after_error_delay_not_at_once():
    """Realtime sends an upload at once, but not one the server just refused: that waits ErrorDelay
    (the emulator called a gateway that did not know its serial 1,000 times a second)."""
    clock = task.Clock()
    device = PushTerminal("BADSN999")
    caller = PushCaller(device, "http://127.0.0.1:1", clock)
    calls = []

    def answer(method, path, query, body=None):
        calls.append((method, path))
        if len(calls) > 50:  # without the pause the loop never yields: stop it
            caller.running = False
        if method == b"GET":
            return defer.succeed((200, b"GET OPTION FROM: BADSN999\nRealtime=1\nDelay=1\nErrorDelay=3\nPushOptionsFlag=1\n"))
        return defer.succeed((403, b"not admitted"))

    caller._call = answer
    caller.start()
    assert calls == [(b"GET", "/iclock/cdata"), (b"POST", "/iclock/cdata")]  # hello, the options refused: then ErrorDelay
    clock.advance(2.9)
    assert len(calls) == 2
    clock.advance(0.1)
    assert len(calls) == 4
    caller.stop()
