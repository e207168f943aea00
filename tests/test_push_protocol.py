"""The PUSH protocol's sans-I/O server side (protocol/zk/push/): lines, commands, the conversation.

The vectors are the ones docs/zk-push.md shows; a change to either must change both.
"""

import base64
import calendar
import time

import pytest

from protocol.zk.push import commands as cmd
from protocol.zk.push.lines import FaceLine, FingerLine, OpLog, OtherLine, PhotoLine, Punch, UserLine, format_fields, parse_attlog, parse_operlog
from protocol.zk.push.server import (AttendanceUploaded, CommandsWanted, Done, InitRequested, MAX_BODY_BYTES, OperationsUploaded, OtherUpload,
                                     PushServer, PushTiming, QueueFull, Registered, Request, RequestError, ResultsReported, StrayResult)

SN = "CJDE193560303"


def post(table, body, **query):
    return Request("POST", "/iclock/cdata", {"SN": SN, "table": table, **query}, body)


def test_attlog_vector_parses_and_a_bad_line_is_kept_aside():
    body = b"1001\t2024-03-05 08:59:12\t0\t1\t0\t0\t0\n1002\t2024-03-05 09:00:40\t1\t15\t\n\n1003\tyesterday\t0\t1\n"
    punches, bad = parse_attlog(body)
    assert punches == [Punch("1001", "2024-03-05 08:59:12", 0, 1, "0"), Punch("1002", "2024-03-05 09:00:40", 1, 15, "0")]
    assert [(b.number, b.text) for b in bad] == [(4, "1003\tyesterday\t0\t1")]
    assert "is not YYYY-MM-DD HH:MM:SS" in bad[0].reason



def test_punch_times_read_through_the_minute_cache_are_the_calendars_and_bad_ones_are_refused():
    times = ["2024-03-05 08:59:12", "2024-03-05 08:59:13", "2024-02-29 23:59:59", "1999-12-31 00:00:00"]
    body = "".join(f"7\t{t}\t0\t1\n" for t in times + ["2024-03-05 24:00:00", "2024-03-05 08:60:00", "2024-03-05 08:59:60",
                                                        "2023-02-29 08:00:00", "2024-03-05T08:59:12", "2024-03-05 08:-1:00"])
    punches, bad = parse_attlog(body.encode())
    expected = [calendar.timegm(time.strptime(t, "%Y-%m-%d %H:%M:%S")) for t in times]
    assert [p.local_seconds() for p in punches] == expected
    assert [Punch(p.pin, p.time).local_seconds() for p in punches] == expected  # read again when not parsed
    assert [b.number for b in bad] == [5, 6, 7, 8, 9, 10]


def test_operlog_vector_keeps_every_field_in_order():
    tmp = base64.b64encode(b"\x01\x02\x03\x04").decode()
    body = (f"OPLOG 30\t0\t2024-03-05 09:01:00\t1001\t0\t0\t0\n"
            f"USER PIN=1001\tName=Zoë\tPri=0\tPasswd=\tCard=[0A1B2C3D]\tGrp=1\tTZ=0000000100000000\tVerify=0\n"
            f"FP PIN=1001\tFID=6\tSize={len(tmp)}\tValid=1\tTMP={tmp}\n"
            f"BIODATA Pin=1001\tNo=7\tIndex=0\tValid=1\tDuress=1\tType=1\tMajorVer=10\tMinorVer=0\tFormat=0\tTmp={tmp}\n"
            f"BIODATA Pin=1001\tNo=0\tIndex=0\tValid=1\tDuress=0\tType=9\tMajorVer=58\tMinorVer=1\tFormat=0\tTmp={tmp}\n"
            f"USERPIC PIN=1001\tFileName=1001.jpg\tSize=4\tContent=AAAA\n"
            f"BIODATA Pin=1001\tNo=0\tIndex=0\tValid=1\tDuress=0\tType=9\tTmp={tmp}\n"
            f"BIODATA Pin=1001\tNo=0\tIndex=0\tValid=1\tType=8\tMajorVer=1\tTmp={tmp}\n").encode()
    items, bad = parse_operlog(body)
    assert bad == []
    assert items[0] == OpLog(30, "0", "2024-03-05 09:01:00", ("1001", "0", "0", "0"))
    assert items[1].pin == "1001" and items[1].get("Name") == "Zoë" and items[1].fields[6] == ("TZ", "0000000100000000")
    assert items[2] == FingerLine("1001", 6, 1, b"\x01\x02\x03\x04", "FP")
    assert items[3] == FingerLine("1001", 7, 3, b"\x01\x02\x03\x04", "BIODATA")  # duress
    assert items[4] == FaceLine("1001", 9, 0, b"\x01\x02\x03\x04", "58", "1") and items[4].algorithm == "zkface9v58"
    assert items[5] == PhotoLine("1001", b"\x00\x00\x00")
    assert isinstance(items[6], OtherLine) and isinstance(items[7], OtherLine)  # a face of no algorithm, a palm: acknowledged, not used


def test_lines_write_back_as_they_read():
    user = UserLine((("PIN", "7"), ("Name", "Ann"), ("TZ", "1")))
    finger = FingerLine("7", 2, 1, b"abc")
    items, bad = parse_operlog((user.line() + "\n" + finger.line() + "\n").encode())
    assert (items, bad) == ([user, finger], [])


def test_a_value_never_splits_its_record():
    assert format_fields([("Name", "a\tb\nc")]) == "Name=a b c"


def test_a_line_that_is_not_utf8_is_bad_unless_the_device_has_a_charset():
    body = "USER PIN=5\tName=Jos\xe9\n".encode("cp1252")
    items, bad = parse_operlog(body)
    assert items == [] and bad[0].reason == "not UTF-8"
    items, bad = parse_operlog(body, "cp1252")
    assert bad == [] and items[0].get("Name") == "José"


def test_malformed_operlog_lines():
    items, bad = parse_operlog(b"USER Name=nobody\nFP PIN=1\tFID=12\tTMP=AAAA\nFP PIN=1\tFID=1\tTMP=!!\nOPLOG x\n")
    assert items == [] and [b.number for b in bad] == [1, 2, 3, 4]


def test_command_vectors():
    assert cmd.update_user((("PIN", "1001"), ("Name", "Zoë"), ("Pri", "0"))) == "DATA UPDATE USERINFO PIN=1001\tName=Zoë\tPri=0"
    assert cmd.delete_user("1001") == "DATA DELETE USERINFO PIN=1001"
    assert cmd.update_finger(FingerLine("1001", 6, 1, b"\x01\x02\x03\x04")) == "DATA UPDATE FINGERTMP PIN=1001\tFID=6\tSize=8\tValid=1\tTMP=AQIDBA=="
    assert cmd.delete_finger("1001", 6) == "DATA DELETE FINGERTMP PIN=1001\tFID=6"
    assert cmd.query_users() == "DATA QUERY USERINFO" and cmd.query_users("9") == "DATA QUERY USERINFO PIN=9"
    assert cmd.render_commands([]) == b"OK"
    rendered = cmd.render_commands([cmd.PushCommand(41, "CHECK"), cmd.PushCommand(42, "DATA DELETE USERINFO PIN=1")])
    assert rendered == b"C:41:CHECK\nC:42:DATA DELETE USERINFO PIN=1\n"
    assert cmd.parse_commands(rendered) == [cmd.PushCommand(41, "CHECK"), cmd.PushCommand(42, "DATA DELETE USERINFO PIN=1")]


def test_results_with_info_lines_and_garbage():
    results, bad = cmd.parse_results(b"ID=41&Return=0&CMD=INFO\n~DeviceName=F22\nFPVersion=10\nID=42&Return=-1002&CMD=DATA\nID=x&Return=0\nnoise\n")
    assert results == [cmd.CommandResult(41, 0, "INFO", (("DeviceName", "F22"), ("FPVersion", "10"))), cmd.CommandResult(42, -1002, "DATA")]
    assert [b.number for b in bad] == [5, 6]


def test_routing():
    server = PushServer(SN)
    assert server.receive(Request("GET", "/iclock/cdata", {"SN": SN, "options": "all", "pushver": "2.4.1"}), 0) == InitRequested("2.4.1", "")
    assert server.receive(Request("GET", "/iclock/cdata.aspx", {"SN": SN, "options": "all"}), 0) == InitRequested("", "")
    assert isinstance(server.receive(post("ATTLOG", b"", Stamp="9"), 0), AttendanceUploaded)
    assert server.receive(post("OPERLOG", b"", OpStamp="3"), 0) == OperationsUploaded("OPERLOG", "3", [], [])
    assert server.receive(post("ATTPHOTO", b"\xff" * 10), 0) == OtherUpload("ATTPHOTO", 10)
    wanted = server.receive(Request("GET", "/iclock/getrequest", {"SN": SN, "INFO": "Ver 6.60,3,2,100,10.0.0.5,10"}), 0)
    assert wanted == CommandsWanted({"firmware": "Ver 6.60", "users": "3", "fingers": "2", "punches": "100", "ip": "10.0.0.5", "fp_version": "10"})
    assert server.receive(Request("POST", "/iclock/registry", {"SN": SN}, b"DeviceType=acc,~DeviceName=SF1005"), 0) == Registered(
        {"DeviceType": "acc", "DeviceName": "SF1005"})


@pytest.mark.parametrize("request_, status", [
    (post("SECRETS", b"x"), 400),
    (Request("GET", "/iclock/nothing", {"SN": SN}), 404),
    (post("ATTLOG", b"x" * (MAX_BODY_BYTES + 1)), 413),
])
def test_requests_the_protocol_has_not(request_, status):
    with pytest.raises(RequestError) as raised:
        PushServer(SN).receive(request_, 0)
    assert raised.value.status == status


def test_init_answer_vector():
    server = PushServer(SN, PushTiming(delay_s=10, error_delay_s=30, timezone_h=1))
    assert server.init_answer({"ATTLOG": "1520", "OPERLOG": ""}).decode().splitlines() == [
        f"GET OPTION FROM: {SN}", "ATTLOGStamp=1520", "OPERLOGStamp=None", "ATTPHOTOStamp=None", "ErrorDelay=30", "Delay=10",
        "TransTimes=00:00;14:05", "TransInterval=1", "TransFlag=TransData AttLog\tOpLog\tEnrollUser\tChgUser\tEnrollFP\tChgFP\tFACE\tUserPic\tBioPhoto",
        "TimeZone=1", "Realtime=1", "Encrypt=0"]


def results(server, body, now):
    return server.receive(Request("POST", "/iclock/devicecmd", {"SN": SN}, body), now)


def test_a_command_is_sent_again_when_late_then_given_up():
    server = PushServer(SN, PushTiming(command_s=60, command_attempts=2), first_id=100)
    command = server.queue("DATA DELETE USERINFO PIN=1")
    assert command.id == 100
    assert server.commands_to_send(0) == [command]
    assert server.commands_to_send(30) == []  # sent, not late yet
    assert server.next_deadline() == 60
    assert server.commands_to_send(60) == [command]  # late: sent again
    assert server.expired(119) == []
    assert server.commands_to_send(200) == []  # its attempts are spent
    assert server.expired(120) == [command] and server.waiting == 0


def test_a_result_counts_once():
    server = PushServer(SN)
    command = server.queue("CHECK")
    never_sent = server.queue("INFO")
    server.commands_to_send(0)  # both go out...
    server.queue("REBOOT")  # ...this one does not
    reported = results(server, b"ID=1&Return=0&CMD=CHECK\nID=1&Return=0&CMD=CHECK\nID=3&Return=0&CMD=REBOOT\nID=77&Return=0&CMD=DATA\n", 1)
    assert isinstance(reported, ResultsReported)
    assert reported.outcomes[0] == Done(command, cmd.CommandResult(1, 0, "CHECK"))
    assert [type(o) for o in reported.outcomes[1:]] == [StrayResult, StrayResult, StrayResult]
    assert server.waiting == 2 and never_sent.id == 2


def test_the_queue_is_bounded():
    server = PushServer(SN, PushTiming(max_commands=2, per_request=1))
    server.queue("CHECK")
    server.queue("CHECK")
    with pytest.raises(QueueFull):
        server.queue("CHECK")
    assert len(server.commands_to_send(0)) == 1  # per_request
