"""What ZkClient.receive and ZkClient.check_deadline return: one type per thing that happened.

Every operation started on the client returns a token, and ends in exactly one event carrying
that token: its result (``Connected``, ``Reply``, ``BufferedData``, ``UsersRead``,
``TemplatesRead``, ``AttendanceRead``) or ``RequestFailed``, ``TimedOut`` or ``OverLimit``.
``RealtimeEvent``, ``ProtocolViolation`` and ``DeviceQuirk`` carry no token.
"""

from dataclasses import dataclass, field

from protocol.zk.bodies import Sizes
from protocol.zk.commands import ReplyCode
from protocol.zk.commands import name_of
from protocol.zk.realtime import EnrolledFinger, RealtimeAttendance
from protocol.zk.records import AttendanceRecord, Template, User


@dataclass(frozen=True, slots=True)
class Connected:
    token: int
    session_id: int


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to ``request``: its code (a ``ReplyCode``, or DATA when the answer came as
    data, inline or through PREPARE_DATA) and its data."""

    token: int
    code: int
    data: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return self.code == ReplyCode.ACK_OK

    def __str__(self) -> str:
        return f"{name_of(self.code)}, {len(self.data)} data bytes"


@dataclass(frozen=True, slots=True)
class BufferedData:
    """A whole table from ``read_buffer``, size prefix included."""

    token: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UsersRead:
    token: int
    users: tuple[User, ...]
    record_size: int  # 72, or 28 on old firmwares
    sizes: Sizes


@dataclass(frozen=True, slots=True)
class TemplatesRead:
    token: int
    templates: tuple[Template, ...]
    sizes: Sizes


@dataclass(frozen=True, slots=True)
class AttendanceRead:
    token: int
    records: tuple[AttendanceRecord, ...]
    record_size: int  # 40, 16 or 8; 49 (or more) on newer firmwares
    sizes: Sizes


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The operation ended without its result. ``code`` is the device's reply code when the
    device refused (ACK_ERROR, ACK_UNKNOWN for a command it lacks, ACK_UNAUTH for a wrong comm
    key), ``None`` when its answer was malformed or an earlier failure kept it from being sent."""

    token: int
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No answer by the deadline: the device fell silent for ``timeout_s``, or one request took
    longer than ``request_limit_s`` however its bytes dripped in; ``reason`` says which. The
    conversation is over: a late answer could be taken for the next one, so the client refuses
    further requests; close the connection and start again."""

    token: int
    command: int
    reason: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class OverLimit:
    """The device announced a transfer larger than the client's ``max_transfer``: refused before
    any of it was held. The conversation is over, as after ``TimedOut``: the device may go on
    sending what was refused."""

    token: int
    command: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceQuirk:
    """The device sent something other than it announced, and the client read what it could: a
    table whose count or size prefix disagrees with its bytes, bytes after the last whole record,
    unreadable records, real-time event data of no known length, a packet nobody asked for. Said once per ``kind`` and
    conversation (the client counts every one in ``ZkClient.quirks``); the link goes on."""

    kind: str  # "user table", "template table", "attendance table", "real-time event", "stray packet"
    detail: str


@dataclass(frozen=True, slots=True)
class RealtimeEvent:
    """A real-time event (already acknowledged). ``code`` is an ``EventFlag``; ``attendance`` and
    ``enrolled_finger`` are filled when the data has a known form."""

    code: int
    data: bytes = field(repr=False)
    attendance: tuple[RealtimeAttendance, ...] = ()
    enrolled_finger: EnrolledFinger | None = None


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The device sent something the protocol does not allow: bytes that are no packet, a wrong
    checksum. The bytes are skipped; an operation waiting for them ends in ``TimedOut``."""

    reason: str


Event = (Connected | Reply | BufferedData | UsersRead | TemplatesRead | AttendanceRead | RequestFailed | TimedOut | OverLimit | RealtimeEvent
         | ProtocolViolation | DeviceQuirk)
