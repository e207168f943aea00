"""PushDevice (gateway/push/device.py), the sync core's view of a PUSH device, without sockets:
requests go in as the listener hands them over, time is a task.Clock, and the event log, the
holdings and the registry are small fakes that record what they were given."""

from twisted.internet import defer, task

from gateway.sync.connection import UserResult
from gateway.sync.monitor import LOG_RESTARTED
from gateway.push.device import LINES_SKIPPED, DeviceGone, PushDevice
from gateway.zk.holdings import Holdings
from protocol.events import EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import Card, CardType, UserRecord, UserRecordWire, record_digest
from protocol.zk.push.commands import parse_commands
from protocol.zk.push.server import PushServer, PushTiming, Request

SN = "PUSH0001"
TID = 501


class Events:
    def __init__(self):
        self.stored = []
        self.monitoring = []

    def stored_through(self, terminal_id):
        return defer.succeed(0)

    def submit(self, terminal_id, events, log_epoch=None):
        self.stored += events
        return defer.succeed(events[-1].event_id if events else 0)

    def commit_with_events(self, work, rows):
        self.monitoring += rows
        return defer.succeed(None)


class Store:
    """The ZkStore a PUSH device keeps its state in: what the server has seen, the stamps, the punches stored."""

    def __init__(self, seen=None, stored=()):
        self.seen = dict(seen or {})
        self.stored = set(stored)
        self.writes = []

    def holdings(self, terminal_id):
        return defer.succeed(Holdings(dict(self.seen), frozenset()))

    def save_seen(self, terminal_id, seen):
        for user_id, digest in seen.items():
            if digest is None:
                self.seen.pop(user_id, None)
            else:
                self.seen[user_id] = digest
        return defer.succeed(None)

    def save_attendance_mark(self, *args):
        self.writes.append(("save_attendance_mark", args))
        return defer.succeed(None)

    def stored_punches(self, terminal_id, since_ms):
        return defer.succeed(self.stored)


class Presence:
    def __init__(self):
        self.online_now = []

    def online(self, connection):
        self.online_now.append(connection)
        return True

    def offline(self, connection):
        self.online_now.remove(connection)


class Counter:
    def __init__(self):
        self.counts = {}

    def labels(self, table):
        counter = self

        class One:
            def inc(self, n=1):
                counter.counts[table] = counter.counts.get(table, 0) + n

        return One()


def make(seen=None, stored=(), command_s=60.0, offline_s=600.0, on_offline_reason=lambda terminal_id, reason: None):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    events, store, presence, skipped = Events(), Store(seen, stored), Presence(), Counter()
    device = PushDevice(TID, PushServer(SN, PushTiming(command_s=command_s, command_attempts=2)), clock=clock, store=store,
                        events=events, presence=presence, offline_s=offline_s, metrics=skipped,
                        on_offline_reason=on_offline_reason)
    return device, clock, events, store, presence, store, skipped  # the store twice: its holdings, its writes


def call(device, method, path, query=None, body=b""):
    request = Request(method, path, {"SN": SN, **(query or {})}, body)
    result = []
    device.handle(device.server.receive(request, device._clock.seconds()), "10.0.0.5").addBoth(result.append)
    assert result, "the device did not answer at once"
    return result[0]


def fetch_commands(device):
    status, body = call(device, "GET", "/iclock/getrequest", {"INFO": "Ver 6.60,0,0,0,10.0.0.5,10"})
    assert status == 200
    return parse_commands(body)


def list_users(device, *lines):
    """Answer the device's pending DATA QUERY commands with ``lines``."""
    commands = [c for c in fetch_commands(device) if c.text.startswith("DATA QUERY")]
    assert len(commands) == 2
    if lines:
        assert call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, ("\n".join(lines) + "\n").encode())[0] == 200
    body = "".join(f"ID={c.id}&Return=0&CMD=DATA\n" for c in commands)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")


def attlog(device, body, stamp):
    return call(device, "POST", "/iclock/cdata", {"table": "ATTLOG", "Stamp": str(stamp)}, body)


PUNCHES = b"7\t2024-03-05 08:59:12\t0\t1\t0\n8\t2024-03-05 09:00:40\t1\t2\t0\n"


def test_punches_are_stored_once_when_the_device_sends_them_again():
    device, clock, events, *_ = make()
    assert attlog(device, PUNCHES, 2) == (200, b"OK: 2")
    assert attlog(device, PUNCHES, 2) == (200, b"OK: 2")  # the answer was lost: a resend
    assert [(e.user_id, e.code, e.timestamp_ms) for e in events.stored] == [
        ("7", EventCode.VERIFY_SUCCESS, 1709629152000), ("8", EventCode.VERIFY_SUCCESS, 1709629240000)]


def test_after_a_start_punches_the_log_holds_are_not_stored_again():
    device, clock, events, *_ = make(stored={("7", 1709629152000, 2)})  # finger (verify 1) -> credential FINGER
    attlog(device, PUNCHES, 2)
    assert [e.user_id for e in events.stored] == ["8"]


def test_stamps_going_back_are_reported_and_checked_against_the_log():
    device, clock, events, holdings, presence, db, _ = make()
    attlog(device, PUNCHES, 40)
    assert ("save_attendance_mark", (TID, 40, None)) in db.writes
    db.stored = {("7", 1709629152000, 2)}
    attlog(device, PUNCHES + b"9\t2024-03-06 10:00:00\t0\t1\t0\n", 3)  # reset: its counter starts again
    assert [m["type"] for m in events.monitoring] == [LOG_RESTARTED]
    assert [e.user_id for e in events.stored] == ["7", "8", "9"]


def test_lines_that_do_not_parse_are_skipped_reported_and_the_rest_stored():
    device, clock, events, holdings, presence, db, skipped = make()
    assert attlog(device, b"7\tnot a time\t0\t1\n" + PUNCHES, 2) == (200, b"OK: 3")
    assert [e.user_id for e in events.stored] == ["7", "8"]
    assert events.monitoring[0]["type"] == LINES_SKIPPED and "line 1" in events.monitoring[0]["detail"]
    assert skipped.counts == {"ATTLOG": 1}


def test_a_keypad_enrolment_is_announced_and_its_pull_answered_from_the_upload():
    device, clock, events, holdings, *_ = make()
    list_users(device)
    upload = b"OPLOG 30\t0\t2024-03-05 09:01:00\t77\nUSER PIN=77\tName=Ana\tPri=0\tPasswd=\tCard=1234\tGrp=1\tTZ=0001\tVerify=0\n"
    assert call(device, "POST", "/iclock/cdata", {"table": "OPERLOG", "OpStamp": "5"}, upload) == (200, b"OK: 2")
    assert [(e.code, e.sub_code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, Origin.DEVICE, "77")]
    fetched = []
    device.fetch_users(["77", "78"]).addCallback(fetched.append)
    record = fetched[0].users[0]
    assert (record.user_id, record.name, record.cards) == ("77", "Ana", (Card(CardType.CSN, (1234).to_bytes(4, "big")),))
    assert fetched[0].missing == ["78"]
    assert fetch_commands(device) == []  # no second round trip
    assert "77" in holdings.seen


def test_a_push_becomes_commands_and_keeps_what_the_device_owns():
    device, clock, events, holdings, *_ = make()
    list_users(device, "USER PIN=77\tName=Ana\tPri=14\tPasswd=\tCard=\tGrp=3\tTZ=0001\tVerify=4")
    events.stored.clear()
    done = []
    record = UserRecordWire.build(UserRecord("77", name="Ana Lima"))
    device.put_users([record], keep_local_changes=False).addBoth(done.append)
    assert done == []  # waits for the device
    commands = fetch_commands(device)
    assert [c.text for c in commands] == ["DATA UPDATE USERINFO PIN=77\tName=Ana Lima\tPri=14\tPasswd=\tCard=\tGrp=3\tTZ=0001\tVerify=4"]
    call(device, "POST", "/iclock/devicecmd", {}, f"ID={commands[0].id}&Return=0&CMD=DATA\n".encode())
    assert done == [[UserResult("77", UserStatus.OK)]]
    assert [(e.code, e.sub_code) for e in events.stored] == [(EventCode.UPDATE_SUCCESS, Origin.SERVER)]
    # Reconciliation lists the device again: what it holds is what the server wrote, so it shows
    # the digest of the server's record (equal: nothing to repair), and it is no keypad change.
    page = []
    device.list_digests("", 100).addCallback(page.append)
    list_users(device, "USER PIN=77\tName=Ana Lima\tPri=14\tPasswd=\tCard=\tGrp=3\tTZ=0001\tVerify=4")
    assert page[0].digests == {"77": record_digest(record)}
    assert len(events.stored) == 1


def test_a_refused_command_is_an_invalid_user_and_a_stray_result_changes_nothing():
    device, clock, events, *_ = make()
    list_users(device)
    done = []
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False).addBoth(done.append)
    command = fetch_commands(device)[0]
    call(device, "POST", "/iclock/devicecmd", {}, f"ID={command.id}&Return=-1&CMD=DATA\nID={command.id}&Return=0&CMD=DATA\n".encode())
    assert done == [[UserResult("5", UserStatus.INVALID)]]


def test_a_command_never_answered_is_sent_again_then_the_push_fails():
    device, clock, events, *_ = make(command_s=60)
    list_users(device)
    done = []
    device.delete_users(["9"]).addBoth(done.append)
    assert done == [[UserResult("9", UserStatus.NOT_FOUND)]]  # not on the device: no command
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False).addBoth(done.append)
    first = fetch_commands(device)
    clock.advance(61)
    assert fetch_commands(device) == first  # late: sent again
    clock.advance(59)
    assert fetch_commands(device) == []
    clock.advance(1)
    fetch_commands(device)  # the next request finds it given up
    assert done[1].check(DeviceGone)


def test_a_silent_device_goes_offline_and_what_waited_on_it_fails():
    reasons = []
    device, clock, events, holdings, presence, *_ = make(offline_s=60, on_offline_reason=lambda tid, reason: reasons.append((tid, reason)))
    list_users(device)
    done = []
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False).addBoth(done.append)
    assert presence.online_now == [device]
    clock.advance(60)
    assert presence.online_now == [] and done[0].check(DeviceGone)
    assert reasons == [(TID, "silent for 60 s")]
    fetch_commands(device)  # it calls again: online again, and it lists its users again
    assert presence.online_now == [device]


def test_a_wiped_device_is_not_a_keypad_deletion():
    device, clock, events, holdings, *_ = make(offline_s=60)
    list_users(device, "USER PIN=1\tName=A", "USER PIN=2\tName=B", "OPLOG 9\t0\t2024-03-05 09:01:00\t2")
    assert [(e.code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, "1")]
    device.fetch_users(["1"])
    clock.advance(61)  # offline; it comes back wiped
    list_users(device)
    assert [(e.code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, "1")]  # no deletion announced
    assert holdings.seen == {}
    page = []
    device.list_digests("", 100).addCallback(page.append)
    list_users(device)  # reconciliation lists it afresh
    assert page[0].digests == {}  # reconciliation sees it missing, and puts it back


def test_a_keypad_deletion_is_announced():
    device, clock, events, *_ = make()
    list_users(device, "USER PIN=1\tName=A")
    device.fetch_users(["1"])
    call(device, "POST", "/iclock/cdata", {"table": "OPERLOG"}, b"OPLOG 9\t0\t2024-03-05 09:01:00\t1\n")
    assert [(e.code, e.sub_code, e.user_id) for e in events.stored][-1] == (EventCode.DELETE_SUCCESS, Origin.DEVICE, "1")


def test_uploads_wait_while_the_writer_is_behind():
    device, *_ = make()
    device.pause_events()
    assert attlog(device, PUNCHES, 2)[0] == 503
    device.resume_events()
    assert attlog(device, PUNCHES, 2)[0] == 200
