"""Message types: the command numbers and the payload each carries, one way and the other.

A request and its response share the command number; the response sets the RESPONSE flag and
echoes the request's sequence number. An error reply sets RESPONSE|ERROR and carries
``ErrorBody`` whatever the command. See docs/protocol.md section "Messages".
"""

from enum import IntEnum

from construct import (
    Bytes,
    Construct,
    Container,
    Flag,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Optional,
    PascalString,
    PrefixedArray,
    Struct,
    Terminated,
)

from protocol.errors import ErrorCode, MessageError
from protocol.events import EventWire
from protocol.frame import Flags, Frame, encode_frame
from protocol.hot_bodies import build_event_ack, read_event_batch, read_user_results
from protocol.compiling import LengthChecked
from protocol.records import UserId, UserRecordWire

NONCE_SIZE = 16
PROOF_SIZE = 32
MAX_BATCH_EVENTS = 256  # events in one EVENTS request (docs/protocol.md, "Events")
MAX_ERROR_TEXT = 1000  # characters of an error reply's text
# The largest payload a terminal may send before WELCOME: a HELLO answer with the longest model
# and firmware strings, or an error reply with the longest text (4 UTF-8 bytes a character).
MAX_HANDSHAKE_PAYLOAD = max(1 + 255 + 1 + 255 + 1 + 4 + 4 + NONCE_SIZE + PROOF_SIZE, 2 + 2 + 4 * MAX_ERROR_TEXT)


class Command(IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    KEEPALIVE = 0x03
    POLL = 0x04
    TIME_SYNC = 0x05
    EVENTS = 0x10
    REQUEST_EVENTS = 0x11
    GET_USERS = 0x20
    PUT_USERS = 0x21
    DELETE_USERS = 0x22
    LIST_USERS = 0x23


class UserStatus(IntEnum):
    """Per-user outcome of PUT_USERS and DELETE_USERS."""

    OK = 0
    NOT_FOUND = 1
    INVALID = 2
    STORAGE_FULL = 3
    LOCAL_CHANGE_PENDING = 4  # kept the terminal's copy: changed at the keypad, not fetched yet


def _body(*fields) -> Construct:
    return Struct(*fields, Terminated)


Empty = _body()
EventBatch = _body("events" / PrefixedArray(Int16ub, EventWire))
UserResults = _body("results" / PrefixedArray(Int8ub, Struct("user_id" / UserId, "status" / Int8ub)))
UserIds = _body("user_ids" / PrefixedArray(Int8ub, UserId))
ErrorBody = _body("code" / Int16ub, "text" / LengthChecked(PascalString(Int16ub, "utf8")))

REQUESTS: dict[Command, Construct] = {
    Command.HELLO: _body("gateway_nonce" / Bytes(NONCE_SIZE), "protocol_version" / Int8ub),
    Command.WELCOME: _body(
        "proof" / Bytes(PROOF_SIZE), "server_time_ms" / Int64ub, "keepalive_s" / Int16ub, "ack_through" / Int64ub
    ),
    Command.KEEPALIVE: Empty,
    Command.POLL: _body("ack_through" / Int64ub, "max_events" / Int16ub),
    Command.TIME_SYNC: _body("server_time_ms" / Int64ub),
    Command.EVENTS: EventBatch,
    Command.REQUEST_EVENTS: _body("after_event_id" / Int64ub),
    Command.GET_USERS: UserIds,
    Command.PUT_USERS: _body("keep_local_changes" / Flag, "users" / PrefixedArray(Int8ub, UserRecordWire)),
    Command.DELETE_USERS: UserIds,
    Command.LIST_USERS: _body("after_user_id" / UserId, "limit" / Int16ub),
}

RESPONSES: dict[Command, Construct] = {
    Command.HELLO: _body(
        "model" / PascalString(Int8ub, "utf8"),
        "firmware" / PascalString(Int8ub, "utf8"),
        "protocol_version" / Int8ub,
        "max_users" / Int32ub,
        "max_events" / Int32ub,
        "terminal_nonce" / Bytes(NONCE_SIZE),
        "proof" / Bytes(PROOF_SIZE),
        # Optional trailing field (docs/protocol.md, "Event log identity"): terminals of the first
        # firmware generation end the answer at ``proof``; the gateway reads them as ``None``.
        "log_epoch" / Optional(Int64ub),
    ),
    Command.WELCOME: Empty,
    Command.KEEPALIVE: Empty,
    Command.POLL: EventBatch,
    Command.TIME_SYNC: _body("terminal_time_ms" / Int64ub),
    Command.EVENTS: _body("ack_through" / Int64ub),
    Command.REQUEST_EVENTS: _body("pending" / Int32ub),
    Command.GET_USERS: _body(
        "users" / PrefixedArray(Int8ub, UserRecordWire), "missing" / PrefixedArray(Int8ub, UserId)
    ),
    Command.PUT_USERS: UserResults,
    Command.DELETE_USERS: UserResults,
    Command.LIST_USERS: _body(
        "entries" / PrefixedArray(Int16ub, Struct("user_id" / UserId, "digest" / Bytes(8))), "more" / Flag
    ),
}

# The bodies a log storm or a sync backlog is made of are compiled; the rest are parsed plainly.
_HOT = {
    (Command.EVENTS, False),
    (Command.EVENTS, True),
    (Command.POLL, True),
    (Command.PUT_USERS, False),
    (Command.PUT_USERS, True),  # one answer per delivery: parsed by the gateway, built by every terminal
    (Command.DELETE_USERS, True),
    (Command.GET_USERS, True),
}
_COMPILED = {
    key: (RESPONSES if key[1] else REQUESTS)[key[0]].compile() for key in sorted(_HOT)
}
_COMPILED_ERROR = ErrorBody.compile()
# The bodies of a lone delivery, read and written with the struct module (protocol/hot_bodies.py);
# what they decline goes to the constructs above.
_STRUCT_READERS = {(Command.EVENTS, False): read_event_batch, (Command.POLL, True): read_event_batch,
                   (Command.PUT_USERS, True): read_user_results, (Command.DELETE_USERS, True): read_user_results}
_STRUCT_BUILDERS = {(Command.EVENTS, True): build_event_ack}


def body_struct(command: int, response: bool, error: bool = False, compiled: bool = True) -> Construct:
    """The construct that reads and writes this kind of payload; MessageError if there is none."""
    if error:
        return _COMPILED_ERROR if compiled else ErrorBody
    try:
        cmd = Command(command)
    except ValueError:
        raise MessageError(f"unknown command 0x{command:02X}") from None
    if compiled and (cmd, response) in _COMPILED:
        return _COMPILED[(cmd, response)]
    return (RESPONSES if response else REQUESTS)[cmd]


def parse_body(frame: Frame) -> Container:
    """The frame's payload as a message body; MessageError, with the reason, if it is not one."""
    reader = None if frame.is_error else _STRUCT_READERS.get((frame.command, frame.is_response))
    body = None if reader is None else reader(frame.payload)
    if body is not None:
        _check_batch(frame.command, frame.is_response, body)
        return body
    struct = body_struct(frame.command, frame.is_response, frame.is_error)
    try:
        body = struct.parse(frame.payload)
    except MessageError:
        raise
    except Exception as exc:  # construct raises many types on hostile input; all mean "bad message"
        kind = "error reply" if frame.is_error else ("response" if frame.is_response else "request")
        raise MessageError(f"bad {command_name(frame.command)} {kind}: {_reason(exc)}") from None
    if not frame.is_error:
        _check_batch(frame.command, frame.is_response, body)
    return body


def _check_batch(command: int, response: bool, body) -> None:
    """The one limit no construct states: an EVENTS request holds at most 256 events."""
    events = body.get("events") if command == Command.EVENTS and not response else None
    if events is not None and len(events) > MAX_BATCH_EVENTS:
        raise MessageError(f"EVENTS request holds {len(events)} events, over the {MAX_BATCH_EVENTS}-event maximum")


def build_body(command: int, response: bool, body: dict, error: bool = False) -> bytes:
    builder = None if error else _STRUCT_BUILDERS.get((command, response))
    payload = None if builder is None else builder(body)
    if payload is not None:
        return payload
    struct = body_struct(command, response, error)
    if not error:
        _check_batch(command, response, body)
    try:
        return struct.build(body)
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"cannot build {command_name(command)}: {_reason(exc)}") from None


def request(command: Command, body: dict | None = None, *, terminal_id=0, seq=0, address=0) -> bytes:
    payload = build_body(command, False, body or {})
    return encode_frame(Frame(command, payload, Flags.REQUEST, terminal_id, seq, address))


def response_frame(to: Frame, body: dict | None = None) -> Frame:
    """The answer to ``to``: same command, sequence number, terminal and address."""
    payload = build_body(to.command, True, body or {})
    return Frame(to.command, payload, Flags.RESPONSE, to.terminal_id, to.seq, to.address)


def error_frame(to: Frame, code: ErrorCode, text: str) -> Frame:
    """An error reply to ``to``; the text is cut to what the wire carries."""
    payload = build_body(to.command, True, dict(code=int(code), text=text[:MAX_ERROR_TEXT]), error=True)
    return Frame(to.command, payload, Flags.RESPONSE | Flags.ERROR, to.terminal_id, to.seq, to.address)


NOTICE_SEQ = 0  # no request ever has it: a frame with it answers none


def replaced_notice(terminal_id: int, address: int, text: str) -> Frame:
    """What the gateway sends on a link a newer authenticated link of the same terminal replaced,
    just before closing it: error REPLACED answering no request (command KEEPALIVE, seq 0)."""
    return error_frame(Frame(Command.KEEPALIVE, b"", Flags.REQUEST, terminal_id, NOTICE_SEQ, address), ErrorCode.REPLACED, text)


def response(to: Frame, body: dict | None = None) -> bytes:
    return encode_frame(response_frame(to, body))


def error_response(to: Frame, code: ErrorCode, text: str) -> bytes:
    return encode_frame(error_frame(to, code, text))


def command_name(command: int) -> str:
    """HELLO, EVENTS, ...; or the number, for a command nobody defined."""
    try:
        return Command(command).name
    except ValueError:
        return f"command 0x{command:02X}"


def _reason(exc: Exception) -> str:
    """One line naming the field and the fault: construct puts the path and the cause on two lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return ": ".join(lines) if lines else type(exc).__name__


PUT_USERS_HEAD = 2  # bytes before the records: the keep_local_changes flag and the user count


def put_users_payload(encoded_records: list[bytes], keep_local_changes: bool) -> bytes:
    """PUT_USERS request payload from records already in their wire encoding.

    Equal to ``build_body(Command.PUT_USERS, False, {"keep_local_changes": ..., "users": records})``;
    the gateway stores records encoded, so a push is a concatenation rather than a decode and
    re-encode.
    """
    if len(encoded_records) > 255:
        raise MessageError(f"PUT_USERS carries at most 255 users, got {len(encoded_records)}")
    return bytes([int(keep_local_changes), len(encoded_records)]) + b"".join(encoded_records)
