"""The frame: the one envelope every message travels in, on TCP and on RS-485 alike.

Layout (big-endian), see docs/protocol.md section "Frame"::

    sof(2)=A5 5A  version(1)  flags(1)  address(1)  terminal_id(4)  seq(4)
    command(2)  length(4)  header_crc(2)  payload(length)  crc(4)

``header_crc`` is CRC-16/XMODEM over the 19 bytes before it, so a corrupted length is caught
before the decoder waits for a payload that never comes; ``crc`` is CRC-32 (IEEE) over
everything before it.
"""

import binascii
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntFlag

from construct import Const, Int8ub, Int16ub, Int32ub, Struct

from protocol.errors import MessageError

SOF = b"\xa5\x5a"
PROTOCOL_VERSION = 1
# A full user record (5 faces, a photo, 10 fingers) is at most 65,671 bytes; 256 KiB lets a batch
# hold three of them while bounding what a decoder ever buffers for one frame.
MAX_PAYLOAD = 256 * 1024
BROADCAST_ADDRESS = 0xFF

FrameHeader = Struct(
    "sof" / Const(SOF),
    "version" / Int8ub,
    "flags" / Int8ub,
    "address" / Int8ub,
    "terminal_id" / Int32ub,
    "seq" / Int32ub,
    "command" / Int16ub,
    "length" / Int32ub,
    "header_crc" / Int16ub,
)
FrameHeaderCompiled = FrameHeader.compile()
# The same layout for the struct module, which every frame in and out goes through: construct's
# machinery around even the compiled parser costs more than the rest of a small frame's framing
# (benchmarks/codec.py, frame_header_parse: about 30x). FrameHeader stays the declaration; a
# property test keeps the two in step.
HEADER_STRUCT = struct.Struct(">2sBBBIIHIH")
_HEADER_BEFORE_CRC = struct.Struct(HEADER_STRUCT.format[:-1])
HEADER_SIZE = FrameHeader.sizeof()
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE
MAX_FRAME = MAX_PAYLOAD + OVERHEAD


class Flags(IntFlag):
    REQUEST = 0
    RESPONSE = 0x01
    ERROR = 0x02


_RESPONSE, _ERROR = int(Flags.RESPONSE), int(Flags.ERROR)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; ``payload`` is still raw: see ``protocol.messages`` to read it."""

    command: int
    payload: bytes = field(default=b"", repr=False)
    flags: Flags = Flags.REQUEST
    terminal_id: int = 0
    seq: int = 0
    address: int = 0
    version: int = PROTOCOL_VERSION

    # As ints: an IntFlag's & makes a new enum member through the enum machinery, for every frame.
    @property
    def is_response(self) -> bool:
        return bool(int(self.flags) & _RESPONSE)

    @property
    def is_error(self) -> bool:
        return bool(int(self.flags) & _ERROR)


def header_crc(header_without_crc: bytes | memoryview) -> int:
    return binascii.crc_hqx(header_without_crc, 0)


def encode_frame(frame: Frame) -> bytes:
    """Serialise a frame, computing both checksums."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise MessageError(f"payload of {len(frame.payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    try:
        head = _HEADER_BEFORE_CRC.pack(SOF, frame.version, int(frame.flags), frame.address, frame.terminal_id, frame.seq,
                                       int(frame.command), len(frame.payload))
    except struct.error as exc:  # a field out of its range
        fields = dict(version=frame.version, flags=int(frame.flags), address=frame.address, terminal_id=frame.terminal_id,
                      seq=frame.seq, command=int(frame.command), length=len(frame.payload))
        raise MessageError(f"cannot encode frame header {fields}: {exc}") from None
    body = head + header_crc(head).to_bytes(2, "big") + frame.payload
    return body + zlib.crc32(body).to_bytes(CRC_SIZE, "big")
