"""StreamDecoder: arbitrary byte chunks in, whole frames and decode errors out.

Like Twisted's ``IntNStringReceiver`` it keeps one buffer and an offset and drops the consumed
prefix once per ``feed`` call, never once per frame, so a burst of small frames costs linear
time. A header announcing more than ``max_payload`` bytes is reported and its payload discarded
as it arrives, never buffered.
"""

import zlib

from protocol.errors import FrameError
from protocol.frame import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SOF,
    Flags,
    Frame,
    FrameHeaderCompiled,
    header_crc,
)


class StreamDecoder:
    max_payload = MAX_PAYLOAD

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._discard = 0  # payload bytes of an oversized frame still to throw away

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Take the next chunk of the stream; return what it completed, in stream order."""
        out: list[Frame | FrameError] = []
        if self._discard:
            dropped = min(self._discard, len(data))
            self._discard -= dropped
            self._base += dropped
            data = data[dropped:]
        self._buffer += data
        buf = self._buffer
        pos = 0
        end = len(buf)
        while pos < end:
            start = buf.find(SOF, pos)
            if start < 0:
                # Keep a trailing first byte of SOF: the next chunk may complete it.
                keep = 1 if buf[end - 1] == SOF[0] else 0
                if end - keep > pos:
                    out.append(self._garbage(pos, end - keep))
                pos = end - keep
                break
            if start > pos:
                out.append(self._garbage(pos, start))
                pos = start
            if end - pos < HEADER_SIZE:
                break
            head = bytes(buf[pos : pos + HEADER_SIZE])
            header = FrameHeaderCompiled.parse(head)
            if header_crc(head[:-2]) != header.header_crc:
                out.append(FrameError(self._base + pos, "header CRC mismatch", 1))
                pos += 1
                continue
            if header.version != PROTOCOL_VERSION:
                out.append(FrameError(self._base + pos, f"unsupported protocol version {header.version}", 1))
                pos += 1
                continue
            if header.length > self.max_payload:
                out.append(
                    FrameError(
                        self._base + pos,
                        f"frame announces {header.length} payload bytes, over the {self.max_payload}-byte maximum",
                        HEADER_SIZE + header.length + CRC_SIZE,
                    )
                )
                available = end - pos - HEADER_SIZE
                skip = header.length + CRC_SIZE
                if available >= skip:
                    pos += HEADER_SIZE + skip
                    continue
                self._discard = skip - available
                pos = end
                break
            total = HEADER_SIZE + header.length + CRC_SIZE
            if end - pos < total:
                break
            with memoryview(buf) as view:
                intact = zlib.crc32(view[pos : pos + total - CRC_SIZE]) == int.from_bytes(
                    view[pos + total - CRC_SIZE : pos + total], "big"
                )
                payload = bytes(view[pos + HEADER_SIZE : pos + total - CRC_SIZE]) if intact else b""
            if not intact:
                out.append(FrameError(self._base + pos, "CRC mismatch", 1))
                pos += 1
                continue
            out.append(
                Frame(
                    command=header.command,
                    payload=payload,
                    flags=Flags(header.flags),
                    terminal_id=header.terminal_id,
                    seq=header.seq,
                    address=header.address,
                    version=header.version,
                )
            )
            pos += total
        if pos:
            del buf[:pos]
            self._base += pos
        return out

    def _garbage(self, start: int, stop: int) -> FrameError:
        return FrameError(self._base + start, f"{stop - start} bytes outside any frame skipped", stop - start)
