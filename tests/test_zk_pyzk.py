"""pyzk, the client people run against real ZKTeco devices, against the emulated device.

pyzk is blocking, so each test runs it in a thread (``deferToThread``) while the reactor serves
the emulator in this trial TestCase; every pyzk socket has a 5-second timeout and trial bounds
the whole test. pyzk (GPL-2.0) is a test dependency only: nothing outside tests/ imports it.
"""

import socket
import struct
import time
from datetime import datetime

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest
from zk import ZK
from zk.exception import ZKErrorResponse
from zk.finger import Finger

from protocol.zk.client import ZkClient
from protocol.zk.commands import Command
from protocol.zk.events import Connected, Reply, TemplatesRead, UsersRead
from protocol.zk.records import Template, User
from simulator.zk.device import Firmware, ZkDevice, populate
from simulator.zk.tcp import listen

PYZK_TIMEOUT_S = 5


class EmulatorTestCase(unittest.TestCase):
    timeout = 60

    def start(self, **options) -> ZkDevice:
        self.device = ZkDevice(**options)
        self.port = listen(self.device, reactor)
        return self.device

    @defer.inlineCallbacks
    def tearDown(self):
        factory = self.port.factory
        factory.drop_connections()
        yield self.port.stopListening()
        deadline = time.monotonic() + 5
        while factory.connections and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert not factory.connections, "a connection outlived the test"

    def pyzk(self, password: int = 0) -> ZK:
        return ZK("127.0.0.1", self.port.getHost().port, timeout=PYZK_TIMEOUT_S, password=password, ommit_ping=True)

    def session(self, work, password: int = 0):
        """Run ``work(connection)`` in a thread between pyzk's connect and disconnect."""

        def run():
            connection = self.pyzk(password).connect()
            try:
                return work(connection)
            finally:
                connection.disconnect()

        return threads.deferToThread(run)


class Connecting(EmulatorTestCase):
    @defer.inlineCallbacks
    def test_facts_without_a_comm_key(self):
        self.start(serial_number="EMU42", fp_version=10)
        populate(self.device, 3, fingers=2)
        self.device.punch("2")

        def facts(conn):
            conn.read_sizes()
            return conn.get_firmware_version(), conn.get_serialnumber(), conn.get_fp_version(), conn.get_platform(), conn

        version, serial, fp_version, platform, conn = yield self.session(facts)
        assert (version, serial, fp_version, platform) == ("Ver 6.60 Apr 28 2015", "EMU42", 10, "ZEM560_TFT")
        assert (conn.users, conn.fingers, conn.records) == (3, 6, 1)
        assert (conn.users_cap, conn.fingers_cap, conn.rec_cap) == (10_000, 10_000, 100_000)
        assert (conn.users_av, conn.fingers_av, conn.rec_av) == (9_997, 9_994, 99_999)

    @defer.inlineCallbacks
    def test_with_a_comm_key_and_a_wrong_one_refused(self):
        self.start(comm_key=654321)
        serial = yield self.session(lambda conn: conn.get_serialnumber(), password=654321)
        assert serial == "EMU0000000001"
        with pytest.raises(ZKErrorResponse, match="Unauthenticated"):
            yield threads.deferToThread(self.pyzk(password=123456).connect)
        assert self.device.requests[Command.AUTH] == 2


class Users(EmulatorTestCase):
    @defer.inlineCallbacks
    def test_no_users(self):
        self.start()
        users = yield self.session(lambda conn: conn.get_users())
        assert users == []

    @defer.inlineCallbacks
    def test_a_few_users_answered_inline(self):
        self.start()
        ana = self.device.enroll("ana", "Ana Lima", password="1234", card=4242, privilege=14, group_id="3")
        self.device.enroll("1043", "Bo")
        users = yield self.session(lambda conn: conn.get_users())
        assert [(u.uid, u.user_id, u.name, u.privilege, u.password, u.card, u.group_id) for u in users] == [
            (ana.uid, "ana", "Ana Lima", 14, "1234", 4242, "3"),
            (2, "1043", "Bo", 0, "", 0, "1"),
        ]
        assert self.device.requests[Command.READ_BUFFER] == 0

    @defer.inlineCallbacks
    def test_thousands_of_users_read_in_chunks_in_both_chunk_forms(self):
        for through_prepare_data in (True, False):
            self.start(firmware=Firmware(chunks_through_prepare_data=through_prepare_data))
            populate(self.device, 1500, seed=7)
            users = yield self.session(lambda conn: conn.get_users())
            assert [(u.uid, u.user_id, u.name, u.card) for u in users] == [
                (u.uid, u.user_id, u.name, u.card) for u in sorted(self.device.users.values(), key=lambda u: u.uid)
            ]
            assert self.device.requests[Command.READ_BUFFER] == 2, "1500 users of 72 bytes are two 0xFFC0-byte chunks"
            assert self.device.requests[Command.FREE_DATA] == 1
            yield self.tearDown()

    @defer.inlineCallbacks
    def test_set_user_round_trip(self):
        self.start()

        def write_and_read(conn):
            conn.set_user(uid=12, name="Grace Hopper", privilege=14, password="7531", group_id="2", user_id="g.hopper", card=123456)
            return conn.get_users()

        [user] = yield self.session(write_and_read)
        assert (user.uid, user.name, user.privilege, user.password, user.group_id, user.user_id, user.card) == (
            12, "Grace Hopper", 14, "7531", "2", "g.hopper", 123456)
        assert self.device.users[12] == User(12, "g.hopper", "Grace Hopper", 14, "7531", 123456, "2")
        assert self.device.requests[Command.REFRESHDATA] == 1

    @defer.inlineCallbacks
    def test_delete_user_by_uid_and_by_user_id(self):
        self.start()
        populate(self.device, 4, fingers=1)

        def delete(conn):
            conn.delete_user(uid=2)
            conn.delete_user(user_id="4")
            return conn.get_users()

        users = yield self.session(delete)
        assert [u.user_id for u in users] == ["1", "3"]
        assert sorted(self.device.users) == [1, 3] and sorted(k[0] for k in self.device.templates) == [1, 3]


class Templates(EmulatorTestCase):
    @defer.inlineCallbacks
    def test_save_user_template_then_get_templates_byte_exact(self):
        self.start()
        self.device.enroll("1042", "Ada")
        prints = {0: bytes(range(256)) * 2 + b"\x01", 6: b"\xa5\x5a" * 333}

        def save_and_read(conn):
            [ada] = conn.get_users()
            conn.save_user_template(ada, [Finger(ada.uid, fid, 1, t) for fid, t in prints.items()])
            return conn.get_templates()

        templates = yield self.session(save_and_read)
        assert [(t.uid, t.fid, t.valid, t.template) for t in templates] == [(1, fid, 1, t) for fid, t in prints.items()]
        assert self.device.templates[(1, 6)] == Template(1, 6, prints[6])

    @defer.inlineCallbacks
    def test_delete_user_template_by_uid(self):
        self.start()
        self.device.enroll("1042", fingers={0: b"a" * 500, 1: b"b" * 500})
        deleted = yield self.session(lambda conn: conn.delete_user_template(uid=1, temp_id=0))
        assert deleted and list(self.device.templates) == [(1, 1)]

    @pytest.mark.xfail(raises=struct.error, strict=True, reason="pyzk 0.9 packs a str into '<24sB' for DEL_FPTMP "
                       "(delete_user_template with user_id over TCP): struct.error before anything is sent")
    @defer.inlineCallbacks
    def test_delete_user_template_by_user_id(self):
        self.start()
        self.device.enroll("1042", fingers={0: b"a" * 500, 1: b"b" * 500})
        yield self.session(lambda conn: conn.delete_user_template(temp_id=0, user_id="1042"))
        assert list(self.device.templates) == [(1, 1)]


class Attendance(EmulatorTestCase):
    @defer.inlineCallbacks
    def test_get_attendance_timestamps(self):
        self.start()
        self.device.enroll("1042")
        self.device.enroll("1043")
        punches = [("1042", datetime(2024, 2, 29, 8, 59, 1), 1, 0), ("1043", datetime(2024, 2, 29, 9, 0, 59), 2, 1),
                   ("1042", datetime(2024, 12, 31, 23, 59, 59), 0, 1)]
        for user_id, at, verify_type, punch in punches:
            self.device.punch(user_id, at, verify_type, punch)
        records = yield self.session(lambda conn: conn.get_attendance())
        assert [(r.user_id, r.timestamp, r.status, r.punch) for r in records] == punches

    @defer.inlineCallbacks
    def test_live_capture_receives_pushed_punches_in_order_and_stops(self):
        self.start()
        self.device.enroll("1042")
        self.device.enroll("1043")
        times = [datetime(2024, 5, 6, 7, 8, n) for n in (1, 2, 3)]

        def capture():
            conn = self.pyzk().connect()
            got, deadline = [], time.monotonic() + 20
            for attendance in conn.live_capture(new_timeout=1):
                if attendance is not None:
                    got.append(attendance)
                if len(got) == 3 or time.monotonic() > deadline:
                    conn.end_live_capture = True
            conn.disconnect()
            return got

        capturing = threads.deferToThread(capture)
        deadline = time.monotonic() + 10
        while not self.device.event_listeners and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert self.device.event_listeners == 1, "pyzk never registered for events"
        for user_id, at in zip(("1042", "1043", "1042"), times):
            self.device.punch(user_id, at)
        got = yield capturing
        assert [(a.user_id, a.timestamp, a.uid) for a in got] == [("1042", times[0], 1), ("1043", times[1], 2), ("1042", times[2], 1)]
        assert self.device.event_listeners == 0, "live_capture's REG_EVENT 0 unregisters"


class OurClientReadsWhatPyzkReads(EmulatorTestCase):
    """protocol.zk's ZkClient, driven over a real socket by a tiny blocking loop."""

    @defer.inlineCallbacks
    def test_users_and_templates(self):
        self.start(comm_key=99)
        populate(self.device, 1200, seed=5, fingers=2)

        def ours():
            client = ZkClient(99, timeout_s=PYZK_TIMEOUT_S)
            with socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=PYZK_TIMEOUT_S) as sock:
                results = [drive(client, sock, lambda now: client.connect(now=now))]
                results.append(drive(client, sock, lambda now: client.read_users(now=now)))
                results.append(drive(client, sock, lambda now: client.read_templates(now=now)))
                results.append(drive(client, sock, lambda now: client.disconnect(now=now)))
            return results

        connected, users, templates, bye = yield threads.deferToThread(ours)
        theirs_users, theirs_templates = yield self.session(lambda conn: (conn.get_users(), conn.get_templates()), password=99)
        assert isinstance(connected, Connected) and isinstance(bye, Reply) and bye.ok
        assert isinstance(users, UsersRead) and isinstance(templates, TemplatesRead)
        assert [(u.uid, u.user_id, u.name, u.privilege, u.password, u.card, u.group_id) for u in users.users] == [
            (u.uid, u.user_id, u.name, u.privilege, u.password, u.card, u.group_id) for u in theirs_users]
        assert [(t.uid, t.fid, t.valid, t.template) for t in templates.templates] == [
            (t.uid, t.fid, t.valid, t.template) for t in theirs_templates]
        assert len(users.users) == 1200 and len(templates.templates) == 2400


def drive(client: ZkClient, sock: socket.socket, start):
    """Start one operation and pump the socket until its event arrives (socket timeouts bound it)."""
    token = start(time.monotonic())
    while True:
        for data in client.data_to_send():
            sock.sendall(data)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the device closed the connection")
        for event in client.receive(data, now=time.monotonic()):
            if getattr(event, "token", None) == token:
                return event
