"""The data of single commands and their answers: counts, options, version, the buffered-read
and buffered-write control bodies, deletes, time, and the users-and-templates upload buffer.
docs/zk.md section "Command bodies" has the byte layouts."""

import struct
from dataclasses import dataclass, fields

from construct import Int8sl, Int8ul, Int16ul, Int32sl, Int32ul, Padding, Struct

from protocol.zk.commands import Command, Table
from protocol.zk.errors import BodyError
from protocol.zk.records import (
    FINGER_SLOTS,
    ENCODING,
    Template,
    Text,
    User,
    decode_user,
    encode_user,
)


def _parse(struct, data: bytes, what: str):
    try:
        return struct.parse(data)
    except BodyError:
        raise
    except Exception as exc:  # construct raises many types on hostile input; all mean "bad body"
        raise BodyError(f"bad {what} ({len(data)} bytes): {str(exc).splitlines()[-1].strip() if str(exc) else type(exc).__name__}") from None


def _build(struct, values: dict, what: str) -> bytes:
    try:
        return struct.build(values)
    except BodyError:
        raise
    except Exception as exc:
        raise BodyError(f"cannot build {what} from {values}: {exc}") from None


# GET_FREE_SIZES: 20 signed 32-bit counters, then 3 more on devices with faces. Positions as
# the SDK's GetDeviceStatus numbers them; pyzk calls ``admins`` "cards".


@dataclass(frozen=True, slots=True)
class Sizes:
    users: int = 0
    fingers: int = 0
    records: int = 0
    oplog: int = 0
    admins: int = 0
    passwords: int = 0
    fingers_capacity: int = 0
    users_capacity: int = 0
    records_capacity: int = 0
    fingers_free: int = 0
    users_free: int = 0
    records_free: int = 0
    faces: int = 0
    faces_capacity: int = 0


SizesWire = Struct(
    Padding(16),
    "users" / Int32sl,
    Padding(4),
    "fingers" / Int32sl,
    Padding(4),
    "records" / Int32sl,
    Padding(4),
    "oplog" / Int32sl,
    Padding(4),
    "admins" / Int32sl,
    "passwords" / Int32sl,
    "fingers_capacity" / Int32sl,
    "users_capacity" / Int32sl,
    "records_capacity" / Int32sl,
    "fingers_free" / Int32sl,
    "users_free" / Int32sl,
    "records_free" / Int32sl,
)
SIZES_SIZE = SizesWire.sizeof()  # 80
FacesWire = Struct("faces" / Int32sl, Padding(4), "faces_capacity" / Int32sl)
FACES_SIZE = FacesWire.sizeof()  # 12


# ``SizesWire`` and ``FacesWire`` packed with struct: the counts are read at every poll and twice in
# every write pass, by the gateway and by every emulated device, where construct took 40 us a
# time. A test checks that they agree with the declarations.
SIZES_STRUCT = struct.Struct("<16xi4xi4xi4xi4x8i")
FACES_STRUCT = struct.Struct("<i4xi")
_COUNTS = tuple(f.name for f in fields(Sizes))  # in wire order: the 12 of SIZES_STRUCT, then the faces'


def encode_sizes(sizes: Sizes) -> bytes:
    try:
        counts = [getattr(sizes, name) for name in _COUNTS]
        return SIZES_STRUCT.pack(*counts[:12]) + FACES_STRUCT.pack(*counts[12:])
    except struct.error as exc:
        raise BodyError(f"cannot build free sizes from {sizes}: {exc}") from None


def parse_sizes(data: bytes) -> Sizes:
    """The GET_FREE_SIZES answer: 80 bytes, or 92 with the face counters."""
    if len(data) < SIZES_SIZE:
        raise BodyError(f"free sizes answer of {len(data)} bytes is shorter than {SIZES_SIZE}")
    faces = FACES_STRUCT.unpack_from(data, SIZES_SIZE) if len(data) >= SIZES_SIZE + FACES_SIZE else (0, 0)
    return Sizes(*SIZES_STRUCT.unpack_from(data), *faces)


# OPTIONS_RRQ "name\0" -> ACK_OK "name=value\0"; OPTIONS_WRQ "name=value\0". GET_VERSION -> "Ver ...\0".


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(ENCODING, "surrogateescape")


def option_request(name: str) -> bytes:
    return name.encode(ENCODING) + b"\0"


def parse_option_request(data: bytes) -> str:
    return _text(data)


def option_assignment(name: str, value: str) -> bytes:
    """OPTIONS_WRQ data, and the OPTIONS_RRQ answer."""
    return f"{name}={value}".encode(ENCODING, "surrogateescape") + b"\0"


def parse_option_assignment(data: bytes) -> tuple[str, str]:
    text = _text(data)
    name, sep, value = text.partition("=")
    if not sep:
        raise BodyError(f"option answer {text!r} has no '='")
    return name, value


def parse_version(data: bytes) -> str:
    return _text(data)


# Buffered reads: PREPARE_BUFFER names the table; ACK_OK says its size; READ_BUFFER reads a chunk;
# a device answering a chunk with PREPARE_DATA says the size it will send, then sends DATA.

BufferRequest = Struct("mode" / Int8ul, "command" / Int16ul, "fct" / Int32ul, "ext" / Int32ul)
BufferInfo = Struct(Padding(1), "size" / Int32ul)  # devices add the size again and a u32 we do not read
ChunkRequest = Struct("start" / Int32ul, "size" / Int32ul)
PrepareData = Struct("size" / Int32ul)  # devices add a u32 we do not read; clients send 4 bytes


@dataclass(frozen=True, slots=True)
class TableRead:
    """Which table a PREPARE_BUFFER asks for: the inner read command and the ``fct`` code."""

    command: int
    fct: int = 0
    ext: int = 0


USERS = TableRead(Command.USERTEMP_RRQ, Table.USER)
TEMPLATES = TableRead(Command.DB_RRQ, Table.FINGERTMP)
ATTENDANCE = TableRead(Command.ATTLOG_RRQ)


def buffer_request(table: TableRead) -> bytes:
    return _build(BufferRequest, dict(mode=1, command=table.command, fct=table.fct, ext=table.ext), "PREPARE_BUFFER")


def parse_buffer_request(data: bytes) -> TableRead:
    c = _parse(BufferRequest, data, "PREPARE_BUFFER request")
    return TableRead(c.command, c.fct, c.ext)


def buffer_info(size: int) -> bytes:
    """The ACK_OK answer to PREPARE_BUFFER: a zero byte, the size, the size again, a u32 whose
    meaning nobody has published (we send 0)."""
    return b"\0" + size.to_bytes(4, "little") * 2 + bytes(4)


def parse_buffer_info(data: bytes) -> int:
    return _parse(BufferInfo, data[: BufferInfo.sizeof()], "PREPARE_BUFFER answer").size


def chunk_request(start: int, size: int) -> bytes:
    return _build(ChunkRequest, dict(start=start, size=size), "READ_BUFFER")


def parse_chunk_request(data: bytes) -> tuple[int, int]:
    c = _parse(ChunkRequest, data, "READ_BUFFER request")
    return c.start, c.size


def prepare_data(size: int, device: bool = False) -> bytes:
    """PREPARE_DATA data: the size; a device adds a u32 (we send 0), a client does not."""
    return _build(PrepareData, dict(size=size), "PREPARE_DATA") + (bytes(4) if device else b"")


def parse_prepare_data(data: bytes) -> int:
    return _parse(PrepareData, data[: PrepareData.sizeof()], "PREPARE_DATA").size


# Deletes, one template read, real-time registration, time, unlock.

UidWire = Struct("uid" / Int16ul)
UidFingerWire = Struct("uid" / Int16ul, "fid" / Int8sl)
UserIdFingerWire = Struct("user_id" / Text(24), "fid" / Int8ul)
U32 = Struct("value" / Int32ul)


def uid_body(uid: int) -> bytes:
    """DELETE_USER data."""
    return _build(UidWire, dict(uid=uid), "uid")


def parse_uid(data: bytes) -> int:
    return _parse(UidWire, data[:2], "uid").uid


def uid_finger(uid: int, fid: int) -> bytes:
    """DELETE_USERTEMP and GET_USERTEMP data."""
    _check_finger(fid)
    return _build(UidFingerWire, dict(uid=uid, fid=fid), "uid and finger")


def parse_uid_finger(data: bytes) -> tuple[int, int]:
    c = _parse(UidFingerWire, data[:3], "uid and finger")
    return c.uid, c.fid


def user_id_finger(user_id: str, fid: int) -> bytes:
    """DEL_FPTMP data."""
    _check_finger(fid)
    return _build(UserIdFingerWire, dict(user_id=user_id, fid=fid), "user id and finger")


def parse_user_id_finger(data: bytes) -> tuple[str, int]:
    c = _parse(UserIdFingerWire, data[:25], "user id and finger")
    return c.user_id, c.fid


def u32(value: int) -> bytes:
    """REG_EVENT mask, SET_TIME and GET_TIME time, UNLOCK duration."""
    return _build(U32, dict(value=value), "u32")


def parse_u32(data: bytes) -> int:
    return _parse(U32, data[:4], "u32").value


def _check_finger(fid: int) -> None:
    if not 0 <= fid < FINGER_SLOTS:
        raise BodyError(f"finger index must be 0 to {FINGER_SLOTS - 1}, not {fid}")


# The users-and-templates upload (PREPARE_DATA + DATA into the buffer, then SAVE_USERTEMPS):
#   users_size u32, table_size u32, templates_size u32,
#   users:     per user 02 + a user record,
#   table:     per template 02, uid u16, 0x10 * valid + finger u8, offset u32 into templates,
#   templates: per template size u16 + the template.

SAVE_USERTEMPS_PARAMS = b"\x0c\x00\x00\x00\x00\x00\x08\x00"  # u32 12, u16 0, u16 8, as pyzk sends them
UploadHead = Struct("users_size" / Int32ul, "table_size" / Int32ul, "templates_size" / Int32ul)
UploadEntry = Struct("marker" / Int8ul, "uid" / Int16ul, "kind" / Int8ul, "offset" / Int32ul)
UPLOAD_MARKER = 2
# ``UploadHead`` and ``UploadEntry`` packed with struct: every write pass of a storm builds an
# upload on the gateway's reactor thread, where construct's build was a twentieth of its busy
# time. A test checks that the two agree.
UPLOAD_HEAD_STRUCT = struct.Struct("<3I")
UPLOAD_ENTRY_STRUCT = struct.Struct("<BHBI")


def build_upload(users: list[User], templates: list[Template], record_size: int = 72) -> bytes:
    """The buffer SAVE_USERTEMPS stores: users (upserted by uid) and their templates."""
    marker = bytes([UPLOAD_MARKER])
    user_part = b"".join(marker + encode_user(u, record_size) for u in users)
    table, blobs, offset = [], [], 0
    for t in templates:
        _check_finger(t.fid)
        if not 0 <= t.valid < 16 or not 0 < len(t.template) <= 0xFFFF:
            raise BodyError(f"template of uid {t.uid} finger {t.fid}: flag 0-15 and 1 to 65535 bytes needed")
        try:
            table.append(UPLOAD_ENTRY_STRUCT.pack(UPLOAD_MARKER, t.uid, t.valid << 4 | t.fid, offset))
        except struct.error as exc:  # a uid or an offset out of range
            raise BodyError(f"cannot build template entry of uid {t.uid} finger {t.fid} at {offset}: {exc}") from None
        blobs.append(len(t.template).to_bytes(2, "little") + t.template)
        offset += len(blobs[-1])
    table_part, template_part = b"".join(table), b"".join(blobs)
    try:
        head = UPLOAD_HEAD_STRUCT.pack(len(user_part), len(table_part), len(template_part))
    except struct.error as exc:
        raise BodyError(f"cannot build upload head: {exc}") from None
    return head + user_part + table_part + template_part


def parse_upload(data: bytes) -> tuple[list[User], list[Template]]:
    head = _parse(UploadHead, data[: UploadHead.sizeof()], "upload head")
    pos = UploadHead.sizeof()
    if pos + head.users_size + head.table_size + head.templates_size != len(data):
        raise BodyError(f"upload of {len(data)} bytes does not match its head {dict(head)}")
    user_part = data[pos : pos + head.users_size]
    table_part = data[pos + head.users_size : pos + head.users_size + head.table_size]
    template_part = data[pos + head.users_size + head.table_size :]
    users = []
    for size in (73, 29):
        if len(user_part) % size == 0 and all(user_part[i] == UPLOAD_MARKER for i in range(0, len(user_part), size)):
            users = [decode_user(user_part[i + 1 : i + size]) for i in range(0, len(user_part), size)]
            break
    else:
        raise BodyError(f"upload: {len(user_part)} bytes of users are neither 73- nor 29-byte entries")
    if len(table_part) % UploadEntry.sizeof():
        raise BodyError(f"upload: template table of {len(table_part)} bytes is not whole 8-byte entries")
    templates = []
    for i in range(0, len(table_part), UploadEntry.sizeof()):
        entry = _parse(UploadEntry, table_part[i : i + UploadEntry.sizeof()], "template entry")
        at = entry.offset
        if at + 2 > len(template_part):
            raise BodyError(f"upload: template entry points at {at}, past the templates")
        size = int.from_bytes(template_part[at : at + 2], "little")
        if not size or at + 2 + size > len(template_part):
            raise BodyError(f"upload: template at {at} announces {size} bytes, which do not fit")
        fid, valid = entry.kind & 0x0F, entry.kind >> 4
        _check_finger(fid)
        templates.append(Template(entry.uid, fid, bytes(template_part[at + 2 : at + 2 + size]), valid))
    return users, templates
