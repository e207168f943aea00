"""ZK captures: a session with a device, every chunk of bytes both ways with its time, as JSON
lines (docs/zk.md section "Captures"). ``gateway-check --zk ... --record FILE`` writes one; the
test suite and ``gateway-check --replay FILE`` play one back through the codec and the client.

The first line says what the capture is; each further line is one chunk as it crossed the
socket (one ``send`` or ``recv`` on TCP, one datagram on UDP)::

    {"zk_capture": 1, "transport": "tcp", "device": "10.0.0.61:4370", "started": "2026-12-06T03:40:00Z", "note": ""}
    {"t": 0.000, "dir": "out", "hex": "5050827d08000000e80317fc00000000"}
    {"t": 0.004, "dir": "in",  "hex": "5050827d08000000d007..."}

``t`` is seconds since the first chunk; ``out`` is what the client sent, ``in`` what the device
sent. Chunks, not packets, so a replay meets the same splits the client met; ``packets`` cuts
them into packets as the decoder does.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from protocol.zk.decoder import PacketDecoder
from protocol.zk.errors import PacketError
from protocol.zk.packet import Packet, decode_payload

VERSION = 1
DIRECTIONS = ("out", "in")


class CaptureError(ValueError):
    """A capture file that is not one: the line and what is wrong with it."""


@dataclass(frozen=True)
class Chunk:
    t: float
    direction: str  # "out": client to device; "in": device to client
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Capture:
    transport: str  # "tcp" or "udp"
    device: str
    started: str
    chunks: tuple[Chunk, ...]
    note: str = ""

    def sent_by(self, direction: str) -> list[Chunk]:
        return [c for c in self.chunks if c.direction == direction]


class CaptureWriter:
    """Writes a capture to ``out`` as it happens, a line per chunk, so a session cut short still
    leaves everything up to the cut. Times are given by the caller (no clock here)."""

    def __init__(self, out: IO[str], *, transport: str, device: str, started: str, note: str = ""):
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport is tcp or udp, not {transport!r}")
        self._out = out
        self._first: float | None = None
        self._write(dict(zk_capture=VERSION, transport=transport, device=device, started=started, note=note))

    def record(self, direction: str, data: bytes, now: float) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction is out or in, not {direction!r}")
        if not data:
            return
        if self._first is None:
            self._first = now
        self._write(dict(t=round(now - self._first, 6), dir=direction, hex=data.hex()))

    def _write(self, line: dict) -> None:
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()


def read_capture(lines: Iterable[str]) -> Capture:
    """A capture from its lines; CaptureError naming the line at fault."""
    header, chunks = None, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaptureError(f"line {number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise CaptureError(f"line {number}: not a JSON object")
        if header is None:
            if item.get("zk_capture") != VERSION or item.get("transport") not in ("tcp", "udp"):
                raise CaptureError(f"line {number}: not a ZK capture header of version {VERSION} (zk_capture, transport tcp or udp)")
            header = item
            continue
        try:
            t, direction, data = float(item["t"]), item["dir"], bytes.fromhex(item["hex"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureError(f"line {number}: a chunk needs t (seconds), dir and hex ({exc})") from None
        if direction not in DIRECTIONS:
            raise CaptureError(f"line {number}: dir is out or in, not {direction!r}")
        chunks.append(Chunk(t, direction, data))
    if header is None:
        raise CaptureError("an empty file: no capture header")
    return Capture(header["transport"], str(header.get("device", "")), str(header.get("started", "")), tuple(chunks), str(header.get("note", "")))


def packets(capture: Capture) -> Iterator[tuple[Chunk, Packet | PacketError]]:
    """Every packet (or decode error) of the capture, in order, with the chunk that completed it:
    a stream decoder per direction on TCP, a datagram a packet on UDP."""
    decoders = {d: PacketDecoder() for d in DIRECTIONS}
    for chunk in capture.chunks:
        if capture.transport == "udp":
            try:
                yield chunk, decode_payload(chunk.data)
            except PacketError as exc:
                yield chunk, exc
        else:
            for item in decoders[chunk.direction].feed(chunk.data):
                yield chunk, item
