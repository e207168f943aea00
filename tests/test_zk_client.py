"""ZkClient without sockets or clocks: a scripted device answers what the client sends, in every
form the protocol allows, and the client must turn it into exactly the documented events."""

from datetime import datetime

import pytest

from protocol.zk import bodies, realtime
from protocol.zk.client import MAX_TRANSFER, TABLE_READS, Framing, State, ZkClient
from protocol.zk.commands import Command, EventFlag, ReplyCode as Code
from protocol.zk.commkey import make_commkey
from protocol.zk.decoder import PacketDecoder
from protocol.zk.errors import BodyError, LocalProtocolError
from protocol.zk.events import (
    AttendanceRead,
    DeviceQuirk,
    OverLimit,
    BufferedData,
    Connected,
    ProtocolViolation,
    RealtimeEvent,
    Reply,
    RequestFailed,
    TimedOut,
    UsersRead,
)
from protocol.zk.packet import Packet, decode_payload, encode_payload, encode_tcp
from protocol.zk.records import (
    AttendanceRecord,
    Template,
    User,
    build_attendance_table,
    build_template_table,
    build_user_table,
    encode_attendance,
    parse_attendance_table,
    parse_template_table,
)

SESSION = 0x4D2


class ScriptedDevice:
    """Decodes what the client sends; answers as each test says."""

    def __init__(self, client: ZkClient):
        self.client = client
        self.decoder = PacketDecoder()
        self.now = 0.0

    def sent(self) -> list[Packet]:
        out = []
        for data in self.client.data_to_send():
            out += [decode_payload(data)] if self.client.framing is Framing.UDP else self.decoder.feed(data)
        return out

    def one(self, command: int | None = None) -> Packet:
        [packet] = self.sent()
        if command is not None:
            assert packet.command == command, f"sent {packet}, expected {Command(command).name}"
        return packet

    def reply(self, to: Packet, code: int, data: bytes = b"", session_id: int = SESSION, byte_by_byte: bool = False) -> list:
        return self.push(Packet(code, session_id, to.reply_id, data), byte_by_byte=byte_by_byte)

    def push(self, *packets: Packet, byte_by_byte: bool = False) -> list:
        if self.client.framing is Framing.UDP:
            return [e for p in packets for e in self.client.receive(encode_payload(p), now=self.now)]
        stream = b"".join(encode_tcp(p) for p in packets)
        if not byte_by_byte:
            return self.client.receive(stream, now=self.now)
        return [e for i in range(len(stream)) for e in self.client.receive(stream[i : i + 1], now=self.now)]


def connected(comm_key: int = 0, **options) -> tuple[ZkClient, ScriptedDevice]:
    client = ZkClient(comm_key, **options)
    device = ScriptedDevice(client)
    token = client.connect(now=0)
    assert device.reply(device.one(Command.CONNECT), Code.ACK_OK) == [Connected(token, SESSION)]
    return client, device


def test_connect_adopts_the_session_id_and_numbers_requests_from_one():
    client, device = connected()
    assert client.state is State.CONNECTED
    token = client.request(Command.GET_VERSION, now=0)
    request = device.one(Command.GET_VERSION)
    assert (request.session_id, request.reply_id) == (SESSION, 1)
    assert device.reply(request, Code.ACK_OK, b"Ver 6.60 Apr 28 2015\0") == [Reply(token, Code.ACK_OK, b"Ver 6.60 Apr 28 2015\0")]


def test_a_comm_key_is_proved_when_the_device_asks():
    client = ZkClient(123456)
    device = ScriptedDevice(client)
    token = client.connect(now=0)
    connect = device.one(Command.CONNECT)
    assert (connect.session_id, connect.reply_id) == (0, 0)
    assert device.reply(connect, Code.ACK_UNAUTH) == []
    auth = device.one(Command.AUTH)
    assert auth.data == make_commkey(123456, SESSION, 50) and auth.session_id == SESSION
    assert device.reply(auth, Code.ACK_OK) == [Connected(token, SESSION)]


def test_a_refused_comm_key_closes_the_client_and_fails_what_was_queued():
    client = ZkClient(1)
    device = ScriptedDevice(client)
    token = client.connect(now=0)
    queued = client.read_users(now=0)
    device.reply(device.one(Command.CONNECT), Code.ACK_UNAUTH)
    events = device.reply(device.one(Command.AUTH), Code.ACK_UNAUTH)
    assert events == [RequestFailed(token, "the device refused the comm key", Code.ACK_UNAUTH), RequestFailed(queued, "not sent: the conversation is closed")]
    assert client.state is State.CLOSED and device.sent() == []
    with pytest.raises(LocalProtocolError):
        client.request(Command.GET_VERSION, now=0)


def test_requests_before_connect_are_a_local_error():
    with pytest.raises(LocalProtocolError):
        ZkClient().request(Command.GET_VERSION, now=0)


def test_one_request_at_a_time_each_answered_by_its_reply_id_only():
    client, device = connected()
    first = client.request(Command.GET_TIME, now=0)
    second = client.request(Command.GET_VERSION, now=0)
    request = device.one(Command.GET_TIME)
    assert device.sent() == [], "the second waits for the first's answer"
    for _ in range(2):
        stray = device.push(Packet(Code.ACK_OK, SESSION, request.reply_id + 5))
    assert stray == [] and client.quirks["stray packet"] == 2, "skipped, said the first time, counted each"
    assert device.reply(request, Code.ACK_OK, bodies.u32(1)) == [Reply(first, Code.ACK_OK, bodies.u32(1))]
    following = device.one(Command.GET_VERSION)
    assert following.reply_id == request.reply_id + 1
    assert device.reply(following, Code.ACK_ERROR) == [Reply(second, Code.ACK_ERROR)]


TABLE = build_user_table([User(n, str(1000 + n), f"Person {n}") for n in range(1, 8)])


def test_a_table_answered_inline():
    client, device = connected()
    token = client.read_buffer(bodies.USERS, now=0)
    request = device.one(Command.PREPARE_BUFFER)
    assert bodies.parse_buffer_request(request.data) == bodies.USERS
    assert device.reply(request, Command.DATA, TABLE) == [BufferedData(token, TABLE)]
    assert device.sent() == [], "an inline answer needs no FREE_DATA"


def read_in_chunks(client: ZkClient, device: ScriptedDevice, answer_chunk) -> list:
    token = client.read_buffer(bodies.USERS, now=0)
    device.reply(device.one(Command.PREPARE_BUFFER), Code.ACK_OK, bodies.buffer_info(len(TABLE)))
    asked = []
    while True:
        request = device.one()
        if request.command == Command.FREE_DATA:
            events = device.reply(request, Code.ACK_OK)
            break
        assert request.command == Command.READ_BUFFER
        start, size = bodies.parse_chunk_request(request.data)
        asked.append((start, size))
        assert answer_chunk(request, TABLE[start : start + size]) == []
    assert asked == [(0, 200), (200, 200), (400, 108)]
    return events, token


def test_a_table_in_chunks_each_answered_inline():
    client, device = connected(chunk_size=200)
    events, token = read_in_chunks(client, device, lambda request, chunk: device.reply(request, Command.DATA, chunk))
    assert events == [BufferedData(token, TABLE)]


def test_a_table_in_chunks_each_answered_through_prepare_data_in_pieces_byte_by_byte():
    client, device = connected(chunk_size=200)

    def through_the_buffer(request, chunk):
        return device.push(
            Packet(Command.PREPARE_DATA, SESSION, request.reply_id, bodies.prepare_data(len(chunk), device=True)),
            *[Packet(Command.DATA, SESSION, request.reply_id, chunk[i : i + 64]) for i in range(0, len(chunk), 64)],
            Packet(Code.ACK_OK, SESSION, request.reply_id),
            byte_by_byte=True,
        )

    events, token = read_in_chunks(client, device, through_the_buffer)
    assert events == [BufferedData(token, TABLE)]


def test_a_short_chunk_fails_the_read_and_the_next_operation_goes_on():
    client, device = connected(chunk_size=200)
    token = client.read_buffer(bodies.USERS, now=0)
    after = client.request(Command.GET_TIME, now=0)
    device.reply(device.one(Command.PREPARE_BUFFER), Code.ACK_OK, bodies.buffer_info(len(TABLE)))
    events = device.reply(device.one(Command.READ_BUFFER), Command.DATA, TABLE[:150])
    assert events == [RequestFailed(token, "READ_BUFFER asked 200 bytes at 0 and got 150")]
    assert device.reply(device.one(Command.GET_TIME), Code.ACK_OK) == [Reply(after, Code.ACK_OK)]


def test_a_transfer_carrying_more_than_it_announced_fails():
    client, device = connected()
    token = client.request(Command.GET_USERTEMP, bodies.uid_finger(1, 0), now=0)
    request = device.one(Command.GET_USERTEMP)
    events = device.push(
        Packet(Command.PREPARE_DATA, SESSION, request.reply_id, bodies.prepare_data(4, device=True)),
        Packet(Command.DATA, SESSION, request.reply_id, b"12345"),
    )
    assert events == [RequestFailed(token, "5 bytes sent in a transfer announced as 4 bytes")]


def test_read_users_asks_the_counts_first_and_skips_an_empty_table():
    client, device = connected()
    token = client.read_users(now=0)
    events = device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(bodies.Sizes()))
    assert events == [UsersRead(token, (), 72, bodies.Sizes())]
    token = client.read_users(now=0)
    sizes = bodies.Sizes(users=7)
    device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(sizes))
    [event] = device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, TABLE)
    assert event == UsersRead(token, tuple(User(n, str(1000 + n), f"Person {n}") for n in range(1, 8)), 72, sizes)


def test_read_users_takes_counts_the_caller_just_read_but_asks_when_they_count_nobody():
    client, device = connected()
    sizes = bodies.Sizes(users=7)
    token = client.read_users(now=0, sizes=sizes)
    [event] = device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, TABLE)
    assert event == UsersRead(token, tuple(User(n, str(1000 + n), f"Person {n}") for n in range(1, 8)), 72, sizes)
    client.read_users(now=0, sizes=bodies.Sizes())  # an operation begins with a request: the counts
    device.one(Command.GET_FREE_SIZES)


def test_read_attendance_finds_the_record_size_from_the_count():
    client, device = connected()
    punches = [AttendanceRecord(None, "1001", datetime(2024, 5, 1, 9, 0, 0)), AttendanceRecord(None, "1002", datetime(2024, 5, 1, 9, 1, 0), 2, 1)]
    token = client.read_attendance(now=0)
    sizes = bodies.Sizes(records=2)
    device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(sizes))
    events = device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, build_attendance_table(punches, 16))
    assert events == [AttendanceRead(token, tuple(punches), 16, sizes)]


PUNCHES = [AttendanceRecord(n, str(1000 + n), datetime(2024, 5, 1, 9, n, 0), 1, n % 2) for n in range(1, 8)]


@pytest.mark.parametrize("count", [7, 8, 0], ids=["counted", "one-more-counted", "none-counted"])
def test_49_byte_attendance_records_are_read_by_their_size(count):
    """MB560-VL on 2022 firmware, MB40-VL, SpeedFace-V5L (pyzk #174, PRs #166/#247)."""
    table = build_attendance_table(PUNCHES, 49)
    parsed = parse_attendance_table(table, count)
    assert parsed.records == tuple(PUNCHES) and parsed.record_size == 49
    assert bool(parsed.problems) == (count != 7)


def test_what_cannot_be_read_of_a_table_is_skipped_and_said():
    bad_day = bytearray(encode_attendance(PUNCHES[0], 40))
    bad_day[27:31] = (776678400).to_bytes(4, "little")  # 31 February 2024, 08:00: no day at all
    body = encode_attendance(PUNCHES[1], 40) + bytes(bad_day) + encode_attendance(PUNCHES[2], 40) + b"\x01\x02"
    parsed = parse_attendance_table(len(body).to_bytes(4, "little") + body, 3)
    assert parsed.records == (PUNCHES[1], PUNCHES[2]) and parsed.record_size == 40
    assert parsed.problems == ("attendance table of 122 bytes does not hold the 3 records the device counts: read as 3 records of 40 bytes",
                               "2 bytes after the last whole 40-byte attendance record skipped",
                               "1 attendance records skipped (first: record 1: ZK time 776678400 is not a date: day is out of range for month)")
    with pytest.raises(BodyError, match="attendance table says 32 bytes of records but holds 29"):
        parse_attendance_table(build_attendance_table(PUNCHES[:2], 16)[:-3], 2)  # lost on the way: which punch is missing?
    templates = [Template(1, 0, bytes(300)), Template(2, 1, bytes(200))]
    table = build_template_table(templates)
    cut = (len(table) - 4 - 50).to_bytes(4, "little") + table[4:-50]
    parsed = parse_template_table(cut)
    assert parsed.records == (templates[0],) and len(parsed.problems) == 1 and "announces 206 bytes, which do not fit" in parsed.problems[0]


def test_read_attendance_takes_49_byte_records_with_one_more_counted():
    client, device = connected()
    token = client.read_attendance(now=0)
    events = []
    for _ in range(TABLE_READS):
        device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(bodies.Sizes(records=8)))
        events += device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, build_attendance_table(PUNCHES, 49))
    [quirk, read] = events
    assert read == AttendanceRead(token, tuple(PUNCHES), 49, bodies.Sizes(records=8)) and quirk.kind == "attendance table"


def test_a_table_that_keeps_disagreeing_with_its_count_is_read_by_its_bytes_and_said_once():
    client, device = connected()
    users = tuple(User(n, str(1000 + n), f"Person {n}") for n in range(1, 8))
    said = []
    for reads in (TABLE_READS, 1):  # the next poll finds the same bytes and count: not read again
        token = client.read_users(now=0)
        events = []
        for _ in range(reads):
            device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(bodies.Sizes(users=8)))
            events += device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, TABLE)
        [*quirks, read] = events
        assert read == UsersRead(token, users, 72, bodies.Sizes(users=8)), "pyzk #88: one more counted than held"
        said.append([q.detail for q in quirks])
    assert said == [["user table of 504 bytes does not hold the 8 records the device counts: read as 7 records of 72 bytes"], []]
    assert client.quirks["user table"] == 1 and client.state is State.CONNECTED


def test_a_table_changed_between_its_count_and_its_read_is_read_again():
    client, device = connected()
    token = client.read_users(now=0)
    device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(bodies.Sizes(users=6)))
    assert device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, TABLE) == [], "7 users, 6 counted: someone enrolled"
    sizes = bodies.Sizes(users=7)
    device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(sizes))
    [event] = device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, TABLE)
    assert event == UsersRead(token, tuple(User(n, str(1000 + n), f"Person {n}") for n in range(1, 8)), 72, sizes)


def test_save_users_uploads_in_chunks_then_saves_and_refreshes():
    client, device = connected(upload_chunk_size=100)
    users = [User(1, "1001", "Ana"), User(2, "1002", "Bo")]
    fingers = [Template(1, 3, bytes(range(200)))]
    upload = bodies.build_upload(users, fingers)
    token = client.save_users(users, fingers, now=0)
    device.reply(device.one(Command.FREE_DATA), Code.ACK_OK)
    prepare = device.one(Command.PREPARE_DATA)
    assert bodies.parse_prepare_data(prepare.data) == len(upload) and len(prepare.data) == 4
    device.reply(prepare, Code.ACK_OK)
    received = b""
    while True:
        request = device.one()
        if request.command != Command.DATA:
            break
        assert len(request.data) <= 100
        received += request.data
        device.reply(request, Code.ACK_OK)
    assert received == upload and bodies.parse_upload(received) == (users, fingers)
    assert request.command == Command.SAVE_USERTEMPS and request.data == bodies.SAVE_USERTEMPS_PARAMS
    device.reply(request, Code.ACK_OK)
    assert device.reply(device.one(Command.REFRESHDATA), Code.ACK_OK) == [Reply(token, Code.ACK_OK)]


def test_a_record_that_does_not_fit_is_refused_before_anything_is_sent():
    client, device = connected()
    with pytest.raises(BodyError, match="over the 24-byte field"):
        client.save_users([User(1, "x" * 25)], now=0)
    assert device.sent() == [] and not client.busy


def test_real_time_events_are_acknowledged_and_read_while_a_request_waits():
    client, device = connected()
    token = client.request(Command.GET_TIME, now=0)
    request = device.one(Command.GET_TIME)
    punch = realtime.RealtimeAttendance("1042", datetime(2024, 5, 1, 9, 0, 0))
    data = realtime.encode_attendance_event(punch, 36)
    events = device.push(realtime.event_packet(EventFlag.ATTLOG, data))
    assert events == [RealtimeEvent(EventFlag.ATTLOG, data, attendance=(punch,))]
    assert device.one() == Packet(Code.ACK_OK, SESSION, 0)
    assert device.reply(request, Code.ACK_OK) == [Reply(token, Code.ACK_OK)]


def test_event_data_of_unknown_length_is_delivered_acknowledged_and_skipped_said_once():
    client, device = connected()
    [event, quirk] = device.push(realtime.event_packet(EventFlag.ATTLOG, b"\x01\x02\x03"))
    assert event == RealtimeEvent(EventFlag.ATTLOG, b"\x01\x02\x03") and isinstance(quirk, DeviceQuirk)
    assert quirk.kind == "real-time event" and "3 bytes of attendance event data at 0 have no known form" in quirk.detail
    assert device.one() == Packet(Code.ACK_OK, SESSION, 0), "acknowledged all the same: the device must not wait for it"
    assert device.push(realtime.event_packet(EventFlag.ATTLOG, bytes(40))) == [RealtimeEvent(EventFlag.ATTLOG, bytes(40))]
    assert client.quirks["real-time event"] == 2 and client.state is State.CONNECTED
    enrol = realtime.encode_enrolled_finger(realtime.EnrolledFinger(0, 500, "1042", 6))
    [event] = device.push(realtime.event_packet(EventFlag.ENROLLFINGER, enrol))
    assert event.enrolled_finger == realtime.EnrolledFinger(0, 500, "1042", 6)


def test_a_run_of_52_byte_events_then_one_of_a_known_length_is_read_whole():
    client, device = connected()
    punches = [realtime.RealtimeAttendance(str(1040 + n), datetime(2024, 5, 1, 9, n, 0)) for n in range(3)]
    data = realtime.encode_attendance_event(punches[0], 52) + realtime.encode_attendance_event(punches[1], 52)
    data += realtime.encode_attendance_event(punches[2], 36)
    assert device.push(realtime.event_packet(EventFlag.ATTLOG, data)) == [RealtimeEvent(EventFlag.ATTLOG, data, attendance=tuple(punches))]


def test_a_late_answer_times_out_fails_the_queue_and_breaks_the_conversation():
    client, device = connected(timeout_s=5)
    token = client.request(Command.GET_TIME, now=10)
    queued = client.request(Command.GET_VERSION, now=10)
    device.one(Command.GET_TIME)
    assert client.next_deadline() == 15
    assert client.check_deadline(now=14.9) == []
    assert client.check_deadline(now=15) == [TimedOut(token, Command.GET_TIME), RequestFailed(queued, "not sent: GET_TIME timed out")]
    assert client.state is State.BROKEN and client.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        client.request(Command.GET_TIME, now=16)


def test_each_packet_of_a_transfer_moves_the_deadline():
    client, device = connected(timeout_s=5)
    client.request(Command.GET_USERTEMP, bodies.uid_finger(1, 0), now=0)
    request = device.one()
    device.now = 4
    device.push(Packet(Command.PREPARE_DATA, SESSION, request.reply_id, bodies.prepare_data(10, device=True)))
    assert client.next_deadline() == 9


def test_bytes_arriving_extend_the_deadline_until_the_request_limit():
    client, device = connected(timeout_s=5, request_limit_s=30)
    token = client.request(Command.GET_USERTEMP, bodies.uid_finger(1, 0), now=0)
    request = device.one()
    stream = encode_tcp(Packet(Command.PREPARE_DATA, SESSION, request.reply_id, bodies.prepare_data(1000, device=True)))
    stream += encode_tcp(Packet(Command.DATA, SESSION, request.reply_id, bytes(1000)))
    for n, byte in enumerate(stream[:7]):  # one byte every 4 s: never silent for 5 s, up to 28 s
        device.now = 4.0 * (n + 1)
        assert client.check_deadline(now=device.now) == [] and client.receive(bytes([byte]), now=device.now) == []
        assert client.next_deadline() == min(device.now + 5, 30)
    [timed_out, *_] = client.check_deadline(now=30)
    assert timed_out == TimedOut(token, Command.GET_USERTEMP)
    assert timed_out.reason == "the device took over 30 s to answer GET_USERTEMP, however it trickled"
    assert client.state is State.BROKEN


def test_a_table_answered_chunk_by_chunk_just_in_time_ends_at_the_operation_limit():
    client, device = connected(timeout_s=5, request_limit_s=30, operation_limit_s=100, chunk_size=100)
    token = client.read_buffer(bodies.USERS, now=0)
    queued = client.request(Command.GET_TIME, now=0)
    device.reply(device.one(Command.PREPARE_BUFFER), Code.ACK_OK, bodies.buffer_info(10_000))
    for n in range(1, 25):  # each chunk within every per-request bound: 4 s, with a byte at 2 s
        chunk = device.one(Command.READ_BUFFER)
        device.now = 4.0 * n - 2
        assert client.check_deadline(now=device.now) == [] and client.receive(b"P", now=device.now) == []
        device.now = 4.0 * n
        assert client.check_deadline(now=device.now) == []
        stream = encode_tcp(Packet(Command.DATA, SESSION, chunk.reply_id, bytes(100)))
        assert client.receive(stream[1:], now=device.now) == [], "a chunk, answered just in time"
    device.one(Command.READ_BUFFER)
    assert client.next_deadline() == 100
    [timed_out, failed] = client.check_deadline(now=100)
    assert timed_out == TimedOut(token, Command.READ_BUFFER) and failed.token == queued
    assert timed_out.reason == "the device took over 100 s reading table USERTEMP_RRQ (at READ_BUFFER), however it trickled"
    assert client.state is State.BROKEN


def test_a_silent_device_times_out_with_its_own_reason():
    client, device = connected(timeout_s=5)
    client.request(Command.GET_TIME, now=0)
    device.one()
    [timed_out] = client.check_deadline(now=5)
    assert timed_out.reason == "the device did not answer GET_TIME within 5 s"


@pytest.mark.parametrize("announced", [MAX_TRANSFER + 1, 2**31, 2**32 - 1])
def test_a_table_announced_over_the_transfer_limit_is_refused_before_any_of_it_is_read(announced):
    client, device = connected()
    token = client.read_buffer(bodies.USERS, now=0)
    queued = client.request(Command.GET_TIME, now=0)
    [over, failed] = device.reply(device.one(Command.PREPARE_BUFFER), Code.ACK_OK, bodies.buffer_info(announced))
    assert over == OverLimit(token, Command.PREPARE_BUFFER, f"the device announced a {announced}-byte table (USERTEMP_RRQ), "
                                                            f"over the {MAX_TRANSFER}-byte transfer limit")
    assert failed.token == queued and client.state is State.BROKEN and device.sent() == [], "no READ_BUFFER asked"


def test_a_prepare_data_over_the_transfer_limit_is_refused():
    client, device = connected(max_transfer=1000)
    token = client.request(Command.GET_USERTEMP, bodies.uid_finger(1, 0), now=0)
    request = device.one()
    [over] = device.push(Packet(Command.PREPARE_DATA, SESSION, request.reply_id, bodies.prepare_data(2**31, device=True)))
    assert isinstance(over, OverLimit) and over.token == token and "over the 1000-byte transfer limit" in over.reason


def test_a_chunk_size_the_protocol_cannot_carry_is_a_local_error():
    with pytest.raises(LocalProtocolError, match="chunk_size must be 1 to"):
        ZkClient(chunk_size=2**21)


def test_malformed_answers_fail_the_operation_with_the_reason():
    client, device = connected()
    token = client.read_users(now=0)
    [event] = device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, b"\x00" * 10)
    assert isinstance(event, RequestFailed) and event.token == token
    assert event.reason.startswith("malformed answer: free sizes answer of 10 bytes")


def test_garbage_and_bad_checksums_are_violations_not_answers():
    client, device = connected()
    client.request(Command.GET_TIME, now=0)
    request = device.one()
    bad = bytearray(encode_tcp(Packet(Code.ACK_OK, SESSION, request.reply_id)))
    bad[10] ^= 0xFF
    events = client.receive(b"noise" + bytes(bad), now=0)
    assert events and all(isinstance(e, ProtocolViolation) for e in events)
    assert any("checksum" in e.reason for e in events)
    assert client.busy


def test_udp_framing_takes_one_datagram_at_a_time():
    client, device = connected(framing=Framing.UDP)
    token = client.request(Command.GET_VERSION, now=0)
    request = device.one(Command.GET_VERSION)
    assert client.receive(b"\x01\x02", now=0)[0].reason.startswith("at byte 0: payload of 2 bytes")
    assert device.reply(request, Code.ACK_OK, b"Ver\0") == [Reply(token, Code.ACK_OK, b"Ver\0")]
    assert client.chunk_size == 16 * 1024


def test_exit_closes_the_conversation():
    client, device = connected()
    token = client.disconnect(now=0)
    assert device.reply(device.one(Command.EXIT), Code.ACK_OK) == [Reply(token, Code.ACK_OK)]
    assert client.state is State.CLOSED


def test_a_table_read_again_unchanged_is_not_decoded_again():
    client, device = connected()
    sizes = bodies.Sizes(users=7)
    reads = []
    for _ in range(2):
        token = client.read_users(now=0)
        device.reply(device.one(Command.GET_FREE_SIZES), Code.ACK_OK, bodies.encode_sizes(sizes))
        [event] = device.reply(device.one(Command.PREPARE_BUFFER), Command.DATA, TABLE)
        assert event.token == token
        reads.append(event.users)
    assert reads[0] == reads[1] and all(a is b for a, b in zip(*reads)), "the same objects: nothing decoded twice"
