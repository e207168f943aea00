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

What the device sends is read as tolerantly as pyzk reads it (a table's bytes over its count,
event data of unknown length skipped), and what it may cost is bounded: a request waits
``timeout_s`` for each sign of progress (any bytes) but ``request_limit_s`` in all, an operation
(a table of many chunks) ``operation_limit_s`` in all, and no transfer may announce more than
``max_transfer`` bytes (docs/zk.md section "Limits").
"""

import itertools
from collections import Counter, deque
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
    DeviceQuirk,
    Event,
    OverLimit,
    ProtocolViolation,
    RealtimeEvent,
    Reply,
    RequestFailed,
    TemplatesRead,
    TimedOut,
    UsersRead,
)
from protocol.zk.packet import MAX_DATA, Packet, decode_payload, encode_payload, encode_tcp
from protocol.zk.realtime import parse_attendance_events, parse_enrolled_finger
from protocol.zk.records import ParsedTable, Template, User, parse_attendance_table, parse_template_table, parse_user_table


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
TABLE_READS = 2  # reads of a table that disagrees with its count before its bytes are taken as they are
# The largest tables real devices hold: 1,000,000 punches of 49 bytes (49 MB), 100,000 users of
# 72 bytes (7.2 MB), 30,000 fingerprint templates of up to 2 KiB (61 MB). A transfer announced
# larger is refused before anything of it is held (docs/zk.md section "Limits").
MAX_TRANSFER = 64 * 1024 * 1024
# A silent device fails a request after timeout_s; one that drips bytes after this long in all.
# A 64 KiB chunk over a 4 KB/s link takes 16 s, so two minutes leaves links eight times slower.
REQUEST_LIMIT_S = 120.0
# A table is many requests, each within the limit above; a device that answers every chunk just
# in time would hold one read for hours (a 64 MB table is a thousand chunks). Ten minutes is 2.4 MB
# over a 4 KB/s link, 200,000 punches of 40 bytes on a link of 15 KB/s.
OPERATION_LIMIT_S = 600.0

_MORE = object()  # yielded by an operation: the answer goes on in another packet, same reply id


class _Failed(Exception):
    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.reason, self.code = reason, code


class _OverLimit(Exception):
    """A transfer announced over max_transfer: the conversation cannot go on."""


Steps = Generator[Packet | object, Packet, Event]


@dataclass
class _Operation:
    token: int
    steps: Steps
    name: str
    fatal: bool = False  # its failure ends the conversation (connecting)
    started_at: float = 0.0  # when it became the operation in flight
    command: int = 0  # of the request in flight
    reply_id: int | None = None


class ZkClient:
    def __init__(
        self,
        comm_key: int = 0,
        *,
        framing: Framing = Framing.TCP,
        timeout_s: float = 10.0,
        request_limit_s: float = REQUEST_LIMIT_S,
        operation_limit_s: float = OPERATION_LIMIT_S,
        chunk_size: int | None = None,
        max_transfer: int = MAX_TRANSFER,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
        ticks: int = 50,
    ):
        if not 0 < (chunk_size or 1) <= MAX_DATA:
            raise LocalProtocolError(f"chunk_size must be 1 to {MAX_DATA} bytes, not {chunk_size}")
        self.comm_key = comm_key
        self.framing = framing
        self.timeout_s = timeout_s
        self.request_limit_s = max(request_limit_s, timeout_s)
        self.operation_limit_s = max(operation_limit_s, self.request_limit_s)
        self.max_transfer = max_transfer
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
        self._request_sent_at = 0.0  # of the request in flight
        self._reply_id = 0
        self.quirks: Counter[str] = Counter()  # DeviceQuirk kinds, every time one was found
        self._tokens = itertools.count(1)
        self._last_tables: dict[TableRead, tuple[int, bytes, object]] = {}  # by table: (count, bytes, parsed) of its last read
        self._user_records: dict[bytes, User] = {}  # the users of the last user table parsed, by record

    # -- operations: each returns a token; its end is one event with that token --------------

    def connect(self, *, now: float) -> int:
        """CONNECT, then AUTH with the comm key if the device asks: ``Connected`` or
        ``RequestFailed`` (code ACK_UNAUTH: wrong comm key). Requests may be queued at once."""
        if self.state is not State.IDLE:
            raise LocalProtocolError(f"connect() on a client that is {self.state.value}")
        self.state = State.CONNECTING
        return self._start(self._connect, now, "connecting", fatal=True)

    def request(self, command: int, data: bytes = b"", *, now: float) -> int:
        """Any single command: ``Reply`` with the device's code and data, whatever the code."""
        return self._start(lambda token: self._plain(token, command, data), now, name_of(command))

    def read_buffer(self, table: TableRead, *, now: float) -> int:
        """A whole table through the buffer, in whichever form the device answers: ``BufferedData``."""
        return self._start(lambda token: self._read_buffer(token, table), now, f"reading table {name_of(table.command)}")

    def read_users(self, *, now: float, sizes: bodies.Sizes | None = None) -> int:
        """The counts, then the user table: ``UsersRead``. ``sizes``: counts the caller read just
        before (its last request), used instead of asking again."""
        return self._start(lambda token: self._read_users(token, sizes), now, "reading the users")

    def read_templates(self, *, now: float) -> int:
        """The counts, then every fingerprint template: ``TemplatesRead``."""
        return self._start(self._read_templates, now, "reading the templates")

    def read_attendance(self, *, now: float, sizes: bodies.Sizes | None = None) -> int:
        """The counts, then the attendance log: ``AttendanceRead``; ``sizes`` as for ``read_users``."""
        return self._start(lambda token: self._read_attendance(token, sizes), now, "reading the attendance log")

    def save_users(self, users: Iterable[User], templates: Iterable[Template] = (), *, record_size: int = 72, now: float) -> int:
        """Upsert users (by uid) and set their templates in one upload, then REFRESHDATA:
        ``Reply`` of SAVE_USERTEMPS. Raises ``BodyError`` at once for a record that does not fit."""
        upload = bodies.build_upload(list(users), list(templates), record_size)
        return self._start(lambda token: self._save(token, upload), now, "uploading users")

    def register_events(self, mask: EventFlag | int, *, now: float) -> int:
        """REG_EVENT: which real-time events the device should push (0 for none): ``Reply``."""
        return self.request(Command.REG_EVENT, bodies.u32(int(mask)), now=now)

    def disconnect(self, *, now: float) -> int:
        """EXIT: ``Reply``; the client is closed once it is answered."""
        return self._start(self._exit, now, "EXIT")

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
        if data and self._current is not None:
            self._progress(now)  # any bytes are progress: a slow link is not a silent device
        for item in items:
            if isinstance(item, PacketError):
                events.append(ProtocolViolation(str(item)))
            elif item.command == Command.REG_EVENT:
                events += self._realtime(item)
            elif self._current is None or item.reply_id != self._current.reply_id:
                # Matched by reply id, a stray answer cannot be taken for another: skipped and said,
                # as pyzk goes on past what it did not ask for.
                expected = "no answer" if self._current is None else f"reply id {self._current.reply_id}"
                events += self._quirk("stray packet", f"a packet nobody asked for skipped: {item} (waiting for {expected})")
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
        if now - op.started_at >= self.operation_limit_s:
            reason = f"the device took over {self.operation_limit_s:g} s {op.name} (at {name_of(op.command)}), however it trickled"
        elif now - self._request_sent_at >= self.request_limit_s:
            reason = f"the device took over {self.request_limit_s:g} s to answer {name_of(op.command)}, however it trickled"
        else:
            reason = f"the device did not answer {name_of(op.command)} within {self.timeout_s:g} s"
        return [TimedOut(op.token, op.command, reason), *self._fail_queue(f"not sent: {name_of(op.command)} timed out")]

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

    def _start(self, make_steps: Callable[[int], Steps], now: float, name: str, fatal: bool = False) -> int:
        if self.state in (State.IDLE, State.CLOSED, State.BROKEN):
            raise LocalProtocolError(f"cannot send requests on a client that is {self.state.value}")
        token = next(self._tokens)
        self._queue.append(_Operation(token, make_steps(token), name, fatal))
        if self._current is None:
            events = self._next(now)
            assert not events, "every operation sends a request first"
        return token

    def _next(self, now: float) -> list[Event]:
        """Start queued operations until one waits for an answer."""
        events: list[Event] = []
        while self._current is None and self._queue:
            self._current = self._queue.popleft()
            self._current.started_at = now
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
        except _OverLimit as exc:
            self.state = State.BROKEN
            return self._finish(OverLimit(op.token, op.command, str(exc)), now)
        if isinstance(wanted, DeviceQuirk):
            self._current = op
            return [wanted, *self._step(None, now)]
        if wanted is not _MORE:
            self._request_sent_at = now
            self._send(op, wanted)
        self._progress(now)
        return []

    def _progress(self, now: float) -> None:
        self._deadline = min(now + self.timeout_s, self._request_sent_at + self.request_limit_s,
                             self._current.started_at + self.operation_limit_s)

    def _finish(self, result: Event, now: float, failed: bool = False) -> list[Event]:
        self._current = None
        self._deadline = None
        if failed:
            self.state = State.CLOSED
        if self.state is State.CLOSED:
            return [result, *self._fail_queue("not sent: the conversation is closed")]
        if self.state is State.BROKEN:
            return [result, *self._fail_queue(f"not sent: {result.reason}")]
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
        if code == EventFlag.ATTLOG:
            attendance, skipped = parse_attendance_events(data)
            event = RealtimeEvent(code, data, attendance=tuple(attendance))
            return [event] if skipped is None else [event, *self._quirk("real-time event", skipped)]
        if code == EventFlag.ENROLLFINGER:
            try:
                return [RealtimeEvent(code, data, enrolled_finger=parse_enrolled_finger(data))]
            except BodyError as exc:
                return [RealtimeEvent(code, data), *self._quirk("real-time event", f"enrolled-finger event skipped: {exc}")]
        return [RealtimeEvent(code, data)]

    def _quirk(self, kind: str, detail: str) -> list[DeviceQuirk]:
        """Count one; say it only the first time of its kind in this conversation."""
        self.quirks[kind] += 1
        return [DeviceQuirk(kind, detail)] if self.quirks[kind] == 1 else []

    # -- operations as small state machines: yield a request (or _MORE), get its answer -------

    def _answer(self, command: int, data: bytes = b"") -> Generator[Packet | object, Packet, Packet]:
        """Send one request and return its answer; an answer that comes as PREPARE_DATA, DATA...,
        ACK_OK is gathered and returned as one DATA packet."""
        reply = yield Packet(command, data=data)
        if reply.command != Command.PREPARE_DATA:
            return reply
        size = bodies.parse_prepare_data(reply.data)
        if size > self.max_transfer:
            raise _OverLimit(f"the device announced {size} bytes answering {name_of(command)}, over the {self.max_transfer}-byte transfer limit")
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
        if size > self.max_transfer:
            raise _OverLimit(f"the device announced a {size}-byte table ({name_of(table.command)}), over the {self.max_transfer}-byte transfer limit")
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

    def _counted_table(self, count_of: Callable[[bodies.Sizes], int], table: TableRead, kind: str, parse,
                       known: bodies.Sizes | None = None):
        """The counts, then the table, parsed with its count as a hint (``parse(data, count)``).
        A table that disagrees with its count is read once more with fresh counts (someone at the
        keypad may have changed it between the two requests); if it still disagrees, its bytes
        are the truth and the difference a ``DeviceQuirk``, as some firmwares always count one
        more or send records of sizes they do not announce. Returns (sizes, ParsedTable or None
        when the count is 0: some firmwares answer an empty table oddly, so it is not asked for,
        as pyzk does). ``known``: the counts to take for the first read instead of asking (unless
        they count none: an operation begins with a request)."""
        for attempt in range(1, TABLE_READS + 1):
            if attempt == 1 and known is not None and count_of(known):
                sizes = known
            else:
                sizes = yield from self._sizes()
            count = count_of(sizes)
            if not count:
                return sizes, None
            data = yield from self._buffered(table)
            last = self._last_tables.get(table)
            if last is not None and last[:2] == (count, data):
                return sizes, last[2]  # the same bytes as the last read: polls mostly find nothing changed
            try:
                parsed = parse(data, count)
            except BodyError:  # bytes lost on the way
                if attempt == TABLE_READS:
                    raise
                continue
            if parsed.problems and attempt < TABLE_READS:
                continue
            for problem in parsed.problems:
                yield from self._emit(self._quirk(kind, problem))
            self._last_tables[table] = (count, data, parsed)
            return sizes, parsed

    def _emit(self, quirks: list[DeviceQuirk]) -> Generator[DeviceQuirk, None, None]:
        for quirk in quirks:
            yield quirk

    def _read_users(self, token: int, known: bodies.Sizes | None = None) -> Steps:
        sizes, parsed = yield from self._counted_table(lambda s: s.users, bodies.USERS, "user table", self._parse_users, known)
        parsed = parsed or ParsedTable((), 72)
        return UsersRead(token, parsed.records, parsed.record_size, sizes)

    def _parse_users(self, data: bytes, count: int) -> ParsedTable:
        """A user table, decoding only the records the last one parsed did not hold."""
        parsed = parse_user_table(data, count, self._user_records)
        self._user_records = {user.record: user for user in parsed.records}
        return parsed

    def _read_templates(self, token: int) -> Steps:
        sizes = yield from self._sizes()
        if not sizes.fingers:
            return TemplatesRead(token, (), sizes)
        parsed = parse_template_table((yield from self._buffered(bodies.TEMPLATES)))
        for problem in parsed.problems:
            yield from self._emit(self._quirk("template table", problem))
        return TemplatesRead(token, parsed.records, sizes)

    def _read_attendance(self, token: int, known: bodies.Sizes | None = None) -> Steps:
        sizes, parsed = yield from self._counted_table(lambda s: s.records, bodies.ATTENDANCE, "attendance table", parse_attendance_table, known)
        parsed = parsed or ParsedTable((), 40)
        return AttendanceRead(token, parsed.records, parsed.record_size, sizes)

    def _save(self, token: int, upload: bytes) -> Steps:
        yield from self._ok(Command.FREE_DATA)
        yield from self._ok(Command.PREPARE_DATA, bodies.prepare_data(len(upload)))
        for start in range(0, len(upload), self.upload_chunk_size):
            yield from self._ok(Command.DATA, upload[start : start + self.upload_chunk_size])
        saved = yield from self._ok(Command.SAVE_USERTEMPS, bodies.SAVE_USERTEMPS_PARAMS)
        yield from self._ok(Command.REFRESHDATA)
        return Reply(token, saved.command, saved.data)
