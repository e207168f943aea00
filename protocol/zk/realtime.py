"""Real-time events: what a device pushes after REG_EVENT, unasked.

An event is a packet with command REG_EVENT, the event code (an ``EventFlag``) in the session id
field and reply id 0; the client answers each with ACK_OK (docs/zk.md section "Real-time
events"). Attendance events are documented and come in several lengths by firmware; enrolment
events are undocumented or missing on many firmwares, so treat any event only as a reason to
poll now.
"""

from dataclasses import dataclass
from datetime import datetime

from construct import Bytes, Int8ul, Int16ul, Int32ul, Struct

from protocol.compiling import CompilableAdapter, LengthChecked
from protocol.zk.commands import Command, EventFlag
from protocol.zk.errors import BodyError
from protocol.zk.packet import Packet
from protocol.zk.records import ENCODING, Text


class EventTime(CompilableAdapter):
    """Six bytes: year - 2000, month, day, hour, minute, second."""

    def __init__(self):
        super().__init__(LengthChecked(Bytes(6)))

    def _decode(self, raw, context, path):
        try:
            return datetime(2000 + raw[0], raw[1], raw[2], raw[3], raw[4], raw[5])
        except ValueError as exc:
            raise BodyError(f"event time {raw.hex()} is not a date: {exc}") from None

    def _encode(self, moment, context, path):
        if not 2000 <= moment.year <= 2255:
            raise BodyError(f"event time holds years 2000 to 2255, not {moment.year}")
        return bytes((moment.year - 2000, moment.month, moment.day, moment.hour, moment.minute, moment.second))


@dataclass(frozen=True, slots=True)
class RealtimeAttendance:
    """A punch as it happens. ``user_id`` is text, or the number old firmwares send, as text."""

    user_id: str
    timestamp: datetime
    verify_type: int = 1
    punch: int = 0


def _attendance_wire(user_id, tail: int):
    fields = ["user_id" / user_id, "verify_type" / Int8ul, "punch" / Int8ul, "timestamp" / EventTime()]
    if tail:
        fields.append("tail" / LengthChecked(Bytes(tail)))
    return Struct(*fields).compile()


# By data length: (user id field, bytes after the time). pyzk 0.9 reads 12, 32, 36 and runs of 52;
# newer pyzk adds 10, 14 and 37.
_LAYOUTS = {10: (Int16ul, 0), 12: (Int32ul, 0), 14: (Int16ul, 4), 32: (Text(24), 0), 36: (Text(24), 4), 37: (Text(24), 5), 52: (Text(24), 20)}
ATTENDANCE_FORMS = {size: _attendance_wire(user_id, tail) for size, (user_id, tail) in _LAYOUTS.items()}


def encode_attendance_event(event: RealtimeAttendance, size: int = 32) -> bytes:
    """EF_ATTLOG data in one of the forms firmwares send; 32 bytes unless told."""
    if size not in ATTENDANCE_FORMS:
        raise BodyError(f"attendance events are {', '.join(map(str, ATTENDANCE_FORMS))} bytes, not {size}")
    user_id: str | int = event.user_id
    if size in (10, 12, 14):
        if not event.user_id.isascii() or not event.user_id.isdigit():
            raise BodyError(f"a {size}-byte attendance event carries a numeric user id, not {event.user_id!r}")
        user_id = int(event.user_id)
    values = dict(user_id=user_id, verify_type=event.verify_type, punch=event.punch, timestamp=event.timestamp, tail=bytes(_LAYOUTS[size][1]))
    try:
        return ATTENDANCE_FORMS[size].build(values)
    except BodyError:
        raise
    except Exception as exc:
        raise BodyError(f"attendance event does not fit {size} bytes: {exc}") from None


def parse_attendance_events(data: bytes) -> tuple[list[RealtimeAttendance], str | None]:
    """EF_ATTLOG data: the events it holds, and what was skipped (None when nothing was).

    As pyzk reads it: data of one known length is one event; longer data is a run of 52-byte
    events, then one event of a known length. Data of no known length, or an event that is no
    punch (a date that does not exist), is skipped and said, never an error: a firmware with a
    new layout must not cost the link."""
    events: list[RealtimeAttendance] = []
    pos, skipped = 0, None
    while pos < len(data):
        left = len(data) - pos
        size = left if left in ATTENDANCE_FORMS and left != 52 else 52 if left >= 52 else None
        if size is None:
            skipped = f"{left} bytes of attendance event data at {pos} have no known form ({', '.join(map(str, ATTENDANCE_FORMS))} bytes)"
            break
        try:
            c = ATTENDANCE_FORMS[size].parse(data[pos : pos + size])
        except Exception as exc:  # BodyError from the time, or construct's own
            skipped = f"attendance event of {size} bytes at {pos} skipped: {exc}"
        else:
            events.append(RealtimeAttendance(str(c["user_id"]), c["timestamp"], c["verify_type"], c["punch"]))
        pos += size
    return events, skipped


@dataclass(frozen=True, slots=True)
class EnrolledFinger:
    """EF_ENROLLFINGER: ``result`` 0 is success, when size, user and finger are known too."""

    result: int
    size: int = 0
    user_id: str = ""
    fid: int = 0


def encode_enrolled_finger(event: EnrolledFinger) -> bytes:
    """result u16; on success also template size u16, the user id NUL-padded, the finger u8."""
    head = event.result.to_bytes(2, "little")
    if event.result:
        return head
    user_id = event.user_id.encode(ENCODING)
    if len(user_id) > 24:
        raise BodyError(f"user id {event.user_id!r} over 24 bytes")
    return head + event.size.to_bytes(2, "little") + user_id.ljust(24, b"\0") + bytes((event.fid,))


def parse_enrolled_finger(data: bytes) -> EnrolledFinger:
    if len(data) < 2:
        raise BodyError(f"enrolled-finger event of {len(data)} bytes lacks its result")
    result = int.from_bytes(data[:2], "little")
    if result or len(data) < 6:
        return EnrolledFinger(result)
    user_id = data[4:-1].split(b"\0", 1)[0].decode(ENCODING, "surrogateescape")
    return EnrolledFinger(0, int.from_bytes(data[2:4], "little"), user_id, data[-1])


def encode_enrolled_user(user_id: str) -> bytes:
    """EF_ENROLLUSER data as the emulator sends it (no firmware's layout is published): the user
    id, NUL-padded to 24 bytes."""
    raw = user_id.encode(ENCODING)
    if len(raw) > 24:
        raise BodyError(f"user id {user_id!r} over 24 bytes")
    return raw.ljust(24, b"\0")


def event_packet(code: EventFlag, data: bytes) -> Packet:
    """A real-time event as the device sends it: the code in the session id field, reply id 0."""
    return Packet(Command.REG_EVENT, int(code), 0, data)
