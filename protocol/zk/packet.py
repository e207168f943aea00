"""The ZK packet: an 8-byte header and data, its checksum, and the TCP envelope around it.

Layout (little-endian), see docs/zk.md section "Packets"::

    TCP:  magic(4)=50 50 82 7D  length(4)  payload(length)
    UDP:  payload alone, one per datagram
    payload:  command(2)  checksum(2)  session_id(2)  reply_id(2)  data(length - 8)

``checksum`` is the 16-bit one's-complement of the one's-complement sum of the payload read as
little-endian 16-bit words, with the checksum field zero and an odd last byte padded with zero.
"""

import struct
import sys
from array import array
from dataclasses import dataclass, field

from construct import Const, Int16ul, Int32ul, Struct

from protocol.zk.commands import name_of
from protocol.zk.errors import BodyError, PacketError

MAGIC = b"\x50\x50\x82\x7d"
# The largest payload a decoder buffers. A READ_BUFFER chunk is at most 64 KiB; a device answers
# PREPARE_BUFFER inline only for small tables (about 1 KiB, docs/zk.md), so 1 MiB leaves room for
# firmwares that inline far more while bounding what one device can make us hold.
MAX_PAYLOAD = 1024 * 1024

Envelope = Struct("magic" / Const(MAGIC), "length" / Int32ul)
ENVELOPE_SIZE = Envelope.sizeof()

Header = Struct("command" / Int16ul, "checksum" / Int16ul, "session_id" / Int16ul, "reply_id" / Int16ul)
HEADER_SIZE = Header.sizeof()
# ``Header`` packed with struct: every packet of a poll or a write pass is built and parsed on the
# gateway's reactor thread (and by the emulator), where construct's parse was a tenth of a ZK
# storm's CPU. A test checks that the two agree.
HEADER_STRUCT = struct.Struct("<4H")
_WORDS_LE = sys.byteorder == "little"
MAX_DATA = MAX_PAYLOAD - HEADER_SIZE


@dataclass(frozen=True, slots=True)
class Packet:
    """One ZK packet. For a real-time event ``session_id`` carries the event code."""

    command: int
    session_id: int = 0
    reply_id: int = 0
    data: bytes = field(default=b"", repr=False)

    def __str__(self) -> str:
        return f"{name_of(self.command)} session {self.session_id} reply {self.reply_id}, {len(self.data)} data bytes"


def checksum(payload: bytes | bytearray | memoryview) -> int:
    """The documented checksum of a payload (header and data) whose checksum field is zero."""
    return _folded(_word_sum(payload))


def _word_sum(payload: bytes | bytearray | memoryview) -> int:
    """The plain sum of the payload's little-endian 16-bit words (an odd last byte padded with zero)."""
    view = memoryview(payload).cast("B")
    even = len(view) & ~1
    words = array("H")
    words.frombytes(view[:even])
    if not _WORDS_LE:
        words.byteswap()
    total = sum(words)
    return total + view[even] if even < len(view) else total


def _folded(total: int) -> int:
    while total > 0xFFFF:  # end-around carry, as often as it takes (one fold is not always enough)
        total = (total & 0xFFFF) + (total >> 16)
    return total ^ 0xFFFF


def checksum_accepted(stored: int, documented: int) -> bool:
    """Whether a received checksum passes: the documented value, or one lower.

    One lower is what pyzk's checksum function gives for the same bytes (it wraps at 65535, not
    65536); pyzk itself sends the documented value only because it sums the previous reply id.
    A client copying that function without the quirk sends one lower, so we accept it too.
    """
    return stored == documented or stored == (documented - 1) & 0xFFFF


def encode_payload(packet: Packet) -> bytes:
    """The packet's payload with its documented checksum: what a UDP datagram carries."""
    if len(packet.data) > MAX_DATA:
        raise BodyError(f"{name_of(packet.command)} data of {len(packet.data)} bytes exceeds the {MAX_DATA}-byte maximum")
    try:
        head = HEADER_STRUCT.pack(packet.command, 0, packet.session_id, packet.reply_id)
    except struct.error as exc:  # a field out of range
        raise BodyError(f"cannot encode packet header of {packet!r}: {exc}") from None
    payload = head + packet.data
    return payload[:2] + checksum(payload).to_bytes(2, "little") + payload[4:]


def encode_tcp(packet: Packet) -> bytes:
    """The packet as it travels on TCP: magic, length, payload."""
    payload = encode_payload(packet)
    return MAGIC + len(payload).to_bytes(4, "little") + payload


def decode_payload(payload: bytes | bytearray | memoryview, offset: int = 0) -> Packet:
    """A payload (a UDP datagram, or what a TCP envelope holds) as a packet.

    Raises ``PacketError`` (at ``offset``, the payload's place in the stream) when it is shorter
    than a header or its checksum is wrong.
    """
    if len(payload) < HEADER_SIZE:
        raise PacketError(offset, f"payload of {len(payload)} bytes is shorter than the {HEADER_SIZE}-byte header", len(payload))
    command, stored, session_id, reply_id = HEADER_STRUCT.unpack_from(payload)
    documented = _folded(_word_sum(payload) - stored)  # the sum with the checksum field zero
    if not checksum_accepted(stored, documented):
        raise PacketError(offset, f"checksum 0x{stored:04X} is wrong (0x{documented:04X} expected)", len(payload))
    return Packet(command, session_id, reply_id, bytes(payload[HEADER_SIZE:]))
