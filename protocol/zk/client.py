"""ZkClient: one conversation with one ZK device, with no I/O and no clock.

Calls go in, bytes and events come out, as in h11 and h2::

    client = ZkClient(comm_key=1234)
    client.connect(now=clock())                  # every call that may send takes the time
    token = client.read_users(now=clock())
    transport.writeSequence(client.data_to_send())
    ...
    for event in client.receive(data, now=clock()):   # UsersRead(token, users, ...) in time
        ...
    client.check_deadline(now=clock())          # when next_deadline() has passed: TimedOut

Operations are queued and run one at a time, as devices expect: each sends its requests, each
request carries the next reply id, and only a packet with that reply id answers it. Every
operation returns a token and ends in exactly one event with that token (protocol.zk.events).
Real-time events are acknowledged as they arrive. docs/zk.md section "The client" has the
conversation, every buffered-read form, and what each event means.
"""

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from enum import Enum

from protocol.zk import bodies
from protocol.zk.bodies import TableRead, parse_sizes
from protocol.zk.commands import Command, EventFlag, ReplyCode, name_of
from protocol.zk.commkey import make_commkey
from protocol.zk.decoder import PacketDecoder
from protocol.zk.errors import BodyError, LocalProtocolError, PacketError
from protocol.zk.events import (
    AttendanceRead,
    BufferedData,
    Connected,
    Event,
    ProtocolViolation,
    RealtimeEvent,
    Reply,
    RequestFailed,
    TemplatesRead,
    TimedOut,
    UsersRead,
)
from protocol.zk.packet import Packet, decode_payload, encode_payload, encode_tcp
from protocol.zk.realtime import parse_attendance_events, parse_enrolled_finger
from protocol.zk.records import Template, User, parse_attendance_table, parse_template_table, parse_user_table


class Framing(Enum):
    TCP = "tcp"  # a byte stream of enveloped packets
    UDP = "udp"  # one packet per datagram: pass each datagram to receive() alone


class State(Enum):
    IDLE = "idle"  # connect() not called yet
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"  # after EXIT, or the device refused the connection
    BROKEN = "broken"  # a request timed out: close the connection


# Reply ids run 0, 1, ... 65534, then 0 again, as pyzk counts them; CONNECT always carries 0.
REPLY_ID_MODULUS = 0xFFFF
# pyzk reads at most 0xFFC0 bytes per READ_BUFFER on TCP and 16 KiB on UDP; devices are known to
# answer those sizes, so they are the defaults.
CHUNK_SIZE = {Framing.TCP: 0xFFC0, Framing.UDP: 16 * 1024}
UPLOAD_CHUNK_SIZE = 1024  # DATA pieces of an upload, as pyzk sends them
TABLE_READS = 3  # reads of a table that disagrees with its count before it is the device's fault

_MORE = object()  # yielded by an operation: the answer goes on in another packet, same reply id


class _Failed(Exception):
    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.reason, self.code = reason, code


Steps = Generator[Packet | object, Packet, Event]


@dataclass
class _Operation:
    token: int
    steps: Steps
    fatal: bool = False  # its failure ends the conversation (connecting)
    command: int = 0  # of the request in flight
    reply_id: int | None = None


class ZkClient:
    def __init__(
        self,
        comm_key: int = 0,
        *,
        framing: Framing = Framing.TCP,
        timeout_s: float = 10.0,
        chunk_size: int | None = None,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
        ticks: int = 50,
    ):
        self.comm_key = comm_key
        self.framing = framing
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size or CHUNK_SIZE[framing]
        self.upload_chunk_size = upload_chunk_size
        self.ticks = ticks
        self.state = State.IDLE
        self.session_id = 0
        self._decoder = PacketDecoder() if framing is Framing.TCP else None
        self._outbox: list[bytes] = []
        self._queue: deque[_Operation] = deque()
        self._current: _Operation | None = None
        self._deadline: float | None = None
        self._reply_id = 0
        self._tokens = itertools.count(1)
        self._last_tables: dict[TableRead, tuple[int, bytes, object]] = {}  # by table: (count, bytes, parsed) of its last read

    # -- operations: each returns a token; its end is one event with that token --------------

    def connect(self, *, now: float) -> int:
        """CONNECT, then AUTH with the comm key if the device asks: ``Connected`` or
        ``RequestFailed`` (code ACK_UNAUTH: wrong comm key). Requests may be queued at once."""
        if self.state is not State.IDLE:
            raise LocalProtocolError(f"connect() on a client that is {self.state.value}")
        self.state = State.CONNECTING
        return self._start(self._connect, now, fatal=True)

    def request(self, command: int, data: bytes = b"", *, now: float) -> int:
        """Any single command: ``Reply`` with the device's code and data, whatever the code."""
        return self._start(lambda token: self._plain(token, command, data), now)

    def read_buffer(self, table: TableRead, *, now: float) -> int:
        """A whole table through the buffer, in whichever form the device answers: ``BufferedData``."""
        return self._start(lambda token: self._read_buffer(token, table), now)

    def read_users(self, *, now: float) -> int:
        """The counts, then the user table: ``UsersRead``."""
        return self._start(self._read_users, now)

    def read_templates(self, *, now: float) -> int:
        """The counts, then every fingerprint template: ``TemplatesRead``."""
        return self._start(self._read_templates, now)

    def read_attendance(self, *, now: float) -> int:
        """The counts, then the attendance log: ``AttendanceRead``."""
        return self._start(self._read_attendance, now)

    def save_users(self, users: Iterable[User], templates: Iterable[Template] = (), *, record_size: int = 72, now: float) -> int:
        """Upsert users (by uid) and set their templates in one upload, then REFRESHDATA:
        ``Reply`` of SAVE_USERTEMPS. Raises ``BodyError`` at once for a record that does not fit."""
        upload = bodies.build_upload(list(users), list(templates), record_size)
        return self._start(lambda token: self._save(token, upload), now)

    def register_events(self, mask: EventFlag | int, *, now: float) -> int:
        """REG_EVENT: which real-time events the device should push (0 for none): ``Reply``."""
        return self.request(Command.REG_EVENT, bodies.u32(int(mask)), now=now)

    def disconnect(self, *, now: float) -> int:
        """EXIT: ``Reply``; the client is closed once it is answered."""
        return self._start(self._exit, now)

    # -- bytes and time in, events and bytes out ----------------------------------------------

    def receive(self, data: bytes, *, now: float) -> list[Event]:
        """Bytes from the device (TCP: any chunk; UDP: one datagram); what they completed."""
        if self._decoder is not None:
            items = self._decoder.feed(data)
        else:
            try:
                items = [decode_payload(data)]
            except PacketError as exc:
                items = [exc]
        events: list[Event] = []
        for item in items:
            if isinstance(item, PacketError):
                events.append(ProtocolViolation(str(item)))
            elif item.command == Command.REG_EVENT:
                events += self._realtime(item)
            elif self._current is None or item.reply_id != self._current.reply_id:
                expected = "no answer" if self._current is None else f"reply id {self._current.reply_id}"
                events.append(ProtocolViolation(f"unexpected packet {item} (waiting for {expected})"))
            else:
                events += self._step(item, now)
        return events

    def check_deadline(self, *, now: float) -> list[Event]:
        """``TimedOut`` (and the queued operations failed) if the device is late; else nothing."""
        if self._current is None or self._deadline is None or now < self._deadline:
            return []
        op, self._current = self._current, None
        self._deadline = None
        self.state = State.BROKEN
        op.steps.close()
        return [TimedOut(op.token, op.command), *self._fail_queue(f"not sent: {name_of(op.command)} timed out")]

    def next_deadline(self) -> float | None:
        """When ``check_deadline`` must be called, if something is awaited."""
        return self._deadline

    def data_to_send(self) -> list[bytes]:
        """Packets to send, in order, and forget them: write each (TCP) or send each as a datagram (UDP)."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def busy(self) -> bool:
        return self._current is not None

    # -- the machinery ------------------------------------------------------------------------

    def _start(self, make_steps: Callable[[int], Steps], now: float, fatal: bool = False) -> int:
        if self.state in (State.IDLE, State.CLOSED, State.BROKEN):
            raise LocalProtocolError(f"cannot send requests on a client that is {self.state.value}")
        token = next(self._tokens)
        self._queue.append(_Operation(token, make_steps(token), fatal))
        if self._current is None:
            events = self._next(now)
            assert not events, "every operation sends a request first"
        return token

    def _next(self, now: float) -> list[Event]:
        """Start queued operations until one waits for an answer."""
        events: list[Event] = []
        while self._current is None and self._queue:
            self._current = self._queue.popleft()
            events += self._step(None, now)
        return events

    def _step(self, answer: Packet | None, now: float) -> list[Event]:
        """Give the current operation its answer; send what it asks next, or finish it."""
        op = self._current
        try:
            wanted = op.steps.send(answer)
        except StopIteration as stop:
            return self._finish(stop.value, now)
        except _Failed as exc:
            return self._finish(RequestFailed(op.token, exc.reason, exc.code), now, failed=op.fatal)
        except BodyError as exc:
            return self._finish(RequestFailed(op.token, f"malformed answer: {exc}"), now, failed=op.fatal)
        self._deadline = now + self.timeout_s
        if wanted is not _MORE:
            self._send(op, wanted)
        return []

    def _finish(self, result: Event, now: float, failed: bool = False) -> list[Event]:
        self._current = None
        self._deadline = None
        if failed:
            self.state = State.CLOSED
        if self.state is State.CLOSED:
            return [result, *self._fail_queue("not sent: the conversation is closed")]
        return [result, *self._next(now)]

    def _fail_queue(self, reason: str) -> list[Event]:
        failed = [RequestFailed(op.token, reason) for op in self._queue]
        for op in self._queue:
            op.steps.close()
        self._queue.clear()
        return failed

    def _send(self, op: _Operation, packet: Packet) -> None:
        if packet.command == Command.CONNECT:
            reply_id, session_id = 0, 0
        else:
            reply_id, session_id = (self._reply_id + 1) % REPLY_ID_MODULUS, self.session_id
        self._reply_id = reply_id
        op.command, op.reply_id = packet.command, reply_id
        self._write(Packet(packet.command, session_id, reply_id, packet.data))

    def _write(self, packet: Packet) -> None:
        self._outbox.append(encode_tcp(packet) if self.framing is Framing.TCP else encode_payload(packet))

    def _realtime(self, packet: Packet) -> list[Event]:
        # Acknowledge first: a device may hold back further events until it is.
        self._write(Packet(ReplyCode.ACK_OK, self.session_id, packet.reply_id))
        code, data = packet.session_id, packet.data
        try:
            if code == EventFlag.ATTLOG:
                return [RealtimeEvent(code, data, attendance=tuple(parse_attendance_events(data)))]
            if code == EventFlag.ENROLLFINGER:
                return [RealtimeEvent(code, data, enrolled_finger=parse_enrolled_finger(data))]
        except BodyError as exc:
            return [RealtimeEvent(code, data), ProtocolViolation(f"real-time event {code}: {exc}")]
        return [RealtimeEvent(code, data)]

    # -- operations as small state machines: yield a request (or _MORE), get its answer -------

    def _answer(self, command: int, data: bytes = b"") -> Generator[Packet | object, Packet, Packet]:
        """Send one request and return its answer; an answer that comes as PREPARE_DATA, DATA...,
        ACK_OK is gathered and returned as one DATA packet."""
        reply = yield Packet(command, data=data)
        if reply.command != Command.PREPARE_DATA:
            return reply
        size = bodies.parse_prepare_data(reply.data)
        parts, received = [], 0
        while True:
            packet = yield _MORE
            if packet.command == ReplyCode.ACK_OK:
                break
            if packet.command != Command.DATA:
                raise _Failed(f"{name_of(packet.command)} inside the {size}-byte transfer answering {name_of(command)}", packet.command)
            parts.append(packet.data)
            received += len(packet.data)
            if received > size:
                raise _Failed(f"{received} bytes sent in a transfer announced as {size} bytes")
        if received != size:
            raise _Failed(f"transfer announced {size} bytes and carried {received}")
        return Packet(Command.DATA, reply.session_id, reply.reply_id, b"".join(parts))

    def _ok(self, command: int, data: bytes = b"") -> Generator[Packet | object, Packet, Packet]:
        reply = yield from self._answer(command, data)
        if reply.command != ReplyCode.ACK_OK:
            raise _Failed(f"{name_of(command)} answered {name_of(reply.command)}", reply.command)
        return reply

    def _connect(self, token: int) -> Steps:
        reply = yield Packet(Command.CONNECT)
        self.session_id = reply.session_id
        if reply.command == ReplyCode.ACK_UNAUTH:
            reply = yield Packet(Command.AUTH, data=make_commkey(self.comm_key, self.session_id, self.ticks))
            if reply.command == ReplyCode.ACK_UNAUTH:
                raise _Failed("the device refused the comm key", reply.command)
        if reply.command != ReplyCode.ACK_OK:
            raise _Failed(f"CONNECT answered {name_of(reply.command)}", reply.command)
        self.state = State.CONNECTED
        return Connected(token, self.session_id)

    def _plain(self, token: int, command: int, data: bytes) -> Steps:
        reply = yield from self._answer(command, data)
        return Reply(token, reply.command, reply.data)

    def _exit(self, token: int) -> Steps:
        reply = yield from self._answer(Command.EXIT)
        self.state = State.CLOSED
        return Reply(token, reply.command, reply.data)

    def _buffered(self, table: TableRead) -> Generator[Packet | object, Packet, bytes]:
        """PREPARE_BUFFER; the table inline, or its size and then READ_BUFFER chunks and FREE_DATA."""
        reply = yield from self._answer(Command.PREPARE_BUFFER, bodies.buffer_request(table))
        if reply.command == Command.DATA:
            return reply.data
        if reply.command != ReplyCode.ACK_OK:
            raise _Failed(f"PREPARE_BUFFER answered {name_of(reply.command)}", reply.command)
        size = bodies.parse_buffer_info(reply.data)
        parts, start = [], 0
        while start < size:
            wanted = min(self.chunk_size, size - start)
            chunk = yield from self._answer(Command.READ_BUFFER, bodies.chunk_request(start, wanted))
            if chunk.command != Command.DATA:
                raise _Failed(f"READ_BUFFER of {wanted} bytes at {start} answered {name_of(chunk.command)}", chunk.command)
            if len(chunk.data) != wanted:
                raise _Failed(f"READ_BUFFER asked {wanted} bytes at {start} and got {len(chunk.data)}")
            parts.append(chunk.data)
            start += wanted
        yield from self._ok(Command.FREE_DATA)
        return b"".join(parts)

    def _read_buffer(self, token: int, table: TableRead) -> Steps:
        return BufferedData(token, (yield from self._buffered(table)))

    def _sizes(self) -> Generator[Packet | object, Packet, bodies.Sizes]:
        return parse_sizes((yield from self._ok(Command.GET_FREE_SIZES)).data)

    def _counted_table(self, count_of: Callable[[bodies.Sizes], int], table: TableRead, parse):
        """The counts, then the table, parsed against its count (``parse(data, count)``). A table
        that disagrees with its count is read again with fresh counts, at most ``TABLE_READS``
        times in all: someone at the keypad may have changed it between the two requests. Returns
        (sizes, parsed), or (sizes, None) when the count is 0 (some firmwares answer an empty
        table oddly, so it is not asked for, as pyzk does)."""
        for attempt in range(1, TABLE_READS + 1):
            sizes = yield from self._sizes()
            if not count_of(sizes):
                return sizes, None
            data = yield from self._buffered(table)
            count = count_of(sizes)
            last = self._last_tables.get(table)
            if last is not None and last[:2] == (count, data):
                return sizes, last[2]  # the same bytes as the last read: polls mostly find nothing changed
            try:
                parsed = parse(data, count)
            except BodyError:
                if attempt == TABLE_READS:
                    raise
                continue
            self._last_tables[table] = (count, data, parsed)
            return sizes, parsed

    def _read_users(self, token: int) -> Steps:
        sizes, parsed = yield from self._counted_table(lambda s: s.users, bodies.USERS, parse_user_table)
        users, size = parsed or ((), 72)
        return UsersRead(token, tuple(users), size, sizes)

    def _read_templates(self, token: int) -> Steps:
        sizes = yield from self._sizes()
        if not sizes.fingers:
            return TemplatesRead(token, (), sizes)
        return TemplatesRead(token, tuple(parse_template_table((yield from self._buffered(bodies.TEMPLATES)))), sizes)

    def _read_attendance(self, token: int) -> Steps:
        sizes, parsed = yield from self._counted_table(lambda s: s.records, bodies.ATTENDANCE, parse_attendance_table)
        records, size = parsed or ((), 40)
        return AttendanceRead(token, tuple(records), size, sizes)

    def _save(self, token: int, upload: bytes) -> Steps:
        yield from self._ok(Command.FREE_DATA)
        yield from self._ok(Command.PREPARE_DATA, bodies.prepare_data(len(upload)))
        for start in range(0, len(upload), self.upload_chunk_size):
            yield from self._ok(Command.DATA, upload[start : start + self.upload_chunk_size])
        saved = yield from self._ok(Command.SAVE_USERTEMPS, bodies.SAVE_USERTEMPS_PARAMS)
        yield from self._ok(Command.REFRESHDATA)
        return Reply(token, saved.command, saved.data)
