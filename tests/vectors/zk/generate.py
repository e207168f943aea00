"""Golden vectors of the ZK protocol: one TCP packet per file pair, NAME.hex and NAME.json.

Run ``python tests/vectors/zk/generate.py`` after a deliberate change to protocol/zk/;
tests/test_zk_vectors.py fails until the files are what this script writes. Every value here is
fixed, so the output never changes by itself. ``CAPTURED`` are packets published in
adrobinoga/zk-protocol from a real device (an F19): the tests decode them, so our reading of
the format is checked against bytes we did not write.
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from protocol.zk import bodies, realtime
from protocol.zk.commands import Command, EventFlag, ReplyCode, name_of
from protocol.zk.commkey import make_commkey
from protocol.zk.packet import Packet, encode_tcp
from protocol.zk.records import (
    AttendanceRecord,
    Template,
    User,
    build_attendance_table,
    build_template_table,
    build_user_table,
    encode_user,
    parse_attendance_table,
    parse_template_table,
    parse_user_table,
    decode_user,
)

VECTOR_DIR = Path(__file__).resolve().parent
SESSION = 0x8DF3
T0 = datetime(2024, 3, 1, 8, 30, 15)


def fixed_bytes(label: str, size: int) -> bytes:
    """Bytes that look random and are the same on every run: SHAKE-256 of a label."""
    return hashlib.shake_256(label.encode()).digest(size)


ADA = User(uid=1, user_id="1042", name="Ada Lovelace", privilege=14, password="2468", card=10_004_321, group_id="1")
OLD_FIRMWARE_ADA = User(uid=1, user_id="1042", name="Ada L.", privilege=14, password="2468", card=10_004_321, group_id="1")
GRACE = User(uid=2, user_id="1043", name="Grace Hopper", card=0, group_id="1")
FINGERS = [Template(1, 0, fixed_bytes("1042 finger 0", 48)), Template(1, 6, fixed_bytes("1042 finger 6", 40), valid=3)]
PUNCHES = [AttendanceRecord(1, "1042", T0, 1, 0), AttendanceRecord(2, "1043", datetime(2024, 3, 1, 17, 2, 59), 2, 1)]


def _fields(value) -> dict:
    """A read value's fields; a user's ``record`` (the bytes it was read from) is the vector itself."""
    fields = asdict(value)
    fields.pop("record", None)
    return fields


def _users(data: bytes) -> dict:
    table = parse_user_table(data, len(data) // 72 if len(data) > 4 else 0)
    return dict(record_size=table.record_size, users=[_fields(u) for u in table.records])


def _attendance(data: bytes, size: int) -> dict:
    table = parse_attendance_table(data, (len(data) - 4) // size)
    return dict(record_size=table.record_size, records=[_jsonable(asdict(r)) for r in table.records])


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# How each vector's data reads, by kind; the test runs the same readers.
READERS = {
    "empty": lambda data: {} if not data else {"unexpected": data.hex()},
    "text": lambda data: {"text": bodies.parse_version(data)},
    "option_request": lambda data: {"name": bodies.parse_option_request(data)},
    "option_assignment": lambda data: dict(zip(("name", "value"), bodies.parse_option_assignment(data))),
    "commkey": lambda data: {"proof": data.hex()},
    "sizes": lambda data: asdict(bodies.parse_sizes(data)),
    "buffer_request": lambda data: asdict(bodies.parse_buffer_request(data)),
    "buffer_info": lambda data: {"size": bodies.parse_buffer_info(data)},
    "chunk_request": lambda data: dict(zip(("start", "size"), bodies.parse_chunk_request(data))),
    "prepare_data": lambda data: {"size": bodies.parse_prepare_data(data)},
    "user": lambda data: _fields(decode_user(data)),
    "user_table": _users,
    "template_table": lambda data: {"templates": [_jsonable(asdict(t)) for t in parse_template_table(data).records]},
    "attendance40": lambda data: _attendance(data, 40),
    "attendance16": lambda data: _attendance(data, 16),
    "attendance8": lambda data: _attendance(data, 8),
    "upload": lambda data: dict(zip(("users", "templates"), [[_jsonable(_fields(x)) for x in part] for part in bodies.parse_upload(data)])),
    "uid": lambda data: {"uid": bodies.parse_uid(data)},
    "uid_finger": lambda data: dict(zip(("uid", "fid"), bodies.parse_uid_finger(data))),
    "user_id_finger": lambda data: dict(zip(("user_id", "fid"), bodies.parse_user_id_finger(data))),
    "u32": lambda data: {"value": bodies.parse_u32(data)},
    "realtime_attendance": lambda data: {"events": [_jsonable(asdict(e)) for e in realtime.parse_attendance_events(data)[0]]},
    "enrolled_finger": lambda data: asdict(realtime.parse_enrolled_finger(data)),
    "raw": lambda data: {"hex": data.hex()},
}


@dataclass(frozen=True)
class Vector:
    name: str
    about: str
    packet: Packet
    kind: str

    @property
    def hex(self) -> str:
        return encode_tcp(self.packet).hex()

    def to_json(self) -> dict:
        return describe(self.packet, self.kind, self.about)


def describe(packet: Packet, kind: str, about: str) -> dict:
    payload = encode_tcp(packet)[8:]
    return dict(
        about=about,
        command=name_of(packet.command),
        checksum=f"0x{int.from_bytes(payload[2:4], 'little'):04X}",
        session_id=packet.session_id,
        reply_id=packet.reply_id,
        kind=kind,
        data=_jsonable(READERS[kind](packet.data)),
    )


def _p(command, data=b"", reply_id=1, session_id=SESSION) -> Packet:
    return Packet(int(command), session_id, reply_id, data)


def build_vectors() -> list[Vector]:
    """A session in order: connect with a comm key, read facts, read tables both ways, write, events."""
    users_table = build_user_table([ADA, GRACE])
    chunk = users_table[:100]
    vectors = [
        ("connect_request", "The client opens: session id 0, reply id 0.", Packet(Command.CONNECT), "empty"),
        ("connect_unauth", "A device with a comm key refuses, naming the session id.", _p(ReplyCode.ACK_UNAUTH, reply_id=0), "empty"),
        ("auth_request", "The comm key 123456 scrambled for this session with ticks 50.", _p(Command.AUTH, make_commkey(123456, SESSION, 50)), "commkey"),
        ("connect_ok", "The device accepts.", _p(ReplyCode.ACK_OK), "empty"),
        ("version_request", "GET_VERSION.", _p(Command.GET_VERSION, reply_id=2), "empty"),
        ("version_reply", "The firmware version as text.", _p(ReplyCode.ACK_OK, b"Ver 6.60 Apr 28 2015\0", reply_id=2), "text"),
        ("option_request", "OPTIONS_RRQ for the fingerprint algorithm.", _p(Command.OPTIONS_RRQ, bodies.option_request("~ZKFPVersion"), 3), "option_request"),
        ("option_reply", "name=value.", _p(ReplyCode.ACK_OK, bodies.option_assignment("~ZKFPVersion", "10"), 3), "option_assignment"),
        ("sizes_request", "GET_FREE_SIZES.", _p(Command.GET_FREE_SIZES, reply_id=4), "empty"),
        ("sizes_reply", "Counts and capacities, face counters included (92 bytes).",
         _p(ReplyCode.ACK_OK, bodies.encode_sizes(bodies.Sizes(users=2, fingers=2, records=2, admins=1, passwords=1, fingers_capacity=3000,
                                                           users_capacity=3000, records_capacity=100_000, fingers_free=2998,
                                                           users_free=2998, records_free=99_998)), 4), "sizes"),
        ("disable_request", "DISABLEDEVICE before bulk work.", _p(Command.DISABLEDEVICE, reply_id=5), "empty"),
        ("prepare_buffer_users", "PREPARE_BUFFER for the user table.", _p(Command.PREPARE_BUFFER, bodies.buffer_request(bodies.USERS), 6), "buffer_request"),
        ("user_table_inline", "A small table answered inline: size, then 72-byte records.", _p(Command.DATA, users_table, 6), "user_table"),
        ("prepare_buffer_templates", "PREPARE_BUFFER for the templates.", _p(Command.PREPARE_BUFFER, bodies.buffer_request(bodies.TEMPLATES), 7), "buffer_request"),
        ("buffer_info", "The chunked form: ACK_OK with the table's size.", _p(ReplyCode.ACK_OK, bodies.buffer_info(len(users_table)), 7), "buffer_info"),
        ("read_buffer", "READ_BUFFER: the first 100 bytes.", _p(Command.READ_BUFFER, bodies.chunk_request(0, 100), 8), "chunk_request"),
        ("chunk_prepare", "A chunk answered through the buffer: PREPARE_DATA with its size...", _p(Command.PREPARE_DATA, bodies.prepare_data(100, device=True), 8), "prepare_data"),
        ("chunk_data", "...the bytes in DATA (same reply id)...", _p(Command.DATA, chunk, 8), "raw"),
        ("chunk_done", "...and ACK_OK (same reply id).", _p(ReplyCode.ACK_OK, reply_id=8), "empty"),
        ("free_data", "FREE_DATA releases the device's buffer.", _p(Command.FREE_DATA, reply_id=9), "empty"),
        ("template_table", "A template table: size, then per template its size, uid, finger, flag (3: duress) and bytes.",
         _p(Command.DATA, build_template_table(FINGERS), 7), "template_table"),
        ("attendance_table_40", "The attendance log of a TFT firmware: 40-byte records.", _p(Command.DATA, build_attendance_table(PUNCHES, 40), 10), "attendance40"),
        ("attendance_table_16", "16-byte records: numeric user ids, no uid.", _p(Command.DATA, build_attendance_table(PUNCHES, 16), 10), "attendance16"),
        ("attendance_table_8", "8-byte records of old firmwares: uid only.", _p(Command.DATA, build_attendance_table(PUNCHES, 8), 10), "attendance8"),
        ("user_write", "USER_WRQ: one 72-byte record, upserted by uid.", _p(Command.USER_WRQ, encode_user(ADA), 11), "user"),
        ("user_write_28", "USER_WRQ on an old firmware: a 28-byte record.", _p(Command.USER_WRQ, encode_user(OLD_FIRMWARE_ADA, 28), 11), "user"),
        ("upload_prepare", "PREPARE_DATA from the client: the size of the upload that follows in DATA.", _p(Command.PREPARE_DATA, bodies.prepare_data(len(bodies.build_upload([ADA], FINGERS))), 12), "prepare_data"),
        ("upload_data", "The upload (one DATA here; 1024 bytes per DATA in practice): users, template table, templates.",
         _p(Command.DATA, bodies.build_upload([ADA], FINGERS), 13), "upload"),
        ("save_usertemps", "SAVE_USERTEMPS stores the upload.", _p(Command.SAVE_USERTEMPS, bodies.SAVE_USERTEMPS_PARAMS, 14), "raw"),
        ("refresh", "REFRESHDATA makes written data take effect.", _p(Command.REFRESHDATA, reply_id=15), "empty"),
        ("delete_user", "DELETE_USER by uid.", _p(Command.DELETE_USER, bodies.uid_body(2), 16), "uid"),
        ("delete_template", "DELETE_USERTEMP: one finger of a uid.", _p(Command.DELETE_USERTEMP, bodies.uid_finger(1, 6), 17), "uid_finger"),
        ("delete_template_by_user_id", "DEL_FPTMP: one finger by user id.", _p(Command.DEL_FPTMP, bodies.user_id_finger("1042", 6), 18), "user_id_finger"),
        ("reg_event", "REG_EVENT: push attendance and enrolments.", _p(Command.REG_EVENT, bodies.u32(EventFlag.ATTLOG | EventFlag.ENROLLFINGER), 19), "u32"),
        ("event_attendance", "A punch pushed by the device: code 1 in the session id field, reply id 0.",
         realtime.event_packet(EventFlag.ATTLOG, realtime.encode_attendance_event(realtime.RealtimeAttendance("1042", T0, 1, 0))), "realtime_attendance"),
        ("event_ack", "The client acknowledges the event.", _p(ReplyCode.ACK_OK, reply_id=0), "empty"),
        ("event_enrolled_finger", "An enrolment at the device, finger 6 of 1042 (EF_ENROLLFINGER).",
         realtime.event_packet(EventFlag.ENROLLFINGER, realtime.encode_enrolled_finger(realtime.EnrolledFinger(0, 40, "1042", 6))), "enrolled_finger"),
        ("unknown_command", "What a device answers to a command it does not know.", _p(ReplyCode.ACK_UNKNOWN, reply_id=20), "empty"),
        ("exit", "EXIT ends the session.", _p(Command.EXIT, reply_id=21), "empty"),
    ]
    return [Vector(name, about, packet, kind) for name, about, packet, kind in vectors]


# Packets from adrobinoga/zk-protocol (captured from a real device), and what they must read as.
CAPTURED = {
    "options_platform_request": ("5050827d120000000b00b9e6f38d0c007e506c6174666f726d00", "option_request", {"name": "~Platform"}),
    "options_platform_reply": ("5050827d1d000000d007714cf38d0c007e506c6174666f726d3d5a454d3736305f54465400", "option_assignment",
                               {"name": "~Platform", "value": "ZEM760_TFT"}),
    "options_workcode_reply": ("5050827d13000000d007828af38d0b00576f726b436f64653d3000", "option_assignment", {"name": "WorkCode", "value": "0"}),
    "set_option_lockon": ("5050827d110000000c00ebbb84c547004c6f636b4f6e3d3500", "option_request", {"name": "LockOn=5"}),
    "user_write": ("5050827d500000000800fc579d8a5c000e000631323334353600" "7c4e7565766f" + "00" * 19 + "8f19000001" + "00" * 8
                   + "3131323234343838" + "00" * 16, "user",
                   {"uid": 14, "user_id": "11224488", "name": "Nuevo", "privilege": 6, "password": "123456", "card": 6543, "group_id": ""}),
    "event_attendance": ("5050827d28000000f401ac1201000000" "393939313131333333" + "00" * 15 + "0100120619112905", "realtime_attendance",
                         {"events": [{"user_id": "999111333", "timestamp": "2018-06-25T17:41:05", "verify_type": 1, "punch": 0}]}),
    "device_state_reply": ("5050827d08000000d007f6f702003700", "empty", {}),
}


def readable_json(value, depth: int = 0) -> str:
    """JSON with one field per line, except that a list of plain values stays on one line."""
    inner, outer = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict) and value:
        fields = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {readable_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(fields) + f"\n{outer}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [inner + readable_json(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + f"\n{outer}]"
    return json.dumps(value, ensure_ascii=False)


def render_files(vectors: list[Vector]) -> dict[str, str]:
    files = {}
    for v in vectors:
        files[f"{v.name}.hex"] = v.hex + "\n"
        files[f"{v.name}.json"] = readable_json(v.to_json()) + "\n"
    return files


def main() -> None:
    vectors = build_vectors()
    files = render_files(vectors)
    for stale in [*VECTOR_DIR.glob("*.hex"), *VECTOR_DIR.glob("*.json")]:
        if stale.name not in files:
            stale.unlink()
    for name, content in files.items():
        (VECTOR_DIR / name).write_text(content)
    print(f"wrote {len(vectors)} vectors to {VECTOR_DIR}")


if __name__ == "__main__":
    main()
