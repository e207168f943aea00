"""The JSON form of frames and decode errors: what tools print and read, exact both ways.

``frame_from_json(frame_to_json(f))`` encodes to the same bytes as ``f``, so a decoded capture
can be edited and encoded again. Conventions (docs/protocol.md, section "JSON form"):

- bytes are lowercase hex strings; enum values are names, a value the enum lacks stays a number;
- a user record omits its vacant fields: absent means vacant (``null`` is read as vacant too);
- a frame whose payload is not a valid message keeps it raw, as ``payload`` (hex) with the reason
  in ``message_error``, instead of ``message``.
"""

import functools
import json
from enum import IntEnum

from protocol.errors import ErrorCode, FrameError, MessageError
from protocol.events import Credential, Event, EventCode, Origin
from protocol.frame import Flags, Frame
from protocol.messages import Command, UserStatus, body_struct, build_body, parse_body
from protocol.records import Card, CardType, Face, Fingerprint, UserRecord

# Keys a reader skips: what gateway-decode adds beside a frame, not part of the frame itself.
_ANNOTATIONS = frozenset({"offset", "message_error"})


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _wrong(where: str, expected: str, got) -> MessageError:
    if isinstance(got, (dict, list)):
        shown = "an object" if isinstance(got, dict) else "a list"
    else:
        shown = json.dumps(got)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return MessageError(f"{where}: expected {expected}, got {shown}")


class _Scalar:
    """A JSON number, string or boolean that stands for itself, once checked."""

    def __init__(self, accepts, expected: str):
        self.accepts = accepts
        self.expected = expected

    def to_json(self, value):
        return value

    def from_json(self, obj, where: str):
        if not self.accepts(obj):
            raise _wrong(where, self.expected, obj)
        return obj


def _unsigned(bits: int) -> _Scalar:
    top = (1 << bits) - 1
    in_range = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top  # noqa: E731
    return _Scalar(in_range, f"an integer from 0 to {top}")


class _Hex:
    def to_json(self, value: bytes) -> str:
        return value.hex()

    def from_json(self, obj, where: str) -> bytes:
        try:
            return bytes.fromhex(obj)
        except (TypeError, ValueError):
            raise _wrong(where, "bytes as hex digits", obj) from None


_TEXT = _Scalar(lambda v: isinstance(v, str), "a string")
_BOOL = _Scalar(lambda v: isinstance(v, bool), "true or false")
_HEX = _Hex()
_U8, _U32, _U64 = _unsigned(8), _unsigned(32), _unsigned(64)


class _Enum:
    """A value named by its enum member; values the enum lacks stay numbers, so nothing is lost."""

    def __init__(self, enum: type[IntEnum], bits: int):
        self.enum = enum
        self.number = _unsigned(bits)

    def to_json(self, value: int) -> str | int:
        try:
            return self.enum(value).name
        except ValueError:
            return value

    def from_json(self, obj, where: str) -> int:
        if isinstance(obj, str):
            try:
                return self.enum[obj]
            except KeyError:
                names = ", ".join(self.enum.__members__)
                raise _wrong(where, f"one of {names} or a number", obj) from None
        return self.number.from_json(obj, where)


class _FlagNames:
    """Flags as the names of the bits set, lowercase; a bit without a name stays a number."""

    def to_json(self, value: int) -> list:
        named = [flag for flag in Flags if value & flag]
        rest = value & ~sum(named)
        return [flag.name.lower() for flag in named] + [1 << n for n in range(8) if rest >> n & 1]

    def from_json(self, obj, where: str) -> Flags:
        if not isinstance(obj, list):
            raise _wrong(where, "a list of flag names", obj)
        value = 0
        for i, item in enumerate(obj):
            if isinstance(item, str) and item.upper() in Flags.__members__:
                value |= Flags[item.upper()]
            elif _U8.accepts(item):
                value |= item
            else:
                raise _wrong(f"{where}[{i}]", "response, error or a bit value", item)
        return Flags(value)


class _ListOf:
    def __init__(self, item):
        self.item = item

    def to_json(self, values) -> list:
        return [self.item.to_json(v) for v in values]

    def from_json(self, obj, where: str) -> tuple:
        if not isinstance(obj, list):
            raise _wrong(where, "a list", obj)
        return tuple(self.item.from_json(v, f"{where}[{i}]") for i, v in enumerate(obj))


class _Fields:
    """A JSON object with these keys, read into ``make(**values)``.

    Keys in ``vacant`` may be absent (or null): the value is vacant and ``make``'s default applies;
    on output they are left out when vacant (None or empty).
    """

    def __init__(self, make, codecs: dict, vacant: frozenset = frozenset()):
        self.make = make
        self.codecs = codecs
        self.vacant = vacant

    def to_json(self, value) -> dict:
        obj = {}
        for name, codec in self.codecs.items():
            field = getattr(value, name)
            if name in self.vacant and field in (None, ()):
                continue
            obj[name] = codec.to_json(field)
        return obj

    def from_json(self, obj, where: str):
        if not isinstance(obj, dict):
            raise _wrong(where or "frame", "an object", obj)
        unknown = sorted(set(obj) - set(self.codecs))
        if unknown:
            raise MessageError(f"{where or 'frame'}: unknown field {unknown[0]!r}; fields are {', '.join(self.codecs)}")
        values = {}
        for name, codec in self.codecs.items():
            if obj.get(name) is None:
                if name in self.vacant:
                    continue
                if name not in obj:
                    raise MessageError(f"{_at(where, name)}: required field missing")
            values[name] = codec.from_json(obj[name], _at(where, name))
        return self.make(**values)


class _Validity:
    """A validity period as ``{"start": s, "end": e}``, seconds since the epoch."""

    fields = _Fields(dict, {"start": _U32, "end": _U32})

    def to_json(self, value: tuple[int, int]) -> dict:
        return {"start": value[0], "end": value[1]}

    def from_json(self, obj, where: str) -> tuple[int, int]:
        period = self.fields.from_json(obj, where)
        return (period["start"], period["end"])


# The enum an event's sub_code takes its names from depends on the event code.
_SUB_CODE_NAMES = {
    **{code: Origin for code in EventCode if 0x2000 <= code <= 0x26FF},
    **{code: Credential for code in EventCode if 0x1000 <= code <= 0x13FF},
}


def _sub_code(code: int):
    enum = _SUB_CODE_NAMES.get(code)
    return _Enum(enum, 8) if enum else _U8


class _EventFields(_Fields):
    """An event; its sub_code is named as the event code says (Origin, Credential, or a number)."""

    def to_json(self, event: Event) -> dict:
        obj = super().to_json(event)
        obj["sub_code"] = _sub_code(event.code).to_json(event.sub_code)
        return obj

    def from_json(self, obj, where: str) -> Event:
        if isinstance(obj, dict) and "code" in obj and obj.get("sub_code") is not None:
            code = self.codecs["code"].from_json(obj["code"], _at(where, "code"))
            obj = {**obj, "sub_code": _sub_code(code).from_json(obj["sub_code"], _at(where, "sub_code"))}
        return super().from_json(obj, where)


_EVENT = _EventFields(
    Event,
    {"event_id": _U64, "timestamp_ms": _U64, "code": _Enum(EventCode, 16), "sub_code": _U8, "user_id": _TEXT},
)
_USER_RECORD_FIELDS = {
    "user_id": _TEXT,
    "name": _TEXT,
    "pin_hash": _HEX,
    "validity": _Validity(),
    "security_level": _U8,
    "auth_mode": _U8,
    "disabled": _BOOL,
    "access_groups": _ListOf(_U32),
    "cards": _ListOf(_Fields(Card, {"type": _Enum(CardType, 8), "data": _HEX})),
    "fingerprints": _ListOf(
        _Fields(Fingerprint, {"index": _U8, "duress": _BOOL, "template1": _HEX, "template2": _HEX, "format": _TEXT}, vacant=frozenset({"format"}))
    ),
    "faces": _ListOf(_Fields(Face, {"index": _U8, "template": _HEX, "format": _TEXT}, vacant=frozenset({"format"}))),
    "photo": _HEX,
}
_USER_RECORD = _Fields(UserRecord, _USER_RECORD_FIELDS, vacant=frozenset(_USER_RECORD_FIELDS) - {"user_id"})

# How each message field looks in JSON, by its name in protocol.messages; a field not listed is
# an unsigned integer as wide as its declaration.
_MESSAGE_FIELDS = {
    "gateway_nonce": _HEX,
    "terminal_nonce": _HEX,
    "proof": _HEX,
    "model": _TEXT,
    "firmware": _TEXT,
    "after_user_id": _TEXT,
    "more": _BOOL,
    "keep_local_changes": _BOOL,
    "events": _ListOf(_EVENT),
    "users": _ListOf(_USER_RECORD),
    "user_ids": _ListOf(_TEXT),
    "missing": _ListOf(_TEXT),
    "results": _ListOf(_Fields(dict, {"user_id": _TEXT, "status": _Enum(UserStatus, 8)})),
    "entries": _ListOf(_Fields(dict, {"user_id": _TEXT, "digest": _HEX})),
    "code": _Enum(ErrorCode, 16),
    "text": _TEXT,
    "log_epoch": _unsigned(64),
}
# Optional trailing fields: left out of the JSON when absent from the frame.
_OPTIONAL_FIELDS = frozenset({"log_epoch"})


@functools.cache
def _message(command: int, response: bool, error: bool) -> _Fields:
    struct = body_struct(command, response, error, compiled=False)
    fields = [sc for sc in struct.subcons if sc.name]
    return _Fields(dict, {sc.name: _MESSAGE_FIELDS.get(sc.name) or _unsigned(8 * sc.sizeof()) for sc in fields},
                   vacant=_OPTIONAL_FIELDS)


_HEADER = _Fields(
    dict,
    {
        "version": _U8,
        "flags": _FlagNames(),
        "address": _U8,
        "terminal_id": _U32,
        "seq": _U32,
        "command": _Enum(Command, 16),
    },
)
_BODY_KEYS = _ANNOTATIONS | {"message", "payload"}


def frame_to_json(frame: Frame) -> dict:
    """The frame as a JSON-ready dict: header fields, then ``message`` (or the raw ``payload``)."""
    obj = _HEADER.to_json(frame)
    try:
        body = parse_body(frame)
        obj["message"] = _message(frame.command, frame.is_response, frame.is_error).to_json(body)
    except MessageError as exc:
        obj["payload"] = frame.payload.hex()
        obj["message_error"] = str(exc)
    return obj


def frame_from_json(obj: dict) -> Frame:
    """The frame a JSON object describes; MessageError naming the field if it describes none."""
    if not isinstance(obj, dict):
        raise _wrong("frame", "an object", obj)
    if ("message" in obj) == ("payload" in obj):
        raise MessageError("frame: needs exactly one of 'message' (the decoded body) or 'payload' (raw hex)")
    header = _HEADER.from_json({k: v for k, v in obj.items() if k not in _BODY_KEYS}, "")
    flags = header["flags"]
    if "payload" in obj:
        payload = _HEX.from_json(obj["payload"], "payload")
    else:
        codec = _message(header["command"], bool(flags & Flags.RESPONSE), bool(flags & Flags.ERROR))
        body = codec.from_json(obj["message"], "message")
        payload = build_body(header["command"], bool(flags & Flags.RESPONSE), body, error=bool(flags & Flags.ERROR))
    return Frame(payload=payload, **header)


def frame_error_to_json(error: FrameError) -> dict:
    """A decode error as gateway-decode prints it: where the bad bytes start, why, how many."""
    return {"offset": error.offset, "error": error.reason, "skipped": error.skipped}


def is_frame_error_json(obj) -> bool:
    """True for what ``frame_error_to_json`` produces: a line that describes no frame."""
    return isinstance(obj, dict) and "error" in obj


def record_to_json(record: UserRecord) -> dict:
    """A user record in the JSON form, vacant fields left out (a simulated terminal's dump and state file)."""
    return _USER_RECORD.to_json(record)


def record_from_json(obj, where: str = "user") -> UserRecord:
    """The user record a JSON object describes; MessageError naming the field if it describes none."""
    return _USER_RECORD.from_json(obj, where).validate()


def event_to_json(event: Event) -> dict:
    return _EVENT.to_json(event)


def event_from_json(obj, where: str = "event") -> Event:
    return _EVENT.from_json(obj, where)
