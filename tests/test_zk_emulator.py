"""The emulated ZK device, without sockets: protocol.zk's client talks to a DeviceSession in
memory, and single packets check what the session answers."""

import socket
import subprocess
import sys
from datetime import datetime

import pytest

from protocol.zk import bodies
from protocol.zk.client import State, ZkClient
from protocol.zk.commands import Command, EventFlag, ReplyCode
from protocol.zk.commkey import make_commkey
from protocol.zk.decoder import PacketDecoder
from protocol.zk.events import Connected, RealtimeEvent, RequestFailed
from protocol.zk.realtime import RealtimeAttendance
from protocol.zk.packet import Packet, encode_tcp
from protocol.zk.records import AttendanceRecord, Template, User, encode_time, encode_user
from simulator.cli import build_parser
from simulator.zk.device import FIRMWARES, Firmware, KeypadError, ZkDevice, firmware_variant, populate
from simulator.zk.session import DeviceSession

NOON = datetime(2024, 6, 1, 12, 0, 0)


class Wire:
    """Client and session joined in memory: everything either writes reaches the other."""

    def __init__(self, device: ZkDevice, client: ZkClient):
        self.client, self.events = client, []
        self.to_client: list[Packet] = []
        self.session = DeviceSession(device, 77, self.to_client.append)
        self.decoder = PacketDecoder()

    def run(self) -> list:
        while True:
            sent = [p for data in self.client.data_to_send() for p in self.decoder.feed(data)]
            for packet in sent:
                self.session.receive(packet)
            answers, self.to_client[:] = list(self.to_client), []
            for packet in answers:
                self.events += self.client.receive(encode_tcp(packet), now=0)
            if not sent and not answers:
                out, self.events = self.events, []
                return out


def connected(device: ZkDevice, comm_key: int = 0, **options) -> Wire:
    wire = Wire(device, ZkClient(comm_key, **options))
    wire.client.connect(now=0)
    assert wire.run() == [Connected(1, 77)]
    return wire


def ask(session_device: ZkDevice, command: int, data: bytes = b"", session: DeviceSession | None = None) -> list[Packet]:
    written: list[Packet] = []
    session = session or DeviceSession(session_device, 9, written.append)
    session.write = written.append
    session.receive(Packet(command, 9, 3, data))
    return written


FORMS = {
    "inline": Firmware(inline_limit=1 << 20),
    "chunks-inline": Firmware(inline_limit=0, chunks_through_prepare_data=False),
    "chunks-through-prepare-data": Firmware(inline_limit=0, chunks_through_prepare_data=True),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_client_reads_every_table_in_every_form_the_device_answers(form):
    device = ZkDevice(firmware=FORMS[form])
    populate(device, 50, seed=3, fingers=2)
    for n in range(1, 4):
        device.punch(str(n), at=NOON, verify_type=n)
    wire = connected(device, chunk_size=1000)
    wire.client.read_users(now=0)
    wire.client.read_templates(now=0)
    wire.client.read_attendance(now=0)
    users, templates, attendance = wire.run()
    assert list(users.users) == sorted(device.users.values(), key=lambda u: u.uid)
    assert list(templates.templates) == [device.templates[k] for k in sorted(device.templates)]
    assert [r.user_id for r in attendance.records] == ["1", "2", "3"] and attendance.record_size == 40
    assert attendance.records[1] == AttendanceRecord(2, "2", NOON, 2, 0)


def test_a_comm_key_device_admits_the_right_proof_only():
    device = ZkDevice(comm_key=4242)
    assert connected(device, comm_key=4242).client.state is State.CONNECTED
    wire = Wire(device, ZkClient(4243))
    token = wire.client.connect(now=0)
    assert wire.run() == [RequestFailed(token, "the device refused the comm key", ReplyCode.ACK_UNAUTH)]
    session = DeviceSession(device, 9, lambda p: None)
    assert [p.command for p in ask(device, Command.GET_FREE_SIZES, session=session)] == [ReplyCode.ACK_UNAUTH]
    assert [p.command for p in ask(device, Command.AUTH, make_commkey(4242, 9, 99), session=session)] == [ReplyCode.ACK_OK]
    assert [p.command for p in ask(device, Command.GET_FREE_SIZES, session=session)] == [ReplyCode.ACK_OK]


def test_save_users_stores_users_and_templates_byte_exact():
    device = ZkDevice()
    wire = connected(device, upload_chunk_size=256)
    users = [User(7, "ana", "Ana", 14, "1234", 99, "2"), User(8, "bo", "Bo")]
    fingers = [Template(7, 1, bytes(range(256)) * 3), Template(8, 9, b"\x00\xff" * 100, valid=3)]
    wire.client.save_users(users, fingers, now=0)
    [reply] = wire.run()
    assert reply.ok
    assert device.users == {7: users[0], 8: users[1]}
    assert device.templates == {(7, 1): fingers[0], (8, 9): fingers[1]}


def test_a_user_id_held_by_another_uid_is_refused():
    device = ZkDevice()
    device.enroll("ana")
    [answer] = ask(device, Command.USER_WRQ, encode_user(User(5, "ana")))
    assert answer.command == ReplyCode.ACK_ERROR and 5 not in device.users


def test_deletes_by_uid_and_by_user_id():
    device = ZkDevice()
    ana = device.enroll("ana", fingers={0: b"a" * 10, 1: b"b" * 10})
    assert ask(device, Command.DEL_FPTMP, bodies.user_id_finger("ana", 0))[0].command == ReplyCode.ACK_OK
    assert ask(device, Command.DELETE_USERTEMP, bodies.uid_finger(ana.uid, 0))[0].command == ReplyCode.ACK_ERROR
    assert ask(device, Command.DELETE_USER, bodies.uid_body(ana.uid))[0].command == ReplyCode.ACK_OK
    assert device.users == {} and device.templates == {}


def test_facts_options_time_and_unknown_commands():
    device = ZkDevice(serial_number="S1", fp_version=12, clock=lambda: NOON)
    assert ask(device, Command.OPTIONS_RRQ, bodies.option_request("~ZKFPVersion"))[0].data == b"~ZKFPVersion=12\0"
    assert ask(device, Command.OPTIONS_RRQ, bodies.option_request("NoSuchOption"))[0].command == ReplyCode.ACK_ERROR
    assert ask(device, Command.GET_VERSION)[0].data.startswith(b"Ver ")
    assert ask(device, Command.SET_TIME, bodies.u32(encode_time(datetime(2030, 1, 2, 3, 4, 5))))[0].command == ReplyCode.ACK_OK
    assert device.now() == datetime(2030, 1, 2, 3, 4, 5)
    for command in (Command.CAPTUREIMAGE, ReplyCode.ACK_ERROR, 4321):
        assert ask(device, command)[0].command == ReplyCode.ACK_UNKNOWN


def test_events_go_only_where_registered_and_one_at_a_time_until_acknowledged():
    device = ZkDevice(clock=lambda: NOON)
    device.enroll("ana")
    written: list[Packet] = []
    session = DeviceSession(device, 9, written.append)
    device.punch("ana")  # before registration: logged, not pushed
    session.receive(Packet(Command.REG_EVENT, 9, 1, bodies.u32(EventFlag.ATTLOG)))
    written.clear()
    for _ in range(3):
        device.punch("ana")
    assert [p.command for p in written] == [Command.REG_EVENT], "the next waits for the client's ACK_OK"
    for expected in (2, 3):
        session.receive(Packet(ReplyCode.ACK_OK, 9, 0))
        assert len(written) == expected
    session.receive(Packet(ReplyCode.ACK_OK, 9, 0))
    assert len(written) == 3 and len(device.attendance) == 4
    assert all(p.session_id == EventFlag.ATTLOG and p.reply_id == 0 for p in written)


def test_enrolment_events_are_pushed_only_when_the_firmware_does():
    for enrol_events, expected in ((False, []), (True, [EventFlag.ENROLLUSER, EventFlag.ENROLLFINGER])):
        device = ZkDevice(enrol_events=enrol_events)
        wire = connected(device)
        wire.client.register_events(EventFlag.ENROLLUSER | EventFlag.ENROLLFINGER, now=0)
        wire.run()
        device.enroll("ana", fingers={4: b"t" * 30})
        device.punch("ana")  # not registered for attendance
        events = wire.run()
        assert [e.code for e in events if isinstance(e, RealtimeEvent)] == expected


def test_keypad_refuses_what_a_device_would():
    device = ZkDevice()
    device.enroll("ana")
    with pytest.raises(KeypadError):
        device.enroll("ana")
    with pytest.raises(KeypadError):
        device.punch("nobody")
    with pytest.raises(KeypadError):
        device.edit("ana", uid=9)
    assert device.edit("ana", name="Ana Maria").name == "Ana Maria"
    device.delete("ana")
    assert device.enroll("bo").uid == 1, "the freed slot is reused"


def test_a_held_device_keeps_keypad_actions_waiting_and_does_them_in_order_when_released():
    device = ZkDevice(clock=lambda: NOON)
    device.enroll("ana")
    wire = connected(device)
    wire.client.request(Command.DISABLEDEVICE, now=0)
    wire.run()
    assert device.disabled
    assert device.enroll("bo") is None and device.edit("ana", name="Ana Maria") is None
    device.delete("bo")
    device.punch("ana")
    assert (sorted(u.user_id for u in device.users.values()), device.user("ana").name, device.attendance) == (["ana"], "", [])
    assert device.keypad_waiting == 4
    read = wire.client.read_users(now=0)
    assert [e.users for e in wire.run() if e.token == read] == [(device.user("ana"),)], "a read while held sees no keypad change"
    wire.client.request(Command.ENABLEDEVICE, now=0)
    wire.run()
    assert not device.disabled and device.keypad_waiting == 0
    assert sorted(u.user_id for u in device.users.values()) == ["ana"], "bo enrolled, then deleted: in that order"
    assert device.user("ana").name == "Ana Maria" and [r.user_id for r in device.attendance] == ["ana"]


def test_a_session_that_ends_releases_the_keypad_and_a_full_queue_refuses_another_action():
    device = ZkDevice()
    first, second = DeviceSession(device, 1, lambda p: None), DeviceSession(device, 2, lambda p: None)
    first.receive(Packet(Command.DISABLEDEVICE, 1, 1))
    second.receive(Packet(Command.DISABLEDEVICE, 2, 1))
    device.keypad_queue = 2
    device.enroll("ana")
    device.enroll("ana")  # refused when it is done: already enrolled (logged)
    with pytest.raises(KeypadError):
        device.enroll("bo")
    first.close()
    assert device.disabled and device.users == {}, "the other session still holds it"
    second.receive(Packet(Command.ENABLEDEVICE, 2, 2))
    assert [u.user_id for u in device.users.values()] == ["ana"] and device.keypad_waiting == 0


def test_a_client_that_holds_the_keypad_and_falls_silent_loses_the_hold():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from simulator.zk.tcp import DeviceFactory

    device, clock = ZkDevice(), task.Clock()
    factory = DeviceFactory(device, clock)
    connection = factory.buildProtocol(None)
    connection.makeConnection(StringTransport())
    connection.dataReceived(encode_tcp(Packet(Command.DISABLEDEVICE, 0, 1)))
    device.enroll("ana")
    clock.advance(factory.keypad_hold_s - 1)
    connection.dataReceived(encode_tcp(Packet(Command.GET_FREE_SIZES, 0, 2)))  # still talking: the hold lasts
    clock.advance(factory.keypad_hold_s - 1)
    assert device.disabled and device.user("ana") is None
    clock.advance(1)
    assert not device.disabled and device.user("ana") is not None
    connection.dataReceived(encode_tcp(Packet(Command.DISABLEDEVICE, 0, 3)))
    connection.dataReceived(encode_tcp(Packet(Command.ENABLEDEVICE, 0, 4)))
    assert not device.disabled and clock.getDelayedCalls() == [], "released: nothing timed"


def test_a_station_counts_a_punch_acknowledged_only_by_the_acknowledgement_of_its_own_event():
    from simulator.people import People
    from simulator.zk.station import ZkStation

    device = ZkDevice(enrol_events=True)
    station = ZkStation(7, device, seed=1, reactor=None)
    session = DeviceSession(device, 9, lambda p: None)
    session.receive(Packet(Command.REG_EVENT, 9, 1, bodies.u32(EventFlag.ATTLOG | EventFlag.ENROLLUSER | EventFlag.ENROLLFINGER)))
    station.enroll(People(1).person("7-1"))  # an enrolment event and a finger event, in flight one at a time
    station.verify("7-1")
    session.receive(Packet(ReplyCode.ACK_OK, 9, 0))  # the enrolment's
    session.receive(Packet(ReplyCode.ACK_OK, 9, 0))  # the finger's
    assert station.unacknowledged == 3, "the user, the finger and the punch: none read"
    session.receive(Packet(ReplyCode.ACK_OK, 9, 0))  # the punch's
    assert station.unacknowledged == 2


def test_the_command_line_takes_the_documented_options():
    args = build_parser().parse_args(["zk-terminal", "--port", "4371", "--comm-key", "99", "--users", "5", "--seed", "2", "--fp-version", "12"])
    assert (args.port, args.comm_key, args.users, args.seed, args.fp_version) == (4371, 99, 5, 2, 12)
    assert (args.transport, args.firmware, args.link_bps, args.pin_width) == ("tcp", "f19", None, None)
    args = build_parser().parse_args(["zk-terminal", "--transport", "udp", "--firmware", "mb560-vl", "--link-bps", "4096", "--pin-width", "9"])
    assert (args.transport, args.firmware, args.link_bps, args.pin_width) == ("udp", "mb560-vl", 4096, 9)


@pytest.mark.parametrize("name", sorted(FIRMWARES))
def test_every_firmware_variant_answers_what_it_names(name):
    firmware, faults = firmware_variant(name)
    device = ZkDevice(firmware=firmware)
    for fault, value in faults.items():
        setattr(device.faults, fault, value)
    device.enroll("1", "One")
    device.punch("1")
    assert device.options["~PIN2Width"] == str(firmware.pin_width)
    assert device.sizes().users == 1 + firmware.users_counted_extra
    assert len(device.attendance_event(RealtimeAttendance("1", datetime(2024, 1, 1)))) == firmware.event_size
    assert device.put_user(User(9, "1234567890123")) == (firmware.long_ids == "truncate" or firmware.pin_width >= 13)
    assert firmware_variant(name)[0] is not firmware, "each device gets its own copy"


def test_bad_command_line_values_are_one_line_errors(capsys):
    from simulator.cli import main

    for argv, message in (
        (["--comm-key", "1000000"], "--comm-key must be 0 to 999999"),
        (["--users", "20000"], "--users must be 0 to 10000"),
    ):
        assert main(["zk-terminal", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("simulator zk-terminal: " + message) and err.count("\n") == 1
    with socket.socket() as taken:  # a taken port is found once the reactor runs: a process of its own
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "simulator.cli", "zk-terminal", "--port", str(busy_port)],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.startswith(f"simulator zk-terminal: cannot listen on 127.0.0.1:{busy_port}") and done.stderr.count("\n") == 1
