"""The gateway's ZK driver without sockets or sleeps: a ZkConnection on a StringTransport, the
emulated device's session on the other end, a task.Clock for the polls and deadlines, and the
database on an in-memory SQLite engine, called synchronously."""

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, event as sqlalchemy_event, select
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway.metrics import Metrics
from gateway.sync.monitor import RECORD_REFUSED
from gateway.sync.pusher import delivery_rows
from gateway.store.database import DatabaseFailure
from gateway.store.schema import events, metadata, pending_pulls
from gateway.zk.clock import DeviceClock
from gateway.zk.connection import DeviceMemory, ZkConnection, ZkTiming
from gateway.zk.holdings import HoldingsWriter, load_holdings, save_attendance_mark
from gateway.zk.store import DatabaseStore
from gateway.zk.driver import DeviceLost, ZkLink
from gateway.zk.poller import PollPlan, PollTiming, attendance_identity, new_attendance
from gateway.zk.plan import WritePlan
from gateway.zk import mapping
from gateway.zk.mapping import DeviceProfile, PinHashes
from protocol.events import EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import Card, CardType, Fingerprint, UserRecord, UserRecordWire, hash_pin
from protocol.zk.bodies import Sizes
from protocol.zk.client import ZkClient
from protocol.zk.commands import Command, ReplyCode
from protocol.zk.decoder import PacketDecoder
from protocol.zk.packet import Packet, encode_tcp
from protocol.zk.records import AttendanceRecord, User, encode_attendance, encode_user
from simulator.zk.device import ZkDevice, populate
from simulator.zk.session import DeviceSession

TIMING = ZkTiming(request_s=5.0, poll=PollTiming(poll_s=2.0, cheap_users=100, users_s=30, templates_s=60, attendance_s=10))


class SyncDb:
    """The gateway's Database interface on an in-memory SQLite engine, answered at once."""

    def __init__(self):
        self.engine = create_engine("sqlite://")
        metadata.create_all(self.engine)

    def read(self, work, *args):
        with self.engine.begin() as conn:
            return defer.succeed(work(conn, *args))

    write = read


class Sink:
    def __init__(self):
        self.events = []

    def stored_through(self, terminal_id):
        return defer.succeed(max((e.event_id for e in self.events), default=0))

    def submit(self, terminal_id, events):
        self.events += events
        return defer.succeed(max(e.event_id for e in events))

    def of(self, code, origin=None):
        return [e.user_id for e in self.events if e.code == code and (origin is None or e.sub_code == origin)]


class Presence:
    def __init__(self):
        self.online_now = None

    def online(self, connection):
        self.online_now = connection
        return True

    def offline(self, connection):
        self.online_now = None


class Wire:
    """One ZkConnection and one emulated device, bytes moved by ``pump``."""

    def __init__(self, device: ZkDevice, db=None, sink=None, memory=None, timing=TIMING, device_clock=DeviceClock(), now_s: float = 0.0):
        self.device, self.clock = device, task.Clock()
        self.clock.advance(now_s)
        self.db, self.sink, self.presence = db or SyncDb(), sink or Sink(), Presence()
        self.broken: list[str] = []
        self.in_thread: list = []
        self.link = ZkLink(ZkClient(device.comm_key, timeout_s=timing.request_s), self.clock,
                           on_realtime=lambda e: self.connection.realtime_event(e), on_broken=self._broken)
        self.connection = ZkConnection(7, self.link, memory or DeviceMemory(), clock=self.clock, store=DatabaseStore(self.db), events=self.sink,
                                       presence=self.presence, timing=timing, device_clock=device_clock, in_thread=self._in_thread)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 4370))
        self.link.makeConnection(self.transport)
        self._out: list = []
        self.session = DeviceSession(device, 0x1234, self._out.append)
        self.decoder = PacketDecoder()

    def _in_thread(self, work, *args):
        """Work the driver sends off the reactor thread: recorded, and done at once on a thread
        of its own (so a test sees which thread did what)."""
        self.in_thread.append(work)
        with ThreadPoolExecutor(1) as pool:
            return defer.maybeDeferred(pool.submit(work, *args).result)

    def _broken(self, reason):
        self.broken.append(reason)
        self.connection.link_broken(reason)

    def pump(self) -> None:
        while True:
            sent = self.transport.value()
            self.transport.clear()
            for packet in self.decoder.feed(sent):
                self.session.receive(packet)
            answers, self._out[:] = b"".join(self._encode(p) for p in self._out), []
            if not sent and not answers:
                return
            if answers:
                self.link.dataReceived(answers)

    def _encode(self, packet) -> bytes:
        """As the emulator's TCP server sends a packet: ``faults.mangle`` may replace its bytes."""
        mangle = self.device.faults.mangle
        return (mangle(packet) if mangle is not None else None) or encode_tcp(packet)

    def start(self):
        self.connection.start()
        self.pump()
        assert self.presence.online_now is self.connection, self.broken
        return self

    def poll(self, seconds: float = TIMING.poll.poll_s):
        self.clock.advance(seconds)
        self.pump()

    def call(self, d):
        self.pump()
        results = []
        d.addBoth(results.append)
        assert results, "the operation did not end"
        return results[0]


def test_device_changes_become_device_events_and_a_push_never_comes_back_as_one():
    device = ZkDevice()
    populate(device, 2, fingers=1)
    wire = Wire(device).start()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2"], "a device never seen: everyone is news"
    fetched = wire.call(wire.connection.fetch_users(["1", "2", "9"]))
    assert [r.user_id for r in fetched.users] == ["1", "2"] and fetched.missing == ["9"]
    assert fetched.users[0].fingerprints[0].format == "zk10"

    device.edit("1", name="Renamed")  # the counts do not move
    wire.poll()
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["1"]
    wire.poll()
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["1"], "announced once"

    record = UserRecord("3", name="Pushed Person")
    results = wire.call(wire.connection.put_users([UserRecordWire.build(record)], keep_local_changes=True))
    assert [(r.user_id, r.status) for r in results] == [("3", UserStatus.OK)]
    assert device.user("3").name == "Pushed Person" and device.user("3").uid == 2 + 1 + 2  # above the highest in use, two left for the keypad
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.SERVER) == ["3"]
    wire.poll()
    wire.poll()
    assert "3" not in wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) + wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE)

    device.delete("2")
    wire.poll()
    assert wire.sink.of(EventCode.DELETE_SUCCESS, Origin.DEVICE) == ["2"]
    assert wire.broken == []


def test_a_keypad_change_not_fetched_yet_is_not_overwritten():
    device = ZkDevice()
    populate(device, 1)
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["1"]))
    device.edit("1", name="Changed At The Door")  # no poll ran since: the write pass must see it
    server_copy = UserRecord("1", name="Server Name")
    results = wire.call(wire.connection.put_users([UserRecordWire.build(server_copy)], keep_local_changes=True))
    assert [r.status for r in results] == [UserStatus.LOCAL_CHANGE_PENDING]
    assert device.user("1").name == "Changed At The Door"
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["1"]
    results = wire.call(wire.connection.put_users([UserRecordWire.build(server_copy)], keep_local_changes=False))
    assert [r.status for r in results] == [UserStatus.OK] and device.user("1").name == "Server Name"


def test_writes_are_bulk_uploads_inside_disable_and_enable():
    device = ZkDevice()
    wire = Wire(device).start()
    device.recorded = []
    records = [UserRecordWire.build(UserRecord(str(n), name=f"P{n}")) for n in range(1, 151)]
    wire.call(wire.connection.put_users(records, keep_local_changes=True))
    commands = [p.command for p in device.recorded]
    assert commands[0] == Command.DISABLEDEVICE and commands[-1] == Command.ENABLEDEVICE
    assert commands.count(Command.SAVE_USERTEMPS) == 3, "150 users in uploads of 64"
    assert commands.count(Command.REFRESHDATA) >= 1 and len(device.users) == 150
    device.recorded = []
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("151", name="One More"))], keep_local_changes=True))
    buffers = [p for p in device.recorded if p.command == Command.PREPARE_BUFFER]
    assert buffers == [], "only new people, the counts unmoved since the last pass: no table read; after, the counts show the writes landed"
    assert [p.command for p in device.recorded].count(Command.REFRESHDATA) == 1, "the upload's own, no second one"
    wire.poll()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) + wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == []


def test_a_write_pass_answers_the_pusher_before_it_releases_the_keypad():
    device = ZkDevice()
    wire = Wire(device).start()
    device.recorded = []
    sent_when_answered = []
    d = wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False)
    d.addCallback(lambda _: sent_when_answered.extend(commands(device)))
    wire.call(d)
    assert Command.SAVE_USERTEMPS in sent_when_answered and Command.ENABLEDEVICE not in sent_when_answered
    assert commands(device)[-1] == Command.ENABLEDEVICE and len(device.users) == 1, "the keypad released after"


def test_a_real_time_event_polls_at_once():
    device = ZkDevice(enrol_events=True)
    wire = Wire(device).start()
    device.enroll("77", "Walk In")
    wire.pump()
    wire.clock.advance(0)
    wire.pump()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["77"], "seen before the poll interval passed"


def test_a_silent_device_loses_its_link_at_the_deadline():
    wire = Wire(ZkDevice())
    wire.connection.start()  # nothing pumped: the device never answers
    wire.clock.advance(TIMING.request_s)
    assert wire.broken == ["the device did not answer CONNECT within 5 s"]
    assert wire.transport.disconnecting


def test_what_the_server_has_seen_survives_a_restart():
    device = ZkDevice()
    populate(device, 3)
    db, sink = SyncDb(), Sink()
    first = Wire(device, db, sink).start()
    first.call(first.connection.fetch_users(["1", "2", "3"]))
    device.edit("2", card=42)
    again = Wire(device, db, sink).start()  # a new process: memory from the database
    assert sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2", "3"]
    assert sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["2"]
    assert [e.event_id for e in sink.events] == list(range(1, len(sink.events) + 1)), "event ids go on from the stored ones"
    assert again.broken == []


def test_attendance_becomes_events_stored_once():
    device = ZkDevice()
    populate(device, 2)
    at = datetime(2024, 3, 1, 8, 30, 15)
    device.punch("1", at=at, verify_type=2)
    db, sink = SyncDb(), Sink()
    wire = Wire(device, db, sink).start()
    assert sink.of(EventCode.VERIFY_SUCCESS) == ["1"]
    device.punch("2", at=at, verify_type=1, punch=1)
    wire.poll(TIMING.poll.attendance_s)
    wire.poll(TIMING.poll.attendance_s)
    punches = [e for e in sink.events if e.code == EventCode.VERIFY_SUCCESS]
    assert [(e.user_id, e.timestamp_ms) for e in punches] == [("1", int(at.timestamp() * 1000)), ("2", int(at.timestamp() * 1000))]
    Wire(device, db, sink).start()  # a restart reads the log again: nothing new
    assert len([e for e in sink.events if e.code == EventCode.VERIFY_SUCCESS]) == 2


def test_new_attendance_by_the_records_own_identity():
    a, b, c = (AttendanceRecord(n, str(n), datetime(2024, 1, 1, 8, n)) for n in (1, 2, 3))
    assert new_attendance([a, b, c], 2, attendance_identity(b)) == [c]
    assert new_attendance([a, b], 2, attendance_identity(b)) == []
    assert new_attendance([b, c], 3, attendance_identity(b)) == [c], "older records cleared: found by identity"
    assert new_attendance([c], 2, attendance_identity(b)) == [c], "the log cleared: all new"
    assert new_attendance([a], 0, None) == [a]


def test_the_poll_plan_reads_big_user_tables_on_the_slow_schedule():
    timing = PollTiming(poll_s=2, cheap_users=100, users_s=30, templates_s=60, attendance_s=10)
    plan = PollPlan(timing, sizes=Sizes(users=500, fingers=500, records=10), users_at=0, templates_at=0, attendance_at=0, attendance_count=10)
    same = Sizes(users=500, fingers=500, records=10)
    assert not plan.users_due(same, 2) and plan.users_due(same, 30)
    assert plan.users_due(Sizes(users=501, fingers=500), 2), "a count moved"
    assert PollPlan(timing, sizes=Sizes(users=50), users_at=0).users_due(Sizes(users=50), 2), "a small table every poll"
    assert not PollPlan(timing, sizes=Sizes(users=50), users_at=1).users_due(Sizes(users=50), 2), "not when read less than a poll ago"
    assert not plan.templates_due(same, 2, False) and plan.templates_due(same, 2, True) and plan.templates_due(same, 60, False)
    assert not plan.attendance_due(same, 20) and not plan.attendance_due(Sizes(records=11), 5) and plan.attendance_due(Sizes(records=11), 10)


def once_at(device: ZkDevice, command: int, keypad_action) -> None:
    """``keypad_action`` at the device the first time a client sends ``command``, before it is answered."""
    def listener(packet):
        if packet.command == command and listener in device.request_listeners:
            device.request_listeners.remove(listener)
            keypad_action()

    device.request_listeners.append(listener)


def once_after(device: ZkDevice, command: int, keypad_action) -> None:
    """``keypad_action`` at the device when a client sends the next request after the first ``command``."""
    def next_request(packet):
        device.request_listeners.remove(next_request)
        keypad_action()

    once_at(device, command, lambda: device.request_listeners.append(next_request))


def test_a_keypad_change_after_the_upload_is_the_devices_not_the_gateways():
    device = ZkDevice()
    device.faults.keypad_never_held = True  # DISABLEDEVICE answered, the keypad not locked
    populate(device, 1)
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["1"]))
    once_at(device, Command.REFRESHDATA, lambda: device.edit("3", name="Typed At The Door"))
    results = wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("3", name="Pushed Person"))], keep_local_changes=True))
    assert [r.status for r in results] == [UserStatus.OK] and device.user("3").name == "Typed At The Door"
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.SERVER) == ["3"]
    wire.poll()  # the counts did not show it: the next read of the table does
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["3"], "the keypad's edit, reported"
    assert wire.call(wire.connection.fetch_users(["3"])).users[0].name == "Typed At The Door"

    once_at(device, Command.REFRESHDATA, lambda: device.add_template("1", 9, b"f" * 500))  # a finger, the user table alike
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("4", name="Another"))], keep_local_changes=True))
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["3", "1"], "the counts showed it: read back, reported"
    assert [f.index for f in wire.call(wire.connection.fetch_users(["1"])).users[0].fingerprints] == sorted(
        fid for (uid, fid) in device.templates if uid == device.user("1").uid)
    assert wire.broken == []


def test_an_enrolment_between_the_count_and_the_table_of_a_write_pass_is_read_again_not_a_dropped_link():
    device = ZkDevice()
    device.faults.keypad_never_held = True
    populate(device, 2)
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["1", "2"]))
    device.enroll("early", "Early")  # the counts moved: the pass reads the users
    device.recorded = []

    def enrol_after_the_lock():
        once_at(device, Command.PREPARE_BUFFER, lambda: device.enroll("walk-in", "Walk In"))  # after the count

    once_at(device, Command.DISABLEDEVICE, enrol_after_the_lock)
    results = wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=True))
    assert [r.status for r in results] == [UserStatus.OK] and device.user("5").name == "Pushed"
    assert [p.command for p in device.recorded].count(Command.GET_FREE_SIZES) >= 2, "the counts read again"
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2", "early", "walk-in"]
    assert device.user("walk-in").uid != device.user("5").uid
    assert wire.broken == []


def test_each_link_derives_what_to_announce_from_the_database_not_from_the_last_link():
    device = ZkDevice()
    populate(device, 2)
    db, sink, memory = SyncDb(), Sink(), DeviceMemory()
    first = Wire(device, db, sink, memory).start()
    assert sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2"]
    # The link drops before either is pulled. Only user 2's pull is owed in the database (user 1's
    # event never committed, or its pull settled): user 1 is announced again, user 2 is not.
    first.link.connectionLost()
    db.write(lambda conn: conn.execute(pending_pulls.insert(), [dict(terminal_id=7, user_id="2", since_ms=0)]))
    again = Wire(device, db, sink, memory).start()
    assert sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2", "1"]
    device.edit("2", name="Edited Later")
    again.poll()
    assert sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2", "1", "2"], "a change after the owed one is news"
    assert [e.event_id for e in sink.events] == list(range(1, len(sink.events) + 1))


class LoggedSink(Sink):
    """Events committed to the database's event log, as the gateway's writer commits them."""

    def __init__(self, db: SyncDb):
        super().__init__()
        self.db = db

    def submit(self, terminal_id, batch):
        rows = [dict(terminal_id=terminal_id, terminal_event_id=e.event_id, log_epoch=0, type="event", code=e.code, sub_code=e.sub_code,
                     user_id=e.user_id or None, occurred_ms=e.timestamp_ms, recorded_ms=0) for e in batch]
        self.db.write(lambda conn: conn.execute(events.insert(), rows))
        return super().submit(terminal_id, batch)


class CrashBeforeTheMark(SyncDb):
    """The process dies between committing the punches and storing the attendance mark."""

    def write(self, work, *args):
        if work is save_attendance_mark:
            return defer.Deferred()  # never stored
        return super().write(work, *args)


def test_a_crash_between_the_punches_and_their_mark_stores_no_punch_twice():
    device = ZkDevice()
    populate(device, 2)
    at = datetime(2024, 3, 1, 8, 30, 15)
    device.punch("1", at=at)
    device.punch("2", at=at)
    db = CrashBeforeTheMark()
    sink = LoggedSink(db)
    Wire(device, db, sink).start()
    device.punch("1", at=datetime(2024, 3, 1, 17, 0, 0))  # after the restart: new
    db.write = SyncDb.write.__get__(db)  # the restarted process stores its marks
    Wire(device, db, sink).start()
    assert [(e.user_id, e.timestamp_ms) for e in sink.events if e.code == EventCode.VERIFY_SUCCESS] == [
        ("1", int(at.timestamp() * 1000)), ("2", int(at.timestamp() * 1000)), ("1", int(datetime(2024, 3, 1, 17).timestamp() * 1000))]


class HeldDb(SyncDb):
    """Commits only when the test says: what a busy database writer looks like."""

    def __init__(self):
        super().__init__()
        self.held: list[tuple[defer.Deferred, object, tuple]] = []

    def write(self, work, *args):
        d = defer.Deferred()
        self.held.append((d, work, args))
        return d

    def commit_next(self):
        d, work, args = self.held.pop(0)
        SyncDb.read(self, work, *args).chainDeferred(d)


def test_the_digests_of_every_device_go_in_group_commits_and_a_load_sees_every_save_before_it():
    db = HeldDb()
    writer = HoldingsWriter(db)
    writer.save(1, {"a": b"1" * 8})  # the first commit begins at once
    writer.save(2, {"b": b"2" * 8})
    writer.save(1, {"a": None, "c": b"3" * 8})
    loaded = []
    writer.load(1).addCallback(loaded.append)
    assert len(db.held) == 1
    db.commit_next()
    assert len(db.held) == 1, "the three waiting went into one transaction"
    db.commit_next()
    assert db.held == [] and loaded[0].seen == {"c": b"3" * 8}
    with db.engine.begin() as conn:
        assert load_holdings(conn, 2).seen == {"b": b"2" * 8}


def test_a_group_commit_stores_the_digests_of_every_device_in_one_statement():
    db = HeldDb()
    writer = HoldingsWriter(db)
    writer.save(9, {"z": b"9" * 8})  # committing: the next three wait for it, and go together
    for terminal_id in (1, 2, 3):
        writer.save(terminal_id, {"a": bytes([terminal_id]) * 8, "b": None})
    db.commit_next()
    inserts = []
    sqlalchemy_event.listen(db.engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: inserts.append(sql) if sql.startswith("INSERT") else None)
    db.commit_next()
    assert len(inserts) == 1, "three devices' digests, one INSERT (one each cost 130 us of the database thread)"
    with db.engine.begin() as conn:
        assert [load_holdings(conn, t).seen for t in (1, 2, 3, 9)] == [{"a": b"\1" * 8}, {"a": b"\2" * 8}, {"a": b"\3" * 8}, {"z": b"9" * 8}]


# Bytes 39-47 of a 72-byte user record as an access-control firmware holds them (the F19 capture
# in adrobinoga/zk-protocol): group 2, the person's own time zones, time zones 1-3.
F19_ACCESS_BYTES = bytes.fromhex("020100010002000000")


def site_software_writes(device: ZkDevice, record: bytes) -> None:
    """USER_WRQ from another client (the site's own ZK software), as the device receives it."""
    answers = []
    session = DeviceSession(device, 0x4321, answers.append)
    session.receive(Packet(Command.CONNECT))
    session.receive(Packet(Command.USER_WRQ, 0x4321, 1, record))
    assert answers[-1].command == ReplyCode.ACK_OK, answers


def test_a_server_edit_keeps_the_group_and_time_zone_bytes_the_device_holds():
    device = ZkDevice()
    raw = bytearray(encode_user(User(5, "ana", "Ana", privilege=3, card=77), 72))
    raw[39:48] = F19_ACCESS_BYTES
    raw[64:72] = b"\x00\x00\x00\x00\x00\x00\xfe\x01"  # past the user id's NUL: bytes no client names
    site_software_writes(device, bytes(raw))
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["ana"]))
    edited = UserRecord("ana", name="Ana Lima", cards=(Card(CardType.CSN, (4242).to_bytes(4, "big")),))
    results = wire.call(wire.connection.put_users([UserRecordWire.build(edited)], keep_local_changes=True))
    assert [r.status for r in results] == [UserStatus.OK]
    held = encode_user(device.user("ana"), 72)
    assert (device.user("ana").name, device.user("ana").card) == ("Ana Lima", 4242), "the edit was written"
    assert held[39:48] == F19_ACCESS_BYTES, "group, own-time-zones flag and time zones as the device held them"
    assert held[2] == 3 and held[64:72] == bytes(raw[64:72]), "privilege (and its disabled bit) and unnamed bytes kept"


def test_a_person_new_to_the_device_gets_the_sdks_defaults():
    device = ZkDevice()
    wire = Wire(device).start()
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("new", name="New Person"))], keep_local_changes=True))
    held = encode_user(device.user("new"), 72)
    assert held[39:48] == bytes.fromhex("010000000000000000"), "group 1, the group's time zones (as the SDK writes)"


def refused_events(db: SyncDb) -> list[tuple]:
    with db.engine.begin() as conn:
        return [tuple(r) for r in conn.execute(select(events.c.user_id, events.c.detail).where(events.c.type == RECORD_REFUSED))]


def test_a_link_moves_its_deadline_at_each_request_rather_than_making_a_timer_each():
    device = ZkDevice()
    populate(device, 3)
    wire = Wire(device).start()
    made, call_later, received = [], wire.clock.callLater, wire.link.dataReceived
    wire.clock.callLater = lambda delay, f, *args: (made.append(f) if f == wire.link._deadline else None) or call_later(delay, f, *args)
    wire.link.dataReceived = lambda data: wire.clock.advance(0.01) or received(data)  # each answer 10 ms later: each deadline another
    requests = sum(device.requests.values())
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("new", name="New"))], keep_local_changes=True))
    assert sum(device.requests.values()) - requests >= 8 and len(made) <= 1, "one timer for the pass, moved at each request"


@pytest.fixture
def pin_hashes(monkeypatch):
    """A fresh PIN hash cache at every place that imports it (a gateway just restarted: a hash an
    earlier test made must not spare this one's thread), ``sized(n)`` for a smaller one, and the
    passwords hashed on this thread, the reactor's, in ``on_reactor``."""
    reactor_thread, hash_pin_of = threading.current_thread(), mapping.hash_pin
    on_reactor: list[str] = []

    def recorded(user_id, pin):
        if threading.current_thread() is reactor_thread:
            on_reactor.append(pin)
        return hash_pin_of(user_id, pin)

    def sized(size=4096):
        cache = PinHashes(size)
        for site in ("gateway.zk.mapping", "gateway.zk.connection"):
            monkeypatch.setattr(f"{site}.pin_hash", cache)
        return cache

    monkeypatch.setattr("gateway.zk.mapping.hash_pin", recorded)
    sized()
    return SimpleNamespace(sized=sized, on_reactor=on_reactor)


def test_a_pulled_password_is_hashed_off_the_reactor_thread_once(pin_hashes):
    device = ZkDevice()
    device.enroll("1", "Has A Pin", password="4821")
    device.enroll("2", "No Pin")
    wire = Wire(device).start()
    pending = wire.connection.fetch_users(["1", "2"])
    assert [work.__name__ for work in wire.in_thread] == ["hash_pins"], "PBKDF2 (about 2 ms) runs in a thread, not on the reactor"
    fetched = wire.call(pending)
    assert [r.pin_hash for r in fetched.users] == [hash_pin("1", "4821"), None]
    wire.call(wire.connection.fetch_users(["1"]))
    assert len(wire.in_thread) == 1, "a password hashed before is not hashed again"
    assert pin_hashes.on_reactor == []


def test_a_write_hashes_the_held_password_it_compares_off_the_reactor_thread(pin_hashes):
    device = ZkDevice()
    device.enroll("1", "Set At The Door", password="5190")
    wire = Wire(device).start()
    record = UserRecord("1", name="Renamed On The Server", pin_hash=hash_pin("1", "5190"))
    wire.call(wire.connection.put_users([UserRecordWire.build(record)], keep_local_changes=False))
    assert [work.__name__ for work in wire.in_thread] == ["hash_pins"] and pin_hashes.on_reactor == [], "PBKDF2 in a thread, not on the reactor"
    assert (device.user("1").name, device.user("1").password) == ("Renamed On The Server", "5190"), "the PIN matched: kept"


def pin_holders(count: int) -> ZkDevice:
    device = ZkDevice()
    for n in range(1, count + 1):
        device.enroll(str(n), f"Person {n}", password=f"{n}{n}{n}{n}")
    return device


def test_a_pull_of_more_passwords_than_the_cache_holds_hashes_none_on_the_reactor_thread(pin_hashes):
    pin_hashes.sized(2)
    wire = Wire(pin_holders(4)).start()
    fetched = wire.call(wire.connection.fetch_users(["1", "2", "3", "4"]))
    assert [r.pin_hash for r in fetched.users] == [hash_pin(str(n), f"{n}{n}{n}{n}") for n in range(1, 5)]
    assert pin_hashes.on_reactor == [], "the pull's own hashes, not the cache's"


def test_a_write_pass_of_more_passwords_than_the_cache_holds_hashes_none_on_the_reactor_thread(pin_hashes):
    wire = Wire(pin_holders(4)).start()
    pin_hashes.sized(2)  # a storm's other devices fill the cache while this pass waits on its device
    records = [UserRecordWire.build(UserRecord(str(n), name=f"Renamed {n}", pin_hash=hash_pin(str(n), f"{n}{n}{n}{n}"))) for n in range(1, 5)]
    wire.call(wire.connection.put_users(records, keep_local_changes=False))
    assert pin_hashes.on_reactor == [], "the pass's own hashes, not the cache's"
    device = wire.device
    assert [(device.user(str(n)).name, device.user(str(n)).password) for n in range(1, 5)] == [(f"Renamed {n}", f"{n}{n}{n}{n}") for n in range(1, 5)]


def test_a_device_record_that_breaks_the_apis_rules_is_refused_reported_once_and_stops_no_other():
    device = ZkDevice()
    device.enroll("1", "Good Person", password="1234")
    device.enroll("2", "Bad Pin", password="\udcff12")  # bytes ff 31 32: hash_pin raised UnicodeEncodeError on it
    device.enroll("\u202eevil", "Bidi Id")
    device.enroll("3", "Eve\nroot")
    device.enroll("4", "\x1b[31mRed\x1b[0m")
    device.enroll("5", "Letters Pin", password="12ab")
    db = SyncDb()
    wire = Wire(device, db).start()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1"], "only the record that passes is news"
    fetched = wire.call(wire.connection.fetch_users(["1", "2", "3", "4", "5"]))
    assert [r.user_id for r in fetched.users] == ["1"] and fetched.missing == ["2", "3", "4", "5"], "no exception, no stuck pull"
    refused = refused_events(db)
    assert [user_id for user_id, _ in refused] == ["2", None, "3", "4", "5"]
    details = [detail for _, detail in refused]
    assert "password of user '2' is not a PIN" in details[0] and "\\udcff" not in details[0], "the password is never shown"
    assert "user id '\\u202eevil'" in details[1] and "bidirectional" in details[1], "the id escaped in the detail"
    assert "control characters" in details[2] and "control characters" in details[3]
    wire.poll()
    wire.poll(TIMING.poll.users_s)
    assert len(refused_events(db)) == 5, "each refusal reported once"
    device.edit("3", name="Eve Root")  # mended at the device: taken like any edit
    wire.poll()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "3"]


def test_a_user_id_held_by_two_uids_is_reported_and_read_at_its_lowest_uid():
    device = ZkDevice()
    populate(device, 2)
    device.users[9] = replace(device.user("1"), uid=9, name="Second Copy")  # a firmware that does not keep user ids unique
    db = SyncDb()
    wire = Wire(device, db).start()
    fetched = wire.call(wire.connection.fetch_users(["1"]))
    assert fetched.users[0].name == device.users[1].name != "Second Copy"
    assert refused_events(db) == [("1", "user id '1' is held by uids 1, 9: the gateway reads and writes uid 1 and leaves the others as they are")]
    wire.poll()
    assert len(refused_events(db)) == 1


def test_a_punch_time_outside_the_zk_calendar_is_refused_not_stored_as_2133():
    device = ZkDevice()
    populate(device, 2)
    at = datetime(2024, 3, 1, 8, 30, 15)
    device.punch("1", at=at)
    device.punch("2", at=datetime(2024, 3, 1, 9, 0, 0))
    first = encode_attendance(device.attendance[0], 40)

    def unset_time(packet):  # the first record's time as 0xFFFFFFFF, as an unset record holds it
        if packet.command == Command.DATA and first in packet.data:
            return encode_tcp(replace(packet, data=packet.data.replace(first, first[:27] + b"\xff\xff\xff\xff" + first[31:])))
        return None

    device.faults.mangle = unset_time
    db = SyncDb()
    wire = Wire(device, db).start()
    assert wire.sink.of(EventCode.VERIFY_SUCCESS) == ["2"], "the other punch is stored"
    assert [(u, "2133" in d and "not stored" in d) for u, d in refused_events(db)] == [("1", True)]


def put(wire: Wire, *records: UserRecord):
    return wire.call(wire.connection.put_users([UserRecordWire.build(r) for r in records], keep_local_changes=True))


def test_a_user_id_longer_than_pin2width_is_refused_for_that_device_never_cut():
    device = ZkDevice()
    device.options["~PIN2Width"] = "5"
    wire = Wire(device).start()
    results = put(wire, UserRecord("1000123", name="Too Long"), UserRecord("12345", name="Fits"))
    assert [(r.user_id, r.status) for r in results] == [("1000123", UserStatus.INVALID), ("12345", UserStatus.OK)]
    assert "over the 5 characters this device holds (~PIN2Width)" in results[0].detail
    assert sorted(u.user_id for u in device.users.values()) == ["12345"]
    rows, _ = delivery_rows(7, results, "applied", Metrics(), 0)
    assert "~PIN2Width" in next(r["detail"] for r in rows if r["user_id"] == "1000123"), "the monitoring event says why"


def test_a_firmware_that_cuts_ids_makes_no_phantom_user():
    device = ZkDevice()
    del device.options["~PIN2Width"]  # it does not say how long an id it holds...
    keep = device.put_user
    device.put_user = lambda user: keep(replace(user, user_id=user.user_id[-5:]))  # ...and keeps the last 5 characters
    wire = Wire(device).start()
    results = put(wire, UserRecord("1000123", name="Cut Short"))
    assert [(r.user_id, r.status) for r in results] == [("1000123", UserStatus.INVALID)]
    assert "stored user id '1000123' as '00123'" in results[0].detail
    assert device.users == {}, "the cut copy is deleted again"
    wire.poll()
    wire.poll(TIMING.poll.users_s)
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == [], "no phantom '00123' reaches the server"
    again = put(wire, UserRecord("2000456"))
    assert again[0].status == UserStatus.INVALID and "~PIN2Width" in again[0].detail and device.users == {}, "the width is learnt"


def test_the_listing_compares_the_part_of_a_record_the_device_holds():
    device = ZkDevice()
    wire = Wire(device).start()
    ana = UserRecord("ana", name="Ana Lima Silva de Albuquerque", pin_hash=hash_pin("ana", "1234"),
                     cards=(Card(CardType.CSN, (77).to_bytes(4, "big")), Card(CardType.WIEGAND, b"\x01\x02\x03")),
                     fingerprints=(Fingerprint(2, b"t" * 500, b"", False, "zk10"), Fingerprint(3, b"n" * 384, b"m" * 384)))
    put(wire, ana, UserRecord("off", disabled=True))
    device.enroll("door", "Only At The Door")
    wire.poll()
    page = wire.call(wire.connection.list_digests("", 500))
    assert sorted(page.digests) == ["ana", "door"] and not page.more
    raw = UserRecordWire.build(ana)
    assert wire.connection.digest_of(raw) == page.digests["ana"], "holds what the gateway writes: alike (name cut, one card, zk10 finger)"
    assert wire.connection.digest_of(UserRecordWire.build(UserRecord("off", disabled=True))) is None, "not to be held"
    device.edit("ana", name="Edited At The Door")
    wire.poll()
    assert wire.connection.digest_of(raw) != wire.call(wire.connection.list_digests("", 500)).digests["ana"], "as the last poll read it"
    assert list(wire.call(wire.connection.list_digests("", 1)).digests) == ["ana"]
    assert list(wire.call(wire.connection.list_digests("ana", 1)).digests) == ["door"]


class Refills:
    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, terminal_id, why):
        self.asked.append(why)


def refilling_wire(device: ZkDevice, db=None, memory=None) -> tuple[Wire, Refills]:
    refills = Refills()
    wire = Wire(device, db, memory=memory)
    wire.connection._on_refill = refills
    return wire, refills


def test_a_device_wiped_while_watched_is_refilled_not_taken_for_keypad_deletes():
    device = ZkDevice()
    populate(device, 3)
    wire, refills = refilling_wire(device)
    wire.start()
    wire.call(wire.connection.fetch_users(["1", "2", "3"]))
    for user_id in ("1", "2", "3"):
        device.delete(user_id)  # "clear all data" in the menu
    wire.poll()
    assert wire.sink.of(EventCode.DELETE_SUCCESS, Origin.DEVICE) == [], "no keypad deletion announced"
    assert len(refills.asked) == 1 and "holds nobody, where the server had seen 3 people" in refills.asked[0]
    with wire.db.engine.begin() as conn:
        assert load_holdings(conn, 7).seen == {}, "what the server had seen there is forgotten"
    wire.poll()
    assert len(refills.asked) == 1, "asked once"



def test_after_a_wipe_the_listing_holds_nobody():
    device = ZkDevice()
    populate(device, 2)
    wire, refills = refilling_wire(device)
    wire.start()
    wire.call(wire.connection.fetch_users(["1", "2"]))
    for user_id in ("1", "2"):
        device.delete(user_id)
    wire.poll()
    page = wire.call(wire.connection.list_digests("", 500))  # the reconciliation the refill asks for
    assert page.digests == {} and not page.more and len(refills.asked) == 1


def test_a_device_found_empty_at_connect_or_replaced_by_another_unit_is_refilled():
    device, db, memory = ZkDevice(serial_number="UNIT-A"), SyncDb(), DeviceMemory()
    populate(device, 2)
    wire, refills = refilling_wire(device, db, memory)
    wire.start()
    wire.call(wire.connection.fetch_users(["1", "2"]))
    for user_id in ("1", "2"):  # wiped while the gateway was away
        device.delete(user_id)
    wire, refills = refilling_wire(device, db)
    wire.start()
    assert refills.asked and wire.sink.of(EventCode.DELETE_SUCCESS, Origin.DEVICE) == []
    other = ZkDevice(serial_number="UNIT-B")
    other.enroll("9", "From Another Door")
    wire, refills = refilling_wire(other, db)  # the same configured device, another unit, after a restart
    wire.start()
    assert refills.asked == ["its serial number is UNIT-B, no longer UNIT-A: another unit"]
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["9"], "what the new unit holds is news"
    wire, refills = refilling_wire(other, db)
    wire.start()
    assert refills.asked == [], "the same unit again"


def test_a_new_units_serial_is_stored_only_once_the_old_units_copies_are_forgotten():
    device, db = ZkDevice(serial_number="UNIT-A"), SyncDb()
    populate(device, 2)
    wire, _ = refilling_wire(device, db)
    wire.start()
    wire.call(wire.connection.fetch_users(["1", "2"]))
    other = ZkDevice(serial_number="UNIT-B")
    wire, refills = refilling_wire(other, db)
    wire.connection._store.save_seen = lambda terminal_id, seen: defer.fail(DatabaseFailure("the database is down"))
    wire.start()
    assert len(refills.asked) == 1
    wire, refills = refilling_wire(other, db)  # the next start: still known as UNIT-A, so refilled again
    wire.start()
    assert refills.asked == ["its serial number is UNIT-B, no longer UNIT-A: another unit"]
    assert wire.sink.of(EventCode.DELETE_SUCCESS, Origin.DEVICE) == [], "the old unit's people are no keypad deletions"


def test_sdkbuild_is_said_after_connecting_and_a_device_that_refuses_it_is_used_as_it_is():
    device = ZkDevice()
    Wire(device).start()
    assert device.options["SDKBuild"] == "1"
    device = ZkDevice()
    device.faults.unknown_commands.add(Command.OPTIONS_WRQ)
    populate(device, 1)
    wire = Wire(device).start()
    assert "SDKBuild" not in device.options and wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1"]


MADRID = ZoneInfo("Europe/Madrid")
NOW_S = datetime(2024, 3, 1, 7, 30, 15, tzinfo=ZoneInfo("UTC")).timestamp()  # 08:30:15 in Madrid (UTC+1 in March)


def test_punch_times_are_the_devices_local_time_in_its_own_time_zone():
    device = ZkDevice(clock=lambda: datetime(2024, 3, 1, 8, 30, 15))
    populate(device, 1)
    device.punch("1", at=datetime(2024, 3, 1, 8, 30, 15))
    wire = Wire(device, device_clock=DeviceClock(MADRID), now_s=NOW_S).start()
    assert [e.timestamp_ms for e in wire.sink.events if e.code == EventCode.VERIFY_SUCCESS] == [int(NOW_S * 1000)]
    assert wire.connection.info.clock_drift_s == 0.0


def test_the_device_clock_is_read_at_connect_its_drift_shown_and_set_when_asked():
    device = ZkDevice(clock=lambda: datetime(2024, 3, 1, 8, 31, 45))  # 90 s ahead of the gateway, in Madrid
    wire = Wire(device, device_clock=DeviceClock(MADRID), now_s=NOW_S).start()
    assert wire.connection.info.clock_drift_s == 90.0 and device.now() == datetime(2024, 3, 1, 8, 31, 45), "shown, left alone"
    wire = Wire(device, device_clock=DeviceClock(MADRID, set_clock=True), now_s=NOW_S).start()
    assert wire.connection.info.clock_drift_s == 0.0 and device.now() == datetime(2024, 3, 1, 8, 30, 15), "set to the gateway's time"


def test_a_local_time_in_a_zone_reads_as_the_same_moment_both_ways():
    clock = DeviceClock(MADRID)
    assert clock.seconds(datetime(2024, 7, 1, 9, 0)) == datetime(2024, 7, 1, 7, 0, tzinfo=ZoneInfo("UTC")).timestamp(), "summer: UTC+2"
    assert clock.local(clock.seconds(datetime(2024, 12, 24, 18, 5, 9))) == datetime(2024, 12, 24, 18, 5, 9)
    assert clock.drift_s(datetime(2024, 3, 1, 8, 30, 15) - timedelta(seconds=30), NOW_S) == -30.0


def test_a_keypad_enrolment_during_the_upload_keeps_its_slot_on_a_device_that_ignores_disabledevice():
    device = ZkDevice()
    device.faults.keypad_never_held = True
    populate(device, 2)
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["1", "2"]))
    # After the pass read the table, before the upload: the walk-in takes the lowest free uid.
    once_at(device, Command.PREPARE_DATA, lambda: device.enroll("walk-in", "Walk In"))
    results = wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=True))
    assert [r.status for r in results] == [UserStatus.OK]
    assert device.user("walk-in").name == "Walk In" and device.user("5").name == "Pushed"
    assert device.user("5").uid == 2 + 1 + 2, "above the highest uid in use, two left free for the keypad"
    wire.poll()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2", "walk-in"]
    assert wire.broken == []


def test_keypad_enrolments_between_the_read_and_the_upload_are_never_overwritten_on_a_device_that_ignores_disabledevice():
    device = ZkDevice()
    device.faults.keypad_never_held = True
    populate(device, 2, fingers=0)
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["1", "2"]))
    device.enroll("early", "Early")  # the counts moved: the pass reads the users

    def three_walk_ins():  # after the pass read the users, more than the two uids left for the keypad
        for n in range(3):
            device.enroll(f"walk-in {n}", f"Walk In {n}")

    once_after(device, Command.PREPARE_BUFFER, three_walk_ins)  # the user table answered, whole
    results = wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=True))
    assert [r.status for r in results] == [UserStatus.OK]
    assert [device.user(f"walk-in {n}").name for n in range(3)] == ["Walk In 0", "Walk In 1", "Walk In 2"], "none overwritten"
    assert device.user("5").name == "Pushed" and device.user("5").uid == 6 + 1 + 2, "planned again after the counts moved"
    wire.poll()
    assert wire.sink.of(EventCode.ENROLL_SUCCESS, Origin.DEVICE) == ["1", "2", "early", "walk-in 0", "walk-in 1", "walk-in 2"]
    assert wire.broken == []


def test_a_write_never_takes_the_uid_of_a_second_copy_of_a_user_id():
    device = ZkDevice()
    populate(device, 1)
    device.users[2] = replace(device.user("1"), uid=2, name="Second Copy")  # a firmware that does not keep user ids unique
    wire = Wire(device).start()
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False))
    assert device.users[2].name == "Second Copy" and device.user("5").uid == 5


def test_another_persons_record_in_the_slot_written_is_never_deleted():
    device = ZkDevice()
    device.faults.keypad_never_held = True
    del device.options["~PIN2Width"]  # it does not say how long an id it holds: read back after new people
    populate(device, 1)
    wire = Wire(device).start()
    wire.call(wire.connection.fetch_users(["1"]))

    def keypad_takes_the_slot():  # a firmware whose keypad picks uids its own way, after the upload
        device.put_user(User(device.user("5").uid, "walk-in", "Walk In", 0, "", 0, "1"))

    once_at(device, Command.REFRESHDATA, keypad_takes_the_slot)
    results = wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=True))
    assert [(r.user_id, r.status) for r in results] == [("5", UserStatus.STORAGE_FULL)], "ours is missing, and said so"
    assert [u.user_id for u in device.users.values()] == ["1", "walk-in"], "the keypad's person stays"
    assert wire.broken == []


def test_a_write_pass_stands_for_a_poll_so_none_follows_it_within_poll_s():
    device = ZkDevice()
    populate(device, 3)
    wire = Wire(device).start()  # its first poll is due at 2 s
    wire.call(wire.connection.fetch_users(["1", "2", "3"]))
    wire.clock.advance(1.5)
    device.enroll("early", "Early")  # the counts moved: the pass reads the users
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False))
    device.recorded = []
    wire.poll(0.5)
    assert device.recorded == [], "the pass read the device 0.5 s ago: the poll is put off to poll_s after it"
    device.edit("1", name="Typed At The Door")  # a change the counts do not show: found at the next poll
    wire.poll(1.5)
    assert commands(device)[0] == Command.GET_FREE_SIZES and Command.PREPARE_BUFFER in commands(device)
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["1"]


def test_the_reconciliation_listing_holds_what_a_write_pass_wrote_and_deleted_at_once():
    device = ZkDevice()
    populate(device, 2)
    wire = Wire(device).start()
    raw = UserRecordWire.build(UserRecord("5", name="Pushed"))
    wire.call(wire.connection.put_users([raw], keep_local_changes=False))  # no table read: the counts had not moved
    page = wire.call(wire.connection.list_digests("", 500)).digests
    assert sorted(page) == ["1", "2", "5"] and page["5"] == wire.connection.digest_of(raw), "else reconciliation pushes it again"
    wire.call(wire.connection.delete_users(["1"]))
    assert sorted(wire.call(wire.connection.list_digests("", 500)).digests) == ["2", "5"]


def test_a_write_pass_that_read_no_table_leaves_the_next_poll_where_it_was():
    device = ZkDevice()
    populate(device, 3)
    wire = Wire(device).start()  # read at 0 s, its first poll due at 2 s
    wire.call(wire.connection.fetch_users(["1", "2", "3"]))
    wire.clock.advance(1.5)
    device.recorded = []
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False))
    assert Command.PREPARE_BUFFER not in commands(device), "only a new person, the counts unmoved since a read 1.5 s ago"
    device.edit("1", name="Typed At The Door")  # the counts do not show it
    device.recorded = []
    wire.poll(0.5)
    assert Command.PREPARE_BUFFER in commands(device), "the poll reads the users poll_s after the last read, not after the pass"
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["1"]


def test_a_write_pass_reads_the_punches_a_poll_would_have():
    device = ZkDevice()
    populate(device, 2)
    wire = Wire(device, timing=replace(TIMING, poll=PollTiming(poll_s=30, attendance_s=10))).start()
    wire.clock.advance(10)  # no poll yet, and the attendance log is due if its count moved
    device.punch("1")
    wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False))
    assert wire.sink.of(EventCode.VERIFY_SUCCESS) == ["1"], "read by the pass, with no poll since"


class ReleasedWire(Wire):
    """A released session: each conversation on a new StringTransport and device session."""

    def __init__(self, device: ZkDevice, **kwargs):
        super().__init__(device, **kwargs)
        self.lost: list[str] = []
        self.unreachable: str | None = None
        self.sessions = 1
        self.connection._redial = self._redial
        self.connection._on_lost = self.lost.append

    def _redial(self):
        if self.unreachable is not None:
            return defer.fail(DeviceLost(self.unreachable))
        connection = self.connection
        link = ZkLink(ZkClient(self.device.comm_key, timeout_s=TIMING.request_s), self.clock,
                      on_realtime=connection.realtime_event, on_broken=lambda reason: connection.link_broken(reason, link))
        self.link, self.transport = link, StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 4370))
        self.session = DeviceSession(self.device, 0x1234 + self.sessions, self._out.append)
        self.sessions += 1
        link.makeConnection(self.transport)
        return defer.succeed(link)


def commands(device: ZkDevice) -> list[int]:
    return [p.command for p in device.recorded]


def test_a_released_session_dials_for_each_conversation_and_lets_go_after_it():
    device = ZkDevice()
    populate(device, 2)
    device.recorded = []
    wire = ReleasedWire(device).start()
    assert commands(device)[0] == Command.CONNECT and commands(device)[-1] == Command.EXIT
    assert Command.REG_EVENT not in commands(device), "no real-time events: nobody is there to hear them"
    assert wire.session.closed and wire.sessions == 1
    wire.call(wire.connection.fetch_users(["1", "2"]))

    device.recorded = []
    device.edit("1", name="Typed At The Door")  # by the site's own software between polls
    wire.poll()
    assert wire.sessions == 2 and commands(device)[:2] == [Command.CONNECT, Command.OPTIONS_WRQ] and commands(device)[-1] == Command.EXIT
    assert wire.sink.of(EventCode.UPDATE_SUCCESS, Origin.DEVICE) == ["1"] and wire.presence.online_now is wire.connection

    device.recorded = []
    results = wire.call(wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False))
    assert [r.status for r in results] == [UserStatus.OK] and device.user("5").name == "Pushed"
    assert wire.sessions == 3 and commands(device)[0] == Command.CONNECT and commands(device)[-1] == Command.EXIT
    assert Command.PREPARE_BUFFER in commands(device), "read again: the site's software may have written people since the poll"
    assert wire.lost == [] and not wire.connection.closed, "a link let go is no lost connection"


def test_a_released_session_waits_for_a_busy_device_and_goes_offline_once_it_is_not_to_be_had():
    device = ZkDevice()
    wire = ReleasedWire(device).start()
    wire.unreachable = "cannot connect to 10.0.0.5:4370: Connection refused"  # another client has it, say
    results = []
    wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False).addBoth(results.append)
    wire.poll(), wire.poll()
    assert wire.lost == [] and wire.presence.online_now is wire.connection and results == [], "busy: tried again"
    wire.unreachable = None
    wire.poll()
    assert [r.status for r in results[0]] == [UserStatus.OK] and device.user("5").name == "Pushed", "the write waited for it"
    wire.unreachable = "cannot connect to 10.0.0.5:4370: Connection refused"
    for _ in range(4):
        wire.poll()
    assert wire.lost == ["poll failed: not to be had for 6 s: cannot connect to 10.0.0.5:4370: Connection refused"]
    assert wire.presence.online_now is None and wire.connection.closed


def test_a_write_waiting_for_a_busy_device_fails_when_the_connection_ends():
    """Else the pusher's round waits for it for good, and that terminal is never pushed to again."""
    device = ZkDevice()
    wire = ReleasedWire(device).start()
    wire.unreachable = "cannot connect to 10.0.0.5:4370: Connection refused"
    results = []
    wire.connection.put_users([UserRecordWire.build(UserRecord("5", name="Pushed"))], keep_local_changes=False).addBoth(results.append)
    for _ in range(6):
        wire.poll()
    assert wire.connection.closed and len(results) == 1
    assert results[0].check(DeviceLost) and "not to be had" in results[0].getErrorMessage()


def test_a_released_session_closed_while_it_dials_lets_the_new_link_go():
    device = ZkDevice()
    wire = ReleasedWire(device).start()
    dialled = defer.Deferred()
    new_link = wire.connection._redial
    wire.connection._redial = lambda: dialled
    wire.poll()  # dialling
    wire.connection.close("the gateway is stopping")
    link = new_link().result
    dialled.callback(link)
    wire.pump()
    assert wire.transport.disconnecting, "the link dialled meanwhile is let go at once"
    assert wire.lost == ["the gateway is stopping"] and wire.presence.online_now is None


def test_a_later_upload_of_a_pass_leaves_the_uids_a_keypad_takes_above_the_highest_the_earlier_made():
    held = {str(uid): User(uid, str(uid), f"Person {uid}", 0, "", 0, "1") for uid in range(1, 11)}
    plan = WritePlan(held, {}, DeviceProfile(), 0, set(range(1, 11)), chunk=4)
    for n in range(10):
        plan.put(UserRecord(f"new{n}", name=f"New {n}"))
    uids = [user.uid for user, _ in plan.writes]
    for start in range(4, len(uids), 4):  # after each upload, a keypad above the highest takes the next two
        highest = max([10, *uids[:start]])
        assert not {highest + 1, highest + 2} & set(uids[start:]), (start, uids)
    assert uids[:4] == [13, 14, 15, 16]  # 11 and 12 kept from the start, as before


def test_new_people_fill_holes_but_never_the_uids_a_keypad_would_take_next():
    held = {str(uid): User(uid, str(uid), f"Person {uid}", 0, "", 0, "1") for uid in (1, 5, 6)}
    plan = WritePlan(held, {}, DeviceProfile(), 0, {1, 5, 6, 9})  # uid 9: a second copy of someone's user id
    for user_id in ("a", "b", "c"):
        plan.put(UserRecord(user_id, name=user_id))
    # Keypads take the lowest free (2, 3) or above the highest (10, 11): never written.
    assert [user.uid for user, _ in plan.writes] == [4, 7, 8]
