"""What a ZK device stores, and its wire declarations: users (72- and 28-byte records), fingerprint
templates, attendance records (8, 16, 40 and 49 bytes), ZK time, and the size-prefixed tables a
buffered read returns. docs/zk.md section "Records" has the byte layouts.

``uid`` is a device's internal 16-bit slot; ``user_id`` is the person's id. Key people on
user_id: uids differ from device to device.

Text fields are NUL-padded bytes. They are read up to the first NUL and decoded as UTF-8, with
bytes that are not UTF-8 kept as surrogate escapes, so a record read and written back is the
same bytes and nothing a device holds is lost; writing text longer than its field is a
``BodyError``, never a silent cut.
"""

import struct
from dataclasses import dataclass, field
from datetime import datetime

from construct import Bytes, Int8sl, Int8ul, Int16sl, Int16ul, Int32ul, Padding, Struct

from protocol.compiling import CompilableAdapter, LengthChecked
from protocol.zk.errors import BodyError

ENCODING = "utf-8"
FINGER_SLOTS = 10
MAX_TEMPLATE = 0xFFFF - 6  # an entry's u16 size counts its 6-byte head


class Text(CompilableAdapter):
    """A NUL-padded text field of ``size`` bytes."""

    def __init__(self, size: int):
        super().__init__(LengthChecked(Bytes(size)))
        self.size = size

    def _decode(self, raw, context, path):
        return _text(raw)

    def _encode(self, text, context, path):
        raw = text.encode(ENCODING, "surrogateescape")
        if len(raw) > self.size:
            raise BodyError(f"{text!r} is {len(raw)} bytes, over the {self.size}-byte field")
        return raw.ljust(self.size, b"\0")


# ZK time: seconds in a calendar of 12 months of 31 days from 2000-01-01, in one u32.
_DAY_S = 24 * 60 * 60


def encode_time(moment: datetime) -> int:
    """A datetime (naive: device local time) as a ZK time; BodyError outside 2000-2099."""
    if not 2000 <= moment.year <= 2099:
        raise BodyError(f"ZK time holds years 2000 to 2099, not {moment.year}")
    days = ((moment.year - 2000) * 12 + moment.month - 1) * 31 + moment.day - 1
    return days * _DAY_S + (moment.hour * 60 + moment.minute) * 60 + moment.second


def decode_time(value: int) -> datetime:
    """A ZK time as a naive datetime; BodyError if it names a day that does not exist (31 April).
    A year after 2099 is read as it is (0xFFFFFFFF, an erased record, reads as 2133, as pyzk reads
    it): whether such a punch is taken is the reader's decision (gateway/zk/attendance.py)."""
    seconds, rest = value % 60, value // 60
    minutes, rest = rest % 60, rest // 60
    hours, rest = rest % 24, rest // 24
    day, rest = rest % 31 + 1, rest // 31
    month, year = rest % 12 + 1, rest // 12 + 2000
    try:
        return datetime(year, month, day, hours, minutes, seconds)
    except ValueError as exc:
        raise BodyError(f"ZK time {value} is not a date: {exc}") from None


class ZkTime(CompilableAdapter):
    def __init__(self):
        super().__init__(Int32ul)

    def _decode(self, value, context, path):
        return decode_time(value)

    def _encode(self, moment, context, path):
        return encode_time(moment)


@dataclass(frozen=True, slots=True)
class User:
    """A user as a ZK device holds one. ``group_id`` is text in the 72-byte form and a number in
    the 28-byte one; ``password`` is the clear keypad password (ZK devices do not hash it)."""

    uid: int
    user_id: str
    name: str = ""
    privilege: int = 0
    password: str = ""
    card: int = 0
    group_id: str = ""
    # The record as the device holds it (72 or 28 bytes; empty for a user not read from a device).
    # ``encode_user`` starts from it, so a record read and written back keeps every byte no field
    # here names (access-control firmwares keep the group, the own-time-zones flag and time zones
    # 1-3 at bytes 39-47 of a 72-byte record) and every field left as it was, byte for byte.
    record: bytes = field(default=b"", repr=False, compare=False)


User72Wire = Struct(
    "uid" / Int16ul,
    "privilege" / Int8ul,
    "password" / Text(8),
    "name" / Text(24),
    "card" / Int32ul,
    Padding(1),
    "group_id" / Text(7),
    Padding(1),
    "user_id" / Text(24),
)
User28Wire = Struct(
    "uid" / Int16ul,
    "privilege" / Int8ul,
    "password" / Text(5),
    "name" / Text(8),
    "card" / Int32ul,
    Padding(1),
    "group" / Int8ul,
    "timezone" / Int16sl,  # no field of User: kept from the record read (User.record), else 0 as pyzk writes
    "user_id" / Int32ul,  # old firmwares: numeric user ids only
)
User72Compiled = User72Wire.compile()
User28Compiled = User28Wire.compile()
USER_RECORD_SIZES = (72, 28)


def _user_fields(user: User) -> dict:
    return dict(uid=user.uid, privilege=user.privilege, password=user.password, name=user.name, card=user.card)


def _number(text: str, what: str, limit: int) -> int:
    if text == "":
        return 0
    if not text.isascii() or not text.isdigit() or int(text) > limit:
        raise BodyError(f"{what} must be a number up to {limit} in a 28-byte user record, not {text!r}")
    return int(text)


# Where each field of User lies in a record of each size; every other byte is the device's.
_USER_FIELD_SPANS = {
    72: {"uid": (0, 2), "privilege": (2, 3), "password": (3, 11), "name": (11, 35), "card": (35, 39), "group_id": (40, 47), "user_id": (48, 72)},
    28: {"uid": (0, 2), "privilege": (2, 3), "password": (3, 8), "name": (8, 16), "card": (16, 20), "group_id": (21, 22), "user_id": (24, 28)},
}


def encode_user(user: User, size: int = 72) -> bytes:
    """One user record of ``size`` (72 or 28) bytes. When ``user.record`` is a record of that
    size, the result is that record with the fields that differ from it written over it: the
    bytes no field names, and the fields left as they were, stay the device's."""
    built = _build_user(user, size)
    if len(user.record) != size:
        return built
    out, was = bytearray(user.record), decode_user(user.record)
    for name, (start, end) in _USER_FIELD_SPANS[size].items():
        if getattr(user, name) != getattr(was, name):
            out[start:end] = built[start:end]
    return bytes(out)


def _build_user(user: User, size: int) -> bytes:
    try:
        if size == 72:  # struct, as for reading: a write pass encodes every user it writes
            return _USER72.pack(user.uid, user.privilege, _field(user.password, 8), _field(user.name, 24), user.card,
                                _field(user.group_id, 7), _field(user.user_id, 24))
        if size == 28:
            group = _number(user.group_id, "group id", 0xFF)
            user_id = _number(user.user_id, "user id", 0xFFFFFFFF)
            return User28Compiled.build(dict(_user_fields(user), group=group, timezone=0, user_id=user_id))
    except BodyError as exc:
        raise BodyError(f"user uid {user.uid}: {exc}") from None
    except Exception as exc:  # struct.error: a number out of its field's range
        raise BodyError(f"user uid {user.uid} does not fit a {size}-byte record: {exc}") from None
    raise BodyError(f"user records are 72 or 28 bytes, not {size}")


# The two layouts above as struct formats: a device's whole user table is read at every poll, and
# struct unpacks (and packs) a record many times faster than construct. Property tests check they
# read every record of either size, and write every 72-byte one, as the declarations do.
_USER72 = struct.Struct("<HB8s24sIx7sx24s")
_USER28_READ = struct.Struct("<HB5s8sIxBhI")


def _field(text: str, size: int) -> bytes:
    """``Text(size)``'s encoding, for struct (which pads with NULs, and would cut silently)."""
    raw = text.encode(ENCODING, "surrogateescape")
    if len(raw) > size:
        raise BodyError(f"{text!r} is {len(raw)} bytes, over the {size}-byte field")
    return raw


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(ENCODING, "surrogateescape")


def decode_user(raw: bytes) -> User:
    """A 72- or 28-byte user record."""
    if len(raw) == 72:
        uid, privilege, password, name, card, group_id, user_id = _USER72.unpack(raw)
        return User(uid, _text(user_id), _text(name), privilege, _text(password), card, _text(group_id), bytes(raw))
    if len(raw) == 28:
        uid, privilege, password, name, card, group, _timezone, user_id = _USER28_READ.unpack(raw)
        return User(uid, str(user_id), _text(name), privilege, _text(password), card, str(group), bytes(raw))
    raise BodyError(f"a user record is 72 or 28 bytes, not {len(raw)}")


@dataclass(frozen=True, slots=True)
class Template:
    """One fingerprint template. ``valid`` is 1 for a normal finger, 3 for a duress finger, 0 for
    an invalid one; the template bytes are opaque and only usable by devices of the same
    fingerprint algorithm (option ``~ZKFPVersion``)."""

    uid: int
    fid: int
    template: bytes
    valid: int = 1


TemplateHead = Struct("size" / Int16ul, "uid" / Int16ul, "fid" / Int8sl, "valid" / Int8sl)
TemplateHeadCompiled = TemplateHead.compile()
TEMPLATE_HEAD_SIZE = TemplateHead.sizeof()


def encode_template(t: Template) -> bytes:
    """One template table entry: its size (head included), uid, finger, flag, then the template."""
    if not 0 <= t.fid < FINGER_SLOTS:
        raise BodyError(f"template of uid {t.uid}: finger index must be 0 to {FINGER_SLOTS - 1}, not {t.fid}")
    if not 0 < len(t.template) <= MAX_TEMPLATE:
        raise BodyError(f"template of uid {t.uid} finger {t.fid}: 1 to {MAX_TEMPLATE} bytes, not {len(t.template)}")
    try:
        head = TemplateHeadCompiled.build(dict(size=len(t.template) + TEMPLATE_HEAD_SIZE, uid=t.uid, fid=t.fid, valid=t.valid))
    except Exception as exc:
        raise BodyError(f"template of uid {t.uid} finger {t.fid} does not fit its head: {exc}") from None
    return head + t.template


@dataclass(frozen=True, slots=True)
class AttendanceRecord:
    """One punch from the attendance log. The 8-byte form knows only the uid, the 16-byte form
    only a numeric user id; the other is ``None``. ``verify_type`` says how the person verified
    (0 password, 1 finger, 2 card, ...), ``punch`` what they declared (0 check in, 1 check out,
    ...); pyzk calls them ``status`` and ``punch``."""

    uid: int | None
    user_id: str | None
    timestamp: datetime
    verify_type: int = 1
    punch: int = 0
    workcode: int = 0


Attendance8Wire = Struct("uid" / Int16ul, "verify_type" / Int8ul, "timestamp" / ZkTime(), "punch" / Int8ul)
Attendance16Wire = Struct(
    "user_id" / Int32ul,
    "timestamp" / ZkTime(),
    "verify_type" / Int8ul,
    "punch" / Int8ul,
    Padding(2),
    "workcode" / Int32ul,
)
Attendance40Wire = Struct(
    "uid" / Int16ul,
    "user_id" / Text(24),
    "verify_type" / Int8ul,
    "timestamp" / ZkTime(),
    "punch" / Int8ul,
    Padding(8),
)
# Newer firmwares (MB560-VL on 2022 firmware, MB40-VL, SpeedFace-V5L: pyzk #174, PRs #166/#247)
# send longer records that begin as the 40-byte form does; what follows its first 32 bytes is
# not published. Any size from 40 up is read by that head, as pyzk reads it; 49 is the one seen.
ATTENDANCE_HEAD_SIZE = 32
AttendanceHeadWire = Struct("uid" / Int16ul, "user_id" / Text(24), "verify_type" / Int8ul, "timestamp" / ZkTime(), "punch" / Int8ul)
ATTENDANCE_WIRES = {8: Attendance8Wire.compile(), 16: Attendance16Wire.compile(), 40: Attendance40Wire.compile()}
_ATTENDANCE_HEAD = AttendanceHeadWire.compile()
ATTENDANCE_RECORD_SIZES = (40, 49, 16, 8)  # what a table is split by when its count does not say, likeliest first
MAX_ATTENDANCE_RECORD = 256  # longer "records" are a count gone wrong, not a firmware


def _attendance_size_known(size: int) -> bool:
    return size in (8, 16) or 40 <= size <= MAX_ATTENDANCE_RECORD


def encode_attendance(record: AttendanceRecord, size: int = 40) -> bytes:
    """One attendance record of ``size`` bytes: 8, 16, or 40 and up (the 40-byte head, zeros after)."""
    if not _attendance_size_known(size):
        raise BodyError(f"attendance records are 8, 16 or 40 to {MAX_ATTENDANCE_RECORD} bytes, not {size}")
    fields = dict(timestamp=record.timestamp, verify_type=record.verify_type, punch=record.punch, workcode=record.workcode)
    if size != 16:
        if record.uid is None:
            raise BodyError(f"a {size}-byte attendance record needs the uid")
        fields["uid"] = record.uid
    if size != 8:
        if record.user_id is None:
            raise BodyError(f"a {size}-byte attendance record needs the user id")
        fields["user_id"] = record.user_id if size >= 40 else _number(record.user_id, "user id", 0xFFFFFFFF)
    try:
        if size > 40:
            return _ATTENDANCE_HEAD.build(fields).ljust(size, b"\0")
        return ATTENDANCE_WIRES[size].build(fields)
    except BodyError:
        raise
    except Exception as exc:
        raise BodyError(f"attendance record does not fit {size} bytes: {exc}") from None


def decode_attendance(raw: bytes) -> AttendanceRecord:
    """An attendance record of 8, 16, or 40 bytes and up (read by its 32-byte head)."""
    size = len(raw)
    if not _attendance_size_known(size):
        raise BodyError(f"an attendance record is 8, 16 or 40 to {MAX_ATTENDANCE_RECORD} bytes, not {size}")
    c = ATTENDANCE_WIRES[size].parse(raw) if size <= 40 else _ATTENDANCE_HEAD.parse(raw[:ATTENDANCE_HEAD_SIZE])
    uid = c["uid"] if size != 16 else None
    user_id = None if size == 8 else (str(c["user_id"]) if size == 16 else c["user_id"])
    return AttendanceRecord(uid, user_id, c["timestamp"], c["verify_type"], c["punch"], c.get("workcode", 0))


# Tables: what a buffered read returns, a u32 byte count and that many bytes of records. Real
# firmware does not always say what it sends (docs/zk.md section "Firmwares"), so a table is read
# as pyzk reads it: the bytes are the truth and the device's count only a hint. What the bytes
# and the count or the size prefix disagree on is read as well as it can be and listed in
# ``problems``; only whole records are taken, and a record that cannot be read is skipped. Only
# a table shorter than its own size prefix is a BodyError (bytes were lost on the way).


@dataclass(frozen=True, slots=True)
class ParsedTable:
    records: tuple
    record_size: int  # for templates, 0: each entry carries its size
    problems: tuple[str, ...] = ()  # what did not match what the device announced, one line each


def _table_body(data: bytes, what: str, problems: list[str]) -> tuple[bytes, int]:
    """The records' bytes, and the size the table's prefix announced for them."""
    if len(data) < 4:
        if data:
            problems.append(f"{what} table of {len(data)} bytes lacks its 4-byte size")
        return b"", 0
    size = int.from_bytes(data[:4], "little")
    if size > len(data) - 4:
        # Bytes lost on the way, not a firmware's habit: which records are missing cannot be
        # told, and a reader would take them for deleted. The read fails; the next one may not.
        raise BodyError(f"{what} table says {size} bytes of records but holds {len(data) - 4}")
    if size < len(data) - 4:
        problems.append(f"{what} table says {size} bytes of records but holds {len(data) - 4}: the {len(data) - 4 - size} after them skipped")
    return data[4 : 4 + size], size


def _split(body: bytes, announced: int, count: int | None, sizes: tuple[int, ...], fits, what: str, problems: list[str]) -> tuple[int, list[bytes]]:
    """Whole records of the size the bytes say. The count picks it where it divides the announced
    size into a size that ``fits`` (it alone tells 72- from 28-byte users apart; pyzk divides the
    same two); else the size of ``sizes`` whose whole records come nearest the count, as pyzk
    falls back to one."""
    if not body:
        if count:
            problems.append(f"{what} table is empty, but the device counts {count} records")
        return sizes[0], []
    if count and announced % count == 0 and fits(announced // count):
        size = announced // count
    else:
        dividing = [s for s in sizes if len(body) % s == 0] or list(sizes)
        size = min(dividing, key=lambda s: (abs(len(body) // s - (count or 0)), sizes.index(s)))
        problems.append(f"{what} table of {len(body)} bytes does not hold the {count or 0} records the device counts: "
                        f"read as {len(body) // size} records of {size} bytes")
    whole, rest = divmod(len(body), size)
    if rest:
        problems.append(f"{rest} bytes after the last whole {size}-byte {what} record skipped")
    return size, [body[i : i + size] for i in range(0, whole * size, size)]


def parse_user_table(data: bytes, count: int | None, known: dict[bytes, User] | None = None) -> ParsedTable:
    """The users of a USER table read, and their record size (72 or 28). ``known``: users
    decoded before, by their record: a record met again is not decoded again (a table read at
    every poll and write pass mostly holds the records of the last read)."""
    problems: list[str] = []
    body, announced = _table_body(data, "user", problems)
    size, raws = _split(body, announced, count, USER_RECORD_SIZES, lambda s: s in USER_RECORD_SIZES, "user", problems)
    known = known or {}
    return ParsedTable(tuple(known.get(raw) or decode_user(raw) for raw in raws), size, tuple(problems))


def build_user_table(users: list[User], size: int = 72) -> bytes:
    return user_table_of([encode_user(u, size) for u in users])


def user_table_of(records: list[bytes]) -> bytes:
    """A USER table of records encoded already (``encode_user``)."""
    body = b"".join(records)
    return len(body).to_bytes(4, "little") + body


def parse_template_table(data: bytes) -> ParsedTable:
    """The templates of a FINGERTMP table read; each entry carries its own size. An entry whose
    size does not fit ends the read: nothing after it can be found."""
    problems: list[str] = []
    body, _ = _table_body(data, "template", problems)
    templates, pos = [], 0
    while pos < len(body):
        if len(body) - pos < TEMPLATE_HEAD_SIZE:
            problems.append(f"template table: {len(body) - pos} bytes at {pos + 4} are too few for an entry head; skipped")
            break
        head = TemplateHeadCompiled.parse(body[pos : pos + TEMPLATE_HEAD_SIZE])
        if head["size"] <= TEMPLATE_HEAD_SIZE or pos + head["size"] > len(body):
            problems.append(f"template table: entry at {pos + 4} announces {head['size']} bytes, which do not fit; "
                            f"{len(body) - pos} bytes skipped")
            break
        templates.append(Template(head["uid"], head["fid"], bytes(body[pos + TEMPLATE_HEAD_SIZE : pos + head["size"]]), head["valid"]))
        pos += head["size"]
    return ParsedTable(tuple(templates), 0, tuple(problems))


def build_template_table(templates: list[Template]) -> bytes:
    body = b"".join(encode_template(t) for t in templates)
    return len(body).to_bytes(4, "little") + body


def parse_attendance_table(data: bytes, count: int | None) -> ParsedTable:
    """The records of an ATTLOG table read, and their size (8, 16, or 40 and up: 49 on newer
    firmwares). A record that is no punch (a date that does not exist) is skipped."""
    problems: list[str] = []
    body, announced = _table_body(data, "attendance", problems)
    size, raws = _split(body, announced, count, ATTENDANCE_RECORD_SIZES, _attendance_size_known, "attendance", problems)
    records, unreadable = [], []
    for n, raw in enumerate(raws):
        try:
            records.append(decode_attendance(raw))
        except BodyError as exc:
            unreadable.append(f"record {n}: {exc}")
    if unreadable:
        problems.append(f"{len(unreadable)} attendance records skipped (first: {unreadable[0]})")
    return ParsedTable(tuple(records), size, tuple(problems))


def build_attendance_table(records: list[AttendanceRecord], size: int = 40) -> bytes:
    body = b"".join(encode_attendance(r, size) for r in records)
    return len(body).to_bytes(4, "little") + body
