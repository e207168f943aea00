"""The terminal wire protocol, with no I/O: bytes in, frames and messages out, and back.

Both the gateway and the simulator speak through this package; docs/protocol.md is its spec.
"""

from protocol.decoder import StreamDecoder
from protocol.errors import ErrorCode, FrameError, MessageError, ProtocolError, RemoteError
from protocol.events import Credential, Event, EventCode, Origin
from protocol.frame import MAX_PAYLOAD, PROTOCOL_VERSION, Flags, Frame, encode_frame
from protocol.messages import Command, UserStatus, build_body, error_response, parse_body, request, response
from protocol.records import Card, CardType, Face, Fingerprint, UserRecord, hash_pin

__all__ = [
    "Card",
    "CardType",
    "Command",
    "Credential",
    "ErrorCode",
    "Event",
    "EventCode",
    "Face",
    "Fingerprint",
    "Flags",
    "Frame",
    "FrameError",
    "MAX_PAYLOAD",
    "MessageError",
    "Origin",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "RemoteError",
    "StreamDecoder",
    "UserRecord",
    "UserStatus",
    "build_body",
    "encode_frame",
    "error_response",
    "hash_pin",
    "parse_body",
    "request",
    "response",
]
