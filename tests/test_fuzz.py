"""A million seeded mutations of the golden vectors, in process: the stream decoder, message
bodies and user records meet only the failures their docstrings name.

- ``StreamDecoder.feed`` never raises: it returns frames and ``FrameError`` values, and never
  holds more than one frame's bytes;
- ``parse_body`` raises ``MessageError`` and nothing else;
- a user record that parses is valid, in canonical order, and encodes to bytes that parse to it.

Mutations are the usual ones of a fuzzer (bit flips, random bytes, boundary values in length
fields, cuts, repeats, splices of two vectors), each seeded, so a failure names the mutation
that found it and reproduces. Half the mutated frames get their checksums recomputed: without
that, almost every one would stop at the header CRC and the bodies would never be read.
"""

import random
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from protocol.decoder import StreamDecoder
from protocol.errors import FrameError, MessageError
from protocol.frame import CRC_SIZE, HEADER_SIZE, MAX_FRAME, Frame, header_crc
from protocol.messages import Command, parse_body
from protocol.records import UserRecordWire

VECTORS = [bytes.fromhex(path.read_text()) for path in sorted((Path(__file__).parent / "vectors").glob("*.hex"))]
BOUNDARIES = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]
# 1,000,000 mutations in all; about 40 s on one core of the CI machine (the run prints each part).
DECODER_MUTATIONS = 500_000
BODIES = 300_000
RECORDS = 200_000


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif kind == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3:
            del out[at : at + rng.randint(1, 32)]
        elif kind == 4:  # a boundary value where a length or a count may be
            width = rng.choice((1, 2, 4))
            out[at : at + width] = (rng.choice(BOUNDARIES) & ((1 << 8 * width) - 1)).to_bytes(width, "big")
        elif kind == 5:
            out[at:] = b""
        elif kind == 6 and out:
            start = rng.randrange(len(out))
            piece = out[start : start + rng.randint(1, 64)]
            out[at:at] = piece * rng.randint(1, 4)
        else:
            other = rng.choice(VECTORS)
            cut = rng.randrange(len(other) + 1)
            out[at:] = other[cut:]
    return bytes(out)


def with_checksums(frame: bytes) -> bytes:
    """The mutated frame with its header length and both CRCs made right again, so the decoder
    hands it on and the body parsers see it."""
    if len(frame) < HEADER_SIZE + CRC_SIZE:
        return frame
    out = bytearray(frame)
    out[15:19] = (len(out) - HEADER_SIZE - CRC_SIZE).to_bytes(4, "big")
    out[19:21] = header_crc(bytes(out[:19])).to_bytes(2, "big")
    out[-4:] = zlib.crc32(bytes(out[:-4])).to_bytes(4, "big")
    return bytes(out)


def check_body(frame: Frame) -> int | None:
    """Parse a frame's body, where only MessageError may come out: None for one; otherwise how
    many user records the body held, each checked."""
    try:
        body = parse_body(frame)
    except MessageError:
        return None
    records = []
    if frame.command == Command.GET_USERS and frame.is_response and not frame.is_error:
        records = body.users
    elif frame.command == Command.PUT_USERS and not frame.is_response and not frame.is_error:  # ERROR alone: an error body
        records = body.users
    for record in records:
        assert record == record.validate()
        assert UserRecordWire.parse(UserRecordWire.build(record)) == record
        record.digest()
    return len(records)


def test_the_stream_decoder_takes_any_mutated_stream(report):
    rng, mutations, frames = random.Random(13), 0, 0
    started = time.perf_counter()
    n = 0
    while mutations < DECODER_MUTATIONS:
        n += 1
        pieces = []
        for _ in range(rng.randint(1, 4)):
            piece = mutate(rng, rng.choice(VECTORS))
            pieces.append(with_checksums(piece) if rng.random() < 0.5 else piece)
            mutations += 1
        stream = b"".join(pieces)
        decoder = StreamDecoder()
        pos = 0
        while pos < len(stream):
            step = rng.choice((1, 7, 64, 4096, len(stream)))
            for item in decoder.feed(stream[pos : pos + step]):
                assert isinstance(item, (Frame, FrameError)), f"stream {n}: {item!r}"
                if isinstance(item, Frame):
                    frames += 1
                    check_body(item)
            assert decoder.buffered <= MAX_FRAME, f"stream {n}: {decoder.buffered} bytes held"
            pos += step
    report("decoder", mutations, frames, time.perf_counter() - started)
    assert frames > 10_000  # the mutations reach the body parsers, not only the CRC checks


def test_message_bodies_raise_only_message_error(report):
    rng, parsed = random.Random(14), 0
    frames = [next(iter(StreamDecoder().feed(v))) for v in VECTORS]
    started = time.perf_counter()
    for _ in range(BODIES):
        frame = rng.choice(frames)
        payload = mutate(rng, frame.payload)
        flags = frame.flags if rng.random() < 0.9 else type(frame.flags)(rng.randrange(4))
        command = frame.command if rng.random() < 0.95 else rng.randrange(0x30)
        parsed += check_body(replace(frame, payload=payload, flags=flags, command=command)) is not None
    report("bodies", BODIES, parsed, time.perf_counter() - started)
    assert parsed > BODIES // 100  # the mutations reach the parsers' success paths, not only their refusals


def test_user_records_parse_valid_and_canonical_or_not_at_all(report):
    rng, held = random.Random(15), 0
    records = [f for f in (next(iter(StreamDecoder().feed(v))) for v in VECTORS)
               if f.command in (Command.GET_USERS, Command.PUT_USERS) and not f.is_error]
    started = time.perf_counter()
    for _ in range(RECORDS):
        frame = rng.choice(records)
        held += check_body(replace(frame, payload=mutate(rng, frame.payload))) or 0
    report("records", RECORDS, held, time.perf_counter() - started)
    assert held > 1000  # the mutations reach valid records, not only errors


@pytest.fixture
def report(capsys):
    """Print what a run tried and how long it took: figures, never a pass/fail on time."""
    def say(what: str, tried: int, passed: int, seconds: float) -> None:
        with capsys.disabled():
            print(f"\nfuzz {what}: {tried:,} mutations, {passed:,} parsed through, {seconds:.1f} s")
    return say

