"""PacketDecoder: a TCP byte stream from a ZK peer in, whole packets and decode errors out.

Like protocol.decoder.StreamDecoder it keeps one buffer and drops the consumed prefix once per
``feed``, so a burst of small packets costs linear time, and reports bad bytes as values. A ZK
envelope has no header check of its own, so any fault (a length over ``max_payload`` or under a
header, a wrong checksum) skips one byte and resyncs on the next magic: a corrupted length must
not make us swallow or wait for bytes that belong to the packets after it.
"""

from protocol.zk.errors import PacketError
from protocol.zk.packet import ENVELOPE_SIZE, HEADER_SIZE, MAGIC, MAX_PAYLOAD, Packet, decode_payload


class PacketDecoder:
    max_payload = MAX_PAYLOAD

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet | PacketError]:
        """Take the next chunk of the stream; return what it completed, in stream order."""
        out: list[Packet | PacketError] = []
        self._buffer += data
        buf = self._buffer
        pos, end = 0, len(buf)
        while pos < end:
            start = buf.find(MAGIC, pos)
            if start < 0:
                keep = _magic_prefix_at_end(buf, pos, end)
                if end - keep > pos:
                    out.append(self._garbage(pos, end - keep))
                pos = end - keep
                break
            if start > pos:
                out.append(self._garbage(pos, start))
                pos = start
            if end - pos < ENVELOPE_SIZE:
                break
            length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
            if length < HEADER_SIZE or length > self.max_payload:
                limit = f"under the {HEADER_SIZE}-byte header" if length < HEADER_SIZE else f"over the {self.max_payload}-byte maximum"
                out.append(PacketError(self._base + pos, f"envelope announces {length} payload bytes, {limit}", 1))
                pos += 1
                continue
            total = ENVELOPE_SIZE + length
            if end - pos < total:
                break
            try:
                with memoryview(buf) as view:
                    packet = decode_payload(view[pos + ENVELOPE_SIZE : pos + total], self._base + pos)
            except PacketError as exc:
                out.append(PacketError(exc.offset, exc.reason, 1))
                pos += 1
                continue
            out.append(packet)
            pos += total
        if pos:
            del buf[:pos]
            self._base += pos
        return out

    def _garbage(self, start: int, stop: int) -> PacketError:
        return PacketError(self._base + start, f"{stop - start} bytes outside any packet skipped", stop - start)


def _magic_prefix_at_end(buf: bytearray, pos: int, end: int) -> int:
    """How many trailing bytes could be the start of a magic the next chunk completes."""
    for keep in range(min(len(MAGIC) - 1, end - pos), 0, -1):
        if buf[end - keep : end] == MAGIC[:keep]:
            return keep
    return 0
