"""PushDevice (gateway/push/device.py), the sync core's view of a PUSH device, without sockets:
requests go in as the listener hands them over, time is a task.Clock, and the event log, the
holdings and the registry are small fakes that record what they were given."""

import threading

from twisted.internet import defer, task

from gateway.sync.connection import UserResult
from gateway.sync.monitor import LOG_RESTARTED, PUSH_REFUSED
from gateway.push.device import LINES_SKIPPED, USER_MISSING, DeviceGone, PushDevice
from gateway.push.queue import StoredCommand
from gateway.zk.holdings import Holdings
from gateway.zk.mapping import PinHashes
from protocol.events import EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import Card, CardType, UserRecord, UserRecordWire, hash_pin, record_digest
from protocol.zk.push.commands import parse_commands
from protocol.zk.push.server import PushServer, PushTiming, QueueFull, Request

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


class Commands:
    """The stored command queue (gateway/push/queue.py CommandStore) as a dict that outlives a PushDevice."""

    def __init__(self):
        self.rows = {}

    def load(self, terminal_id):
        return defer.succeed(list(self.rows.values()))

    def add(self, terminal_id, commands, queued_ms):
        self.rows.update((c.command_id, c) for c in commands)
        return defer.succeed(None)

    def remove(self, terminal_id, command_ids):
        for command_id in command_ids:
            del self.rows[command_id]
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


def make(seen=None, stored=(), command_s=60.0, offline_s=600.0, on_offline_reason=lambda terminal_id, reason: None, commands=None,
         max_commands=4096, first_id=1, push_version="auto", in_thread=defer.maybeDeferred):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    events, store, presence, skipped = Events(), Store(seen, stored), Presence(), Counter()
    timing = PushTiming(command_s=command_s, command_attempts=2, max_commands=max_commands)
    device = PushDevice(TID, PushServer(SN, timing, first_id=first_id), clock=clock, store=store,
                        commands=commands if commands is not None else Commands(), events=events, presence=presence,
                        offline_s=offline_s, metrics=skipped, refusals=skipped.labels("refused"), on_offline_reason=on_offline_reason,
                        dialect=push_version, in_thread=in_thread)
    return device, clock, events, store, presence, store, skipped  # the store twice: its holdings, its writes


def call(device, method, path, query=None, body=b""):
    request = Request(method, path, {"SN": SN, **(query or {})}, body)
    result = []
    device.handle(request, "10.0.0.5").addBoth(result.append)
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



def test_a_resend_overlapping_the_stored_upload_stores_each_line_once_and_ids_run_on():
    device, clock, events, *_ = make()
    assert attlog(device, PUNCHES, 2) == (200, b"OK: 2")
    later = b"9\t2024-03-05 09:01:00\t0\t2\t0\n"
    # the answer was lost and a punch came meanwhile: the device sends from its old stamp, one line twice
    assert attlog(device, PUNCHES + later + later, 3) == (200, b"OK: 4")
    assert [(e.event_id, e.user_id) for e in events.stored] == [(1, "7"), (2, "8"), (3, "9")]


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


def test_passwords_are_hashed_off_the_reactor_thread_for_a_pull_and_for_a_write_that_compares_them(monkeypatch):
    """PBKDF2 is about 2 ms: a PUSH device uploading its people must not stall every other terminal."""
    reactor_thread, on_reactor, threaded = threading.current_thread(), [], []
    monkeypatch.setattr("gateway.push.device.pin_hash", PinHashes())  # what an earlier test hashed is not known here
    monkeypatch.setattr("gateway.zk.mapping.hash_pin",
                        lambda user_id, pin: (on_reactor.append(pin) if threading.current_thread() is reactor_thread else None)
                        or hash_pin(user_id, pin))

    def in_thread(work, *args):  # another thread, waited for: what a pool does, without a reactor
        threaded.append(work.__name__)
        result = []
        worker = threading.Thread(target=lambda: result.append(work(*args)))
        worker.start()
        worker.join()
        return defer.succeed(result[0])

    device, *_ = make(in_thread=in_thread)
    list_users(device, "USER PIN=77\tName=Ana\tPri=0\tPasswd=2580\tCard=\tGrp=1\tTZ=0001\tVerify=0")
    fetched = fired(device.fetch_users(["77"]))
    assert fetched.users[0].pin_hash == hash_pin("77", "2580")
    record = UserRecordWire.build(UserRecord("77", name="Ana Lima", pin_hash=hash_pin("77", "2580")))
    assert fired(device.put_users([record], keep_local_changes=False)) == [UserResult("77", UserStatus.OK)]
    assert "Passwd=2580" in fetch_commands(device)[0].text, "the PIN matched: the device keeps its password"
    assert threaded == ["hash_pins"] and on_reactor == [], "hashed once, in a thread; the write found it known"


def fired(d: defer.Deferred):
    done = []
    d.addBoth(done.append)
    assert done, "not fired"
    return done[0]


def answer(device, *commands, code=0):
    body = "".join(f"ID={c.id}&Return={code}&CMD=DATA\n" for c in commands)
    assert call(device, "POST", "/iclock/devicecmd", {}, body.encode()) == (200, b"OK")


def test_a_push_becomes_stored_commands_and_keeps_what_the_device_owns():
    commands = Commands()
    device, clock, events, holdings, *_ = make(commands=commands)
    list_users(device, "USER PIN=77\tName=Ana\tPri=14\tPasswd=\tCard=\tGrp=3\tTZ=0001\tVerify=4")
    events.stored.clear()
    done = []
    record = UserRecordWire.build(UserRecord("77", name="Ana Lima"))
    device.put_users([record], keep_local_changes=False).addBoth(done.append)
    assert done == [[UserResult("77", UserStatus.OK)]]  # stored: the pusher may send its next batch
    sent = fetch_commands(device)
    assert [c.text for c in sent] == ["DATA UPDATE USERINFO PIN=77\tName=Ana Lima\tPri=14\tPasswd=\tCard=\tGrp=3\tTZ=0001\tVerify=4"]
    assert list(commands.rows) == [sent[0].id]
    assert events.stored == []  # not applied until the device says so
    answer(device, sent[0])
    assert commands.rows == {}
    assert [(e.code, e.sub_code) for e in events.stored] == [(EventCode.UPDATE_SUCCESS, Origin.SERVER)]
    # Reconciliation lists the device again: what it holds is what the server wrote, so it shows
    # the digest of the server's record (equal: nothing to repair), and it is no keypad change.
    page = []
    device.list_digests("", 100).addCallback(page.append)
    list_users(device, "USER PIN=77\tName=Ana Lima\tPri=14\tPasswd=\tCard=\tGrp=3\tTZ=0001\tVerify=4")
    assert page[0].digests == {"77": record_digest(record)}
    assert len(events.stored) == 1


def test_a_second_push_while_the_first_waits_builds_on_it_and_both_go_in_one_fetch():
    device, clock, events, *_ = make()
    list_users(device)
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False)
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo Li"))], keep_local_changes=False)
    device.delete_users(["5"])  # on the device once the two are applied: a deletion, not NOT_FOUND
    sent = fetch_commands(device)
    assert [c.text.split("\t")[0:2] for c in sent] == [["DATA UPDATE USERINFO PIN=5", "Name=Bo"],
                                                       ["DATA UPDATE USERINFO PIN=5", "Name=Bo Li"]] + [["DATA DELETE USERINFO PIN=5"]]
    answer(device, *sent)
    assert [(e.code, e.sub_code) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, Origin.SERVER),
                                                             (EventCode.UPDATE_SUCCESS, Origin.SERVER),
                                                             (EventCode.DELETE_SUCCESS, Origin.SERVER)]


def test_a_refused_command_is_a_monitoring_event_and_a_stray_result_changes_nothing():
    commands = Commands()
    device, clock, events, *_, skipped = make(commands=commands)
    list_users(device)
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False)
    command = fetch_commands(device)[0]
    call(device, "POST", "/iclock/devicecmd", {}, f"ID={command.id}&Return=-1&CMD=DATA\nID={command.id}&Return=0&CMD=DATA\n".encode())
    assert [(row["type"], row["user_id"]) for row in events.monitoring] == [(PUSH_REFUSED, "5")]
    assert "Return=-1" in events.monitoring[0]["detail"]
    assert events.stored == [] and commands.rows == {}
    assert skipped.counts == {"refused": 1}


def test_a_command_never_answered_is_sent_again_then_given_up_visibly():
    commands = Commands()
    device, clock, events, *_ = make(command_s=60, commands=commands)
    list_users(device)
    done = []
    device.delete_users(["9"]).addBoth(done.append)
    assert done == [[UserResult("9", UserStatus.NOT_FOUND)]]  # not on the device: no command
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False)
    first = fetch_commands(device)
    clock.advance(61)
    assert fetch_commands(device) == first  # late: sent again
    clock.advance(59)
    assert fetch_commands(device) == []
    clock.advance(1)
    fetch_commands(device)  # the next request finds it given up
    assert [(row["type"], row["user_id"]) for row in events.monitoring] == [(PUSH_REFUSED, "5")]
    assert "given up" in events.monitoring[0]["detail"] and commands.rows == {}


def test_a_full_queue_refuses_the_push_before_storing_it():
    commands = Commands()
    device, *_ = make(commands=commands, max_commands=7)  # room kept for a listing (LISTING_COMMANDS: five DATA QUERY), then two
    list_users(device)
    done = []
    for user_id in "567":
        device.put_users([UserRecordWire.build(UserRecord(user_id, name="Bo"))], keep_local_changes=False).addBoth(done.append)
    assert done[:2] == [[UserResult("5", UserStatus.OK)], [UserResult("6", UserStatus.OK)]]
    assert done[2].check(QueueFull)  # the pusher keeps its cursor and tries again at its next round
    assert [c.user_id for c in commands.rows.values()] == ["5", "6"]


def test_commands_stored_before_a_restart_are_sent_again_and_settle():
    commands = Commands()
    device, clock, events, *_ = make(commands=commands)
    list_users(device)
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False)
    before = fetch_commands(device)
    # The gateway stops before the device answered; a new one starts with other command ids.
    device, clock, events, holdings, *_ = make(commands=commands, first_id=9_000)
    sent = fetch_commands(device)
    assert [c.id for c in sent[:1]] == [before[0].id] and [c.text for c in sent[:1]] == [before[0].text]
    assert [c.text.startswith("DATA QUERY") for c in sent[1:]] == [True, True]  # listed after them
    answer(device, sent[0])
    assert commands.rows == {}
    assert [(e.code, e.sub_code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, Origin.SERVER, "5")]
    assert "5" in holdings.seen


def test_a_silent_device_goes_offline_and_what_it_owes_waits_for_its_return():
    reasons = []
    commands = Commands()
    device, clock, events, holdings, presence, *_ = make(offline_s=60, commands=commands,
                                                         on_offline_reason=lambda tid, reason: reasons.append((tid, reason)))
    list_users(device)
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False)
    assert presence.online_now == [device]
    clock.advance(60)
    assert presence.online_now == [] and reasons == [(TID, "silent for 60 s")]
    done = []
    device.put_users([UserRecordWire.build(UserRecord("6", name="Cy"))], keep_local_changes=False).addBoth(done.append)
    assert done[0].check(DeviceGone)
    sent = fetch_commands(device)  # it calls again: online again, what it owes first, then it lists its users again
    assert presence.online_now == [device]
    assert [c.text.split("\t")[0] for c in sent] == ["DATA UPDATE USERINFO PIN=5", "DATA QUERY USERINFO", "DATA QUERY FINGERTMP"]


def test_a_wiped_device_is_not_a_keypad_deletion():
    device, clock, events, holdings, *_ = make(offline_s=60)
    list_users(device, "USER PIN=1\tName=A", "USER PIN=2\tName=B", "OPLOG 9\t0\t2024-03-05 09:01:00\t2")
    assert [(e.code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, "1")]
    device.fetch_users(["1"])
    clock.advance(61)  # offline; it comes back wiped
    list_users(device)
    assert [(e.code, e.user_id) for e in events.stored] == [(EventCode.ENROLL_SUCCESS, "1")]  # no deletion announced
    assert holdings.seen == {}
    assert [(m["type"], m["user_id"]) for m in events.monitoring] == [(USER_MISSING, "1")], "each person put back is told"
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


TEMPLATE = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=="  # 64 bytes


def test_a_refusal_in_a_group_still_waiting_is_not_lost_when_the_device_goes_offline():
    commands = Commands()
    device, clock, events, holdings, *_ = make(offline_s=60, commands=commands)
    list_users(device, "USER PIN=5\tName=Old\tPri=0\tPasswd=\tCard=\tGrp=1", f"FP PIN=5\tFID=0\tSize=64\tValid=1\tTMP={TEMPLATE}")
    seen = dict(holdings.seen)
    events.stored.clear()
    device.put_users([UserRecordWire.build(UserRecord("5", name="New"))], keep_local_changes=False)
    user_line, finger_deletion = fetch_commands(device)  # one put: the USER line, and its finger removed
    answer(device, user_line, code=-1)  # refused; the rest of the put still waits
    clock.advance(60)  # silent: offline before the rest is answered
    resent = fetch_commands(device)  # back: the whole put again, refusal included
    assert [c.id for c in resent[:2]] == [user_line.id, finger_deletion.id]
    answer(device, user_line, code=-1)  # refused again, visibly this time
    answer(device, finger_deletion)
    assert [(row["type"], row["user_id"]) for row in events.monitoring] == [(PUSH_REFUSED, "5")]
    assert events.stored == [] and holdings.seen == seen  # no success, and nothing recorded as held
    assert commands.rows == {}


def test_a_result_posted_first_to_a_restarted_gateway_settles_the_command_it_answers():
    commands = Commands()
    device, clock, events, *_ = make(commands=commands)
    list_users(device, "USER PIN=5\tName=Old\tPri=0\tPasswd=\tCard=\tGrp=1")
    device.put_users([UserRecordWire.build(UserRecord("5", name="New"))], keep_local_changes=False)
    sent = fetch_commands(device)
    # The gateway restarts; the device, having applied the command, posts its result before anything else.
    device, clock, events, *_ = make(commands=commands, first_id=9_000)
    answer(device, sent[0])
    assert commands.rows == {}
    assert [(e.code, e.sub_code, e.user_id) for e in events.stored] == [(EventCode.UPDATE_SUCCESS, Origin.SERVER, "5")]
    assert [c.text.split(" ")[1] for c in fetch_commands(device)] == ["QUERY", "QUERY"]  # the listing only: not sent again


def test_a_device_owing_a_full_queue_when_it_comes_online_still_lists_its_users():
    commands = Commands()  # owed from a run with a larger bound: the queue is full when it comes online
    commands.rows = {i: StoredCommand(i, f"DATA DELETE USERINFO PIN={i}", i, str(i), "delete") for i in range(900, 907)}
    device, clock, events, *_ = make(commands=commands, max_commands=7)
    sent = fetch_commands(device)
    assert [c.text.split(" ")[1] for c in sent] == ["DELETE"] * 7 + ["QUERY", "QUERY"]
    answer(device, *sent)
    done = []
    device.put_users([UserRecordWire.build(UserRecord("9", name="Z"))], keep_local_changes=False).addBoth(done.append)
    assert done == [[UserResult("9", UserStatus.OK)]]


def test_a_listing_given_up_is_asked_for_again_at_the_next_push():
    device, clock, events, *_ = make(command_s=60)
    for _ in range(2):  # sent twice, never answered
        assert [c.text.split(" ")[1] for c in fetch_commands(device)] == ["QUERY", "QUERY"]
        clock.advance(60)
    fetch_commands(device)  # the listing is given up
    done = []
    device.put_users([UserRecordWire.build(UserRecord("9", name="Z"))], keep_local_changes=False).addBoth(done.append)
    list_users(device)  # asked for again, and answered
    assert done == [[UserResult("9", UserStatus.OK)]]


def test_settled_commands_leave_the_stored_queue_only_once_what_settled_them_is_durable():
    commands = Commands()
    device, clock, events, *_ = make(commands=commands)
    list_users(device)
    device.put_users([UserRecordWire.build(UserRecord("5", name="Bo"))], keep_local_changes=False)
    device.put_users([UserRecordWire.build(UserRecord("6", name="Cy"))], keep_local_changes=False)
    applied, refused = fetch_commands(device)
    event_durable, refusal_durable = defer.Deferred(), defer.Deferred()
    events.submit = lambda terminal_id, batch, log_epoch=None: event_durable
    events.commit_with_events = lambda work, rows: refusal_durable
    answer(device, applied)
    answer(device, refused, code=-1)
    assert list(commands.rows) == [applied.id, refused.id]  # a crash now sends both again: no confirmation lost
    event_durable.callback(1)
    assert list(commands.rows) == [refused.id]
    refusal_durable.callback(None)
    assert commands.rows == {}
