"""PUSH 3.x, the access-control dialect (protocol/zk/push/v3.py, dialect.py, and PushDevice speaking it).

The vectors are the "Security PUSH Communication Protocol" 3.1.2 document's examples, as
docs/zk-push.md quotes them ("PUSH 3 (access-control devices)"); a change to either changes both.
"""

import base64

from test_push_device import SN, call, fetch_commands, make

from gateway.sync.connection import ListingUnsupported, UserResult
from protocol.events import EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import Card, CardType, UserRecord, UserRecordWire
from protocol.zk.push import v3
from protocol.zk.push.dialect import PUSH2, PUSH3, evidence
from protocol.zk.push.lines import FingerLine, OtherLine, Punch, UserLine
from protocol.zk.push.server import AttendanceUploaded, InitRequested, PushServer, Request, TableAcknowledged, TableUploaded

TEMPLATE = bytes(range(40))
B64 = base64.b64encode(TEMPLATE).decode()


def test_user_vector_reads_into_the_names_the_mapping_reads_and_keeps_the_rest():
    items, bad = v3.parse_table("user", b"user uid=5\tcardno=\tpin=4\tpassword=\tgroup=1\tstarttime=0\tendtime=0\tname=\tprivilege=0\tdisable=0\tverify=0\n")
    assert bad == []
    assert items == [UserLine((("uid", "5"), ("Card", ""), ("PIN", "4"), ("Passwd", ""), ("Grp", "1"), ("starttime", "0"), ("endtime", "0"),
                               ("Name", ""), ("Pri", "0"), ("disable", "0"), ("verify", "0")))]


def test_template_vector_and_a_duress_finger_uploaded_as_fingerid_plus_16():
    body = (f"templatev10 size={len(B64)}\tuid=4\tpin=4\tfingerid=7\tvalid=1\ttemplate={B64}\tresverd=\tendtag=\n"
            f"templatev10 size={len(B64)}\tuid=3\tpin=4\tfingerid=22\tvalid=1\ttemplate={B64}\tresverd=\tendtag=\n").encode()
    items, bad = v3.parse_table("templatev10", body)
    assert bad == [] and items == [FingerLine("4", 7, 1, TEMPLATE), FingerLine("4", 6, 3, TEMPLATE)]
    assert v3.parse_table("templatev10", v3.template_record(items[1], 3).encode())[0] == [items[1]]  # written as it is read


def test_biodata_fingers_are_fingers_and_other_biometrics_and_tables_are_left():
    body = (f"biodata pin=1\tno=6\tindex=0\tvalid=1\tduress=0\ttype=1\tmajorver=10\tminorver=0\tformat=0\ttmp={B64}\n"
            f"biodata pin=1\tno=0\tindex=0\tvalid=1\tduress=0\ttype=9\tmajorver=58\tminorver=1\tformat=0\ttmp={B64}\n"
            "userpic pin=1\tfilename=1.jpg\tsize=4\tcontent=AAAA\n").encode()
    items, bad = v3.parse_table("biodata", body)
    assert bad == [] and items == [FingerLine("1", 6, 1, TEMPLATE, "BIODATA"), OtherLine("biodata", 2), OtherLine("userpic", 3)]


def test_rtlog_keeps_the_people_let_through_and_leaves_door_events_and_refusals():
    body = (b"time=2017-01-10 11:49:32\tpin=0\tcardno=0\teventaddr=1\tevent=27\tinoutstatus=1\tverifytype=0\tindex=21\n"  # the document's: no one
            b"time=2024-03-05 08:59:12\tpin=7\tcardno=0\tsitecode=0\tlinkid=0\teventaddr=1\tevent=0\tinoutstatus=0\tverifytype=1\tindex=22\n"
            b"time=2024-03-05 09:00:00\tpin=8\tcardno=0\teventaddr=1\tevent=0\tinoutstatus=1\tverifytype=0000000000000010\tindex=23\n"
            b"time=2024-03-05 09:01:00\tpin=9\tcardno=0\teventaddr=1\tevent=29\tinoutstatus=0\tverifytype=4\tindex=24\n"  # expired: refused
            b"time=noon\tpin=9\tevent=0\n")
    punches, bad = v3.parse_rtlog(body)
    assert punches == [Punch("7", "2024-03-05 08:59:12", 0, 1), Punch("8", "2024-03-05 09:00:00", 1, 15)]
    assert [b.number for b in bad] == [5]
    assert v3.parse_rtlog(v3.rtlog_record(punches[0], 1).encode())[0] == [punches[0]]


def test_command_vectors():
    held = UserLine((("uid", "1"), ("Card", ""), ("PIN", "1"), ("Passwd", "234"), ("Grp", "0"), ("starttime", "0"), ("endtime", "0"),
                     ("Name", ""), ("Pri", "0")))
    assert v3.update_user(held.fields) == "DATA UPDATE user CardNo=\tPin=1\tPassword=234\tGroup=0\tStartTime=0\tEndTime=0\tName=\tPrivilege=0"
    # a person new to the device: the document's defaults (group 1, no validity limit)
    assert v3.update_user((("PIN", "2"), ("Name", "Bo"), ("Pri", "0"), ("Passwd", ""), ("Card", "99"), ("Grp", ""))) == (
        "DATA UPDATE user CardNo=99\tPin=2\tPassword=\tGroup=1\tStartTime=0\tEndTime=0\tName=Bo\tPrivilege=0")
    assert v3.delete_user("1") == "DATA DELETE user Pin=1"
    assert v3.update_finger(FingerLine("1", 6, 1, TEMPLATE)) == f"DATA UPDATE templatev10 Pin=1\tFingerID=6\tValid=1\tTemplate={B64}"
    assert v3.delete_finger("1", 6) == "DATA DELETE templatev10 Pin=1\tFingerID=6"
    assert v3.query("user") == "DATA QUERY tablename=user,fielddesc=*,filter=*"
    assert PUSH3.listing(biodata=True) == ["DATA QUERY tablename=user,fielddesc=*,filter=*", "DATA QUERY tablename=biodata,fielddesc=*,filter=Type=1"]


def test_what_a_request_shows_of_its_dialect():
    assert evidence("GET", "cdata", {"options": "all", "pushver": "3.1.2"}) is None  # pushver is no evidence
    assert evidence("GET", "cdata", {"devicetype": "acc"}) is PUSH3
    assert evidence("POST", "registry", {}) is PUSH3
    assert evidence("POST", "cdata", {"table": "rtlog"}) is PUSH3
    assert evidence("POST", "cdata", {"table": "tablename=user"}) is PUSH3
    assert evidence("POST", "cdata", {"table": "ATTLOG"}) is PUSH2
    assert evidence("GET", "getrequest", {}) is None


def test_routing_of_3x_requests():
    server = PushServer(SN)

    def receive(method, path, body=b"", **query):
        return server.receive(Request(method, path, {"SN": SN, **query}, body), 0)

    assert receive("GET", "/iclock/push") == InitRequested("3.1.2", "", "push")
    assert isinstance(receive("POST", "/iclock/cdata", b"time=2024-03-05 08:59:12\tpin=7\tevent=0\tverifytype=1\n", table="rtlog"), AttendanceUploaded)
    upload = receive("POST", "/iclock/cdata", b"user uid=1\tpin=7\tname=Ann\n", table="tabledata", tablename="user", count="1")
    assert isinstance(upload, TableUploaded) and upload.table == "user" and upload.items[0].pin == "7"
    assert receive("POST", "/iclock/cdata", b"user uid=1\tpin=7\n", table="tablename=user") == upload.__class__("user", None, [UserLine((("uid", "1"), ("PIN", "7")))], [])
    answer = receive("POST", "/iclock/querydata", b"user uid=1\tpin=7\n", type="tabledata", cmdid="5", tablename="user", count="1")
    assert isinstance(answer, TableUploaded)
    assert receive("POST", "/iclock/cdata", b"userpic pin=1\tcontent=AA\n", table="tabledata", tablename="userpic") == TableAcknowledged("userpic", 1)
    assert server.v3_answer(hello=True, registered=False) == b"OK"
    hello = server.v3_answer(hello=True).decode().splitlines()
    assert hello[:2] == ["registry=ok", f"RegistryCode={SN}"] and "RequestDelay=10" in hello and "PushProtVer=3.1.2" in hello
    assert "registry=ok" not in server.v3_answer().decode()


def register(device, doors=1):
    """A 3.x device's hello: GET cdata (answered OK: not registered yet), registry, push."""
    assert call(device, "GET", "/iclock/cdata", {"options": "all", "pushver": "3.1.2"})[0] == 200  # no DeviceType: taken for 2.x yet
    said = f"DeviceType=acc,~DeviceName=F20,FirmVer=Ver 8.0,~ZKFPVersion=10,PushVersion=3.1.2,LockCount={doors}".encode()
    assert call(device, "POST", "/iclock/registry", {}, said) == (200, f"RegistryCode={SN}".encode())
    status, config = call(device, "GET", "/iclock/push")
    assert status == 200 and b"RequestDelay=" in config and b"registry=ok" not in config
    assert call(device, "GET", "/iclock/cdata", {"options": "all", "pushver": "3.1.2"})[1].startswith(b"registry=ok\n")


def list_v3(device, users=b"", templates=b""):
    sent = fetch_commands(device)
    assert [c.text for c in sent] == ["DATA QUERY tablename=user,fielddesc=*,filter=*", "DATA QUERY tablename=templatev10,fielddesc=*,filter=*"]
    for command, body, table in zip(sent, (users, templates), ("user", "templatev10")):
        query = {"type": "tabledata", "cmdid": str(command.id), "tablename": table, "count": str(len(body.splitlines()))}
        assert call(device, "POST", "/iclock/querydata", query, body) == (200, v3.table_answer(table, len(body.splitlines())))
    body = "".join(f"ID={c.id}&return={len(rows.splitlines())}&CMD=DATA QUERY\n" for c, rows in zip(sent, (users, templates)))
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")


def test_a_3x_device_lists_in_3x_even_when_its_hello_said_nothing_and_the_2x_listing_is_dropped():
    device, clock, events, *_ = make()
    register(device)
    assert device.dialect is PUSH3
    list_v3(device, b"user uid=1\tcardno=\tpin=77\tpassword=\tgroup=3\tstarttime=583512660\tendtime=0\tname=Ana\tprivilege=6\tdisable=0\tverify=1\n",
            f"templatev10 size={len(B64)}\tuid=1\tpin=77\tfingerid=6\tvalid=1\ttemplate={B64}\n".encode())
    assert [(e.code, e.sub_code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, Origin.DEVICE, "77")]
    fetched = []
    device.fetch_users(["77"]).addCallback(fetched.append)
    record = fetched[0].users[0]
    assert (record.name, len(record.fingerprints), record.fingerprints[0].format) == ("Ana", 1, "zk10")  # ~ZKFPVersion=10 from the registry


def test_a_push_to_a_3x_device_is_3x_and_keeps_what_the_device_owns():
    device, clock, events, *_ = make()
    register(device)
    list_v3(device, b"user uid=9\tcardno=[15CD5B07]\tpin=77\tpassword=\tgroup=3\tstarttime=583512660\tendtime=583599060\tname=Ana\t"
                    b"privilege=6\tdisable=0\tverify=1\n")
    events.stored.clear()
    done = []
    card = Card(CardType.CSN, (123456789).to_bytes(4, "big"))  # [15CD5B07]: the document's notation of 123456789
    record = UserRecordWire.build(UserRecord("77", name="Ana Lima", cards=(card,)))
    device.put_users([record], keep_local_changes=False).addBoth(done.append)
    assert done == [[UserResult("77", UserStatus.OK)]]
    sent = fetch_commands(device)
    # the server has no group, validity or privilege for Ana: the device's stay as it holds them, and its card in its notation
    assert [c.text for c in sent] == ["DATA UPDATE user CardNo=[15CD5B07]\tPin=77\tPassword=\tGroup=3\tStartTime=583512660\tEndTime=583599060"
                                      "\tName=Ana Lima\tPrivilege=6\tDisable=0\tVerify=1"]
    assert call(device, "POST", "/iclock/devicecmd", {}, f"ID={sent[0].id}&return=0&CMD=DATA UPDATE\n".encode()) == (200, b"OK")
    assert [(e.code, e.sub_code) for e in events.stored] == [(EventCode.UPDATE_SUCCESS, Origin.SERVER)]
    device.delete_users(["77"])  # rights and templates first, as the document orders it: the user's deletion leaves them
    assert [c.text for c in fetch_commands(device)] == ["DATA DELETE userauthorize Pin=77", "DATA DELETE templatev10 Pin=77", "DATA DELETE user Pin=77"]


def test_a_3x_keypad_enrolment_uploaded_as_tabledata_is_announced_and_acknowledged_by_table():
    device, clock, events, *_ = make()
    register(device)
    list_v3(device)
    body = b"user uid=2\tcardno=1234\tpin=78\tpassword=\tgroup=1\tstarttime=0\tendtime=0\tname=Bo\tprivilege=0\tdisable=0\tverify=0\n"
    assert call(device, "POST", "/iclock/cdata", {"table": "tabledata", "tablename": "user", "count": "1"}, body) == (200, b"user=1")
    assert [(e.code, e.sub_code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, Origin.DEVICE, "78")]
    punch = b"time=2024-03-05 08:59:12\tpin=78\tcardno=1234\teventaddr=1\tevent=0\tinoutstatus=0\tverifytype=4\tindex=1\n"
    assert call(device, "POST", "/iclock/cdata", {"table": "rtlog"}, punch) == (200, b"OK")
    assert [(e.code, e.user_id) for e in events.stored][-1] == (EventCode.VERIFY_SUCCESS, "78")


def test_an_entry_pinned_to_3x_is_answered_so_from_its_first_hello():
    device, *_ = make(push_version="3")
    assert call(device, "GET", "/iclock/cdata", {"options": "all"}) == (200, b"OK")  # not registered: it registers next
    assert fetch_commands(device)[0].text.startswith("DATA QUERY tablename=user")
    call(device, "POST", "/iclock/cdata", {"table": "ATTLOG"}, b"7\t2024-03-05 08:59:12\t0\t1\n")
    assert device.dialect is PUSH3  # pinned: what a request shows does not change it


def test_a_3x_device_met_mid_session_is_known_by_its_refusal_of_the_2x_listing():
    """After a gateway start a 3.x device does not say hello again: its first request shows nothing,
    and it refuses the 2.x listing with -629, which is taken as its word."""
    device, clock, events, *_ = make()
    sent = fetch_commands(device)
    assert [c.text for c in sent] == ["DATA QUERY USERINFO", "DATA QUERY FINGERTMP"]
    body = "".join(f"ID={c.id}&Return=-629&CMD=DATA\n" for c in sent)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")
    assert device.dialect is PUSH3
    list_v3(device, b"user uid=1\tpin=5\tname=Eve\n")
    assert [(e.code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, "5")]


def test_a_2x_face_device_refusing_only_its_photo_query_with_629_stays_2x():
    """Only a refusal of the user query says "3.x": another table a 2.x device lacks says nothing of its dialect."""
    device, *_ = make()
    options = b"MultiBioDataSupport=0:1:0:0:0:0:0:0:0:1,MultiBioVersion=0:10.0:0:0:0:0:0:0:0:58.1"
    assert call(device, "POST", "/iclock/cdata", {"table": "options"}, options) == (200, b"OK")
    sent = fetch_commands(device)
    assert sent[-1].text == "DATA QUERY USERPIC"
    body = "".join(f"ID={c.id}&Return={-629 if c is sent[-1] else 0}&CMD=DATA\n" for c in sent)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")
    assert device.dialect is PUSH2 and fetch_commands(device) == [], "no 3.x listing asked"


def test_a_refused_user_query_fails_the_listing_and_takes_nobody_for_gone():
    """A device that will not list its users is not a wiped one: reconciliation is told it cannot list,
    and what the server has seen of it stays."""
    device, clock, events, holdings, *_ = make(push_version="2")
    sent = fetch_commands(device)
    call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, b"USER PIN=5\tName=Eve\n")
    call(device, "POST", "/iclock/devicecmd", {}, "".join(f"ID={c.id}&Return=0&CMD=DATA\n" for c in sent).encode())
    device.fetch_users(["5"])
    seen = dict(holdings.seen)
    outcome = []
    device.list_digests("", 10).addBoth(outcome.append)
    sent = fetch_commands(device)
    body = "".join(f"ID={c.id}&Return={-629 if c.text == 'DATA QUERY USERINFO' else 0}&CMD=DATA\n" for c in sent)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")
    assert isinstance(outcome[0].value, ListingUnsupported) and "refused to list its users" in str(outcome[0].value)
    assert holdings.seen == seen and "5" in seen


def test_a_person_new_to_a_3x_device_is_given_its_doors_and_one_it_holds_keeps_its_own():
    device, *_ = make()
    register(device, doors=2)
    list_v3(device, b"user uid=1\tpin=77\tname=Ana\tgroup=1\n")
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo")), UserRecordWire.build(UserRecord("77", name="Ana Lima"))],
                     keep_local_changes=False)
    sent = [c.text for c in fetch_commands(device)]
    assert sent == ["DATA UPDATE user CardNo=\tPin=5\tPassword=\tGroup=1\tStartTime=0\tEndTime=0\tName=Bo\tPrivilege=0",
                    "DATA UPDATE userauthorize Pin=5\tAuthorizeTimezoneId=1\tAuthorizeDoorId=3",  # both doors, time rule 1
                    "DATA UPDATE user CardNo=\tPin=77\tPassword=\tGroup=1\tStartTime=0\tEndTime=0\tName=Ana Lima\tPrivilege=0"]


def test_rtlog_lines_that_do_not_parse_are_reported_as_rtlog():
    device, clock, events, holdings, presence, db, skipped = make()
    register(device)
    body = b"time=yesterday\tpin=7\tevent=0\ntime=2024-03-05 08:59:12\tpin=7\tevent=0\tverifytype=1\n"
    assert call(device, "POST", "/iclock/cdata", {"table": "rtlog"}, body) == (200, b"OK")
    assert skipped.counts == {"rtlog": 1} and "1 rtlog line(s) skipped" in events.monitoring[0]["detail"]
    assert [e.user_id for e in events.stored] == ["7"]
