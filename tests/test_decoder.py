"""The streaming decoder: chunking, resync after garbage, oversized frames, linear cost."""

import pytest

from protocol import Command, Event, Flags, Frame, FrameError, MessageError, StreamDecoder, encode_frame, parse_body, request
from protocol.frame import HEADER_SIZE, MAX_PAYLOAD

FRAME = request(Command.KEEPALIVE, terminal_id=9, seq=1)
BIG = encode_frame(Frame(Command.KEEPALIVE, b"x" * 5000, terminal_id=9, seq=2))


def frames(items):
    return [i for i in items if isinstance(i, Frame)]


def errors(items):
    return [i for i in items if isinstance(i, FrameError)]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_any_chunking_yields_the_same_frames(chunk):
    stream = (FRAME + BIG) * 3
    dec = StreamDecoder()
    out = []
    for i in range(0, len(stream), chunk):
        out += dec.feed(stream[i : i + chunk])
    assert [f.seq for f in frames(out)] == [1, 2] * 3
    assert not errors(out)
    assert dec.buffered == 0


def test_garbage_is_reported_with_offset_and_the_next_frame_survives():
    out = StreamDecoder().feed(b"\x00\xa5noise" + FRAME)
    assert [e.offset for e in errors(out)] == [0]
    assert frames(out)[0].seq == 1


def test_bad_crc_is_reported_and_skipped():
    bad = bytearray(BIG)
    bad[HEADER_SIZE + 10] ^= 0xFF
    out = StreamDecoder().feed(bytes(bad) + FRAME)
    assert "CRC mismatch" in errors(out)[0].reason
    assert [f.seq for f in frames(out)] == [1]


def test_corrupted_length_is_caught_by_the_header_crc_without_waiting():
    bad = bytearray(FRAME)
    bad[16] ^= 0x01  # inside the length field
    out = StreamDecoder().feed(bytes(bad) + FRAME)
    assert "header CRC" in errors(out)[0].reason
    assert [f.seq for f in frames(out)] == [1]


def test_oversized_frame_is_rejected_without_buffering_its_payload():
    dec = StreamDecoder()
    dec.max_payload = 1000
    out = dec.feed(BIG[: HEADER_SIZE + 100])
    assert "over the 1000-byte maximum" in errors(out)[0].reason
    assert dec.buffered == 0
    out = []
    for i in range(HEADER_SIZE + 100, len(BIG), 512):
        out += dec.feed(BIG[i : i + 512])
        assert dec.buffered < 600
    out += dec.feed(FRAME)
    assert [f.seq for f in frames(out)] == [1]
    assert not errors(out)


def test_default_maximum_is_stated():
    assert StreamDecoder.max_payload == MAX_PAYLOAD == 256 * 1024


def test_a_header_field_out_of_range_is_a_message_error():
    with pytest.raises(MessageError, match="cannot encode frame header"):
        encode_frame(Frame(Command.KEEPALIVE, b"", Flags.REQUEST, terminal_id=2**32))


def test_an_event_id_beyond_a_signed_64_bit_column_is_a_bad_message():
    """One such event would otherwise fail every group commit it joins, for every terminal."""
    (frame,) = StreamDecoder().feed(request(Command.EVENTS, dict(events=[Event(2**63, 0, 0x1000)])))
    with pytest.raises(MessageError, match="below 2\\*\\*63"):
        parse_body(frame)
