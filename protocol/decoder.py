"""StreamDecoder: arbitrary byte chunks in, whole frames and decode errors out.

Like Twisted's ``IntNStringReceiver`` it keeps one buffer and an offset and drops the consumed
prefix once per ``feed`` call, never once per frame, so a burst of small frames costs linear
time. A header announcing more than ``max_payload`` bytes is reported and its payload discarded
as it arrives, never buffered.

Reading is split the way h11 splits its readers: each reader looks at the unread bytes and
either consumes some and says what they were (a frame or a ``FrameError``), or returns None and
consumes nothing because it needs more bytes. Errors are values, not exceptions: a noisy RS-485
line produces them all day, and the next frame after one must still come out.
"""

import zlib
from collections.abc import Iterator

from protocol.errors import FrameError
from protocol.frame import (
    CRC_SIZE,
    HEADER_SIZE,
    HEADER_STRUCT,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SOF,
    Flags,
    Frame,
    header_crc,
)

# What the header reader hands the frame reader: version, flags, address, terminal_id, seq, command, length.
Header = tuple[int, int, int, int, int, int, int]


class StreamDecoder:
    max_payload = MAX_PAYLOAD  # a link sets its own while its peer is unauthenticated

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._pos = 0  # bytes of _buffer the readers consumed during this feed
        self._discard = 0  # payload bytes of an oversized frame still to throw away
        self._after_reject = False  # the bytes skipped next are the rest of a rejected frame

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Take the next chunk of the stream; return what it completed, in stream order."""
        return list(self.read(data))

    def read(self, data: bytes) -> Iterator[Frame | FrameError]:
        """``feed``, one item at a time: the next header is read only once the item before it was
        taken, so a consumer may change ``max_payload`` between two frames of one chunk (a link
        raises it when the handshake ends, and the next frame may already be in this chunk)."""
        self._buffer += self._discard_oversized_payload(data)
        try:
            while (item := self._read_item()) is not None:
                yield item
        finally:
            self._drop_consumed()

    def _read_item(self) -> Frame | FrameError | None:
        """The next frame or error in the unread bytes, or None until more bytes come."""
        skipped = self._skip_to_start_of_frame()
        if skipped is not None:
            return skipped
        header = self._read_header()
        if header is None or isinstance(header, FrameError):
            return header
        frame = self._read_frame(header)
        if isinstance(frame, Frame):
            self._after_reject = False
        return frame

    # -- the readers ---------------------------------------------------------------------------

    def _skip_to_start_of_frame(self) -> FrameError | None:
        """Consume the bytes before the next start of frame and report them; None if there are none."""
        buf, pos, end = self._buffer, self._pos, len(self._buffer)
        if pos >= end:
            return None
        start = buf.find(SOF, pos)
        if start < 0:
            # Keep a trailing first byte of SOF: the next chunk may complete it.
            start = end - 1 if buf[end - 1] == SOF[0] else end
        if start == pos:
            return None
        self._pos = start
        return FrameError(self._base + pos, f"{start - pos} bytes outside any frame skipped", start - pos, continues=self._after_reject)

    def _read_header(self) -> Header | FrameError | None:
        """Check the header at the start of frame, leaving it unread for the frame reader; a bad
        header costs one byte, so the search for the next start of frame resumes right after it."""
        pos = self._pos
        if len(self._buffer) - pos < HEADER_SIZE:
            return None
        head = bytes(self._buffer[pos : pos + HEADER_SIZE])
        # The CRC before the parse: a start-of-frame pattern in line noise fails it, unparsed.
        if header_crc(head[:-2]) != int.from_bytes(head[-2:], "big"):
            return self._reject(1, "header CRC mismatch")
        header = HEADER_STRUCT.unpack(head)[1:-1]  # the start of frame was found, the CRC checked
        version, length = header[0], header[-1]
        if version != PROTOCOL_VERSION:
            return self._reject(1, f"unsupported protocol version {version}")
        if length > self.max_payload:
            return self._reject_oversized(length)
        return header

    def _read_frame(self, header: Header) -> Frame | FrameError | None:
        """Consume the whole frame once its payload and CRC are in, checking the CRC."""
        version, flags, address, terminal_id, seq, command, length = header
        pos = self._pos
        crc_at = pos + HEADER_SIZE + length
        if len(self._buffer) < crc_at + CRC_SIZE:
            return None
        with memoryview(self._buffer) as view:
            if zlib.crc32(view[pos:crc_at]) != int.from_bytes(view[crc_at : crc_at + CRC_SIZE], "big"):
                return self._reject(1, "CRC mismatch")
            payload = bytes(view[pos + HEADER_SIZE : crc_at])
        self._pos = crc_at + CRC_SIZE
        return Frame(command=command, payload=payload, flags=Flags(flags), terminal_id=terminal_id, seq=seq, address=address,
                     version=version)

    # -- what a bad frame costs ------------------------------------------------------------------

    def _reject(self, skipped: int, reason: str) -> FrameError:
        error = FrameError(self._base + self._pos, reason, skipped)
        self._pos += skipped
        self._after_reject = True
        return error

    def _reject_oversized(self, length: int) -> FrameError:
        """Skip the whole frame: what is buffered now, and the rest as it arrives (``_discard``)."""
        total = HEADER_SIZE + length + CRC_SIZE
        error = FrameError(
            self._base + self._pos, f"frame announces {length} payload bytes, over the {self.max_payload}-byte maximum", total
        )
        unread = len(self._buffer) - self._pos
        self._discard = max(0, total - unread)
        self._pos += total - self._discard
        return error

    def _discard_oversized_payload(self, data: bytes) -> bytes:
        """What is left of ``data`` once the rest of an oversized frame is thrown away."""
        if not self._discard:
            return data
        dropped = min(self._discard, len(data))
        self._discard -= dropped
        self._base += dropped
        return data[dropped:]

    def _drop_consumed(self) -> None:
        """Once per feed, never per frame: this copy is what keeps a burst of frames linear."""
        if self._pos:
            del self._buffer[: self._pos]
            self._base += self._pos
            self._pos = 0
