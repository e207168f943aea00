"""Property tests of the codec: random messages round-trip, hostile bytes never break the decoder,
and every compiled construct reads and writes exactly like its plain declaration."""

import json

import pytest
from construct import Bytes, GreedyBytes, Int8ub, Int16ub, PascalString, Prefixed, StreamError, Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    Card,
    CardType,
    Command,
    Event,
    Face,
    Fingerprint,
    Flags,
    Frame,
    FrameError,
    MessageError,
    StreamDecoder,
    UserRecord,
    build_body,
    encode_frame,
    parse_body,
)
from protocol import hot_bodies, messages
from protocol.events import EventWire
from protocol.frame import HEADER_STRUCT, OVERHEAD, SOF, FrameHeader, FrameHeaderCompiled
from protocol.json_form import frame_from_json, frame_to_json
from protocol.compiling import LengthChecked
from protocol.events import MAX_EVENT_ID
from protocol.records import FINGER_TEMPLATE_SIZE, UserRecordWire

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unsigned(size: int):
    return st.integers(0, (1 << (8 * size)) - 1)


user_ids = st.text(min_size=1, max_size=8)  # at most 32 bytes of UTF-8
short_text = st.text(max_size=20)


def templates(size: int = FINGER_TEMPLATE_SIZE):
    """Varied but cheap: a short random pattern repeated to the template's size."""
    return st.binary(min_size=1, max_size=8).map(lambda pattern: (pattern * size)[:size])


def slots(count: int, item):
    """Up to three distinct slot indexes below ``count``, each holding ``item(index)``."""
    indexes = st.lists(st.integers(0, count - 1), unique=True, max_size=3)
    return indexes.flatmap(lambda chosen: st.tuples(*(item(i) for i in chosen)))


event_ids = st.integers(0, MAX_EVENT_ID)  # ids and times fit a signed 64-bit column (test_decoder covers beyond)
events = st.builds(Event, event_ids, event_ids, unsigned(2), unsigned(1), st.text(max_size=8))
records = st.builds(
    UserRecord,
    user_id=user_ids,
    name=st.none() | st.text(max_size=48),
    pin_hash=st.none() | st.binary(min_size=32, max_size=32),
    validity=st.none() | st.tuples(unsigned(4), unsigned(4)).map(lambda pair: tuple(sorted(pair))),
    security_level=st.none() | unsigned(1),
    auth_mode=st.none() | unsigned(1),
    disabled=st.none() | st.booleans(),
    access_groups=st.lists(unsigned(4), max_size=16, unique=True).map(tuple),
    cards=st.lists(st.builds(Card, st.sampled_from(CardType), st.binary(min_size=1, max_size=32)), max_size=8,
                   unique_by=lambda card: card.card_id).map(tuple),
    fingerprints=st.tuples(
        slots(10, lambda i: st.builds(Fingerprint, st.just(i), templates(), templates(), st.booleans())),
        # another family's fingers and faces: the foreign section and its extension (docs/protocol.md, "User record")
        slots(10, lambda i: st.builds(Fingerprint, st.just(i), st.binary(min_size=1, max_size=64), st.just(b""), st.booleans(), st.just("zk10"))),
    ).map(lambda parts: parts[0] + parts[1]),
    faces=st.tuples(
        slots(5, lambda i: st.builds(Face, st.just(i), st.binary(min_size=1, max_size=64))),
        slots(16, lambda i: st.builds(Face, st.just(i), st.binary(min_size=1, max_size=64), st.sampled_from(["zkface9v58", "zkface2v7"]))),
    ).map(lambda parts: parts[0] + parts[1]),
    photo=st.none() | st.binary(max_size=64),
)

# A value for every message field, by its name in protocol.messages; integers come from the
# declaration's width (see body_values).
FIELD_VALUES = {
    "gateway_nonce": st.binary(min_size=16, max_size=16),
    "terminal_nonce": st.binary(min_size=16, max_size=16),
    "proof": st.binary(min_size=32, max_size=32),
    "model": short_text,
    "firmware": short_text,
    "after_user_id": st.just("") | user_ids,
    "text": st.text(max_size=40),
    "more": st.booleans(),
    "events": st.lists(events, max_size=4),
    "keep_local_changes": st.booleans(),
    "users": st.lists(records, max_size=2),
    "user_ids": st.lists(user_ids, max_size=4),
    "missing": st.lists(user_ids, max_size=4),
    "results": st.lists(st.fixed_dictionaries({"user_id": user_ids, "status": unsigned(1)}), max_size=4),
    "entries": st.lists(
        st.fixed_dictionaries({"user_id": user_ids, "digest": st.binary(min_size=8, max_size=8)}), max_size=4
    ),
    "log_epoch": st.none() | unsigned(8),  # optional trailing field
}

KINDS = [(command, flags) for command in Command for flags in (Flags.REQUEST, Flags.RESPONSE, Flags.RESPONSE | Flags.ERROR)]


def body_values(struct):
    fields = [sc for sc in struct.subcons if sc.name]
    return st.fixed_dictionaries(
        {sc.name: FIELD_VALUES[sc.name] if sc.name in FIELD_VALUES else unsigned(sc.sizeof()) for sc in fields}
    )


@st.composite
def messages_(draw):
    """(frame, body): a valid message of any kind with random header fields."""
    command, flags = draw(st.sampled_from(KINDS))
    response, error = bool(flags & Flags.RESPONSE), bool(flags & Flags.ERROR)
    body = draw(body_values(messages.body_struct(command, response, error, compiled=False)))
    payload = build_body(command, response, body, error)
    frame = Frame(command, payload, flags, draw(unsigned(4)), draw(unsigned(4)), draw(unsigned(1)))
    return frame, body


def feed_in_chunks(data: bytes, cuts: list[int]) -> tuple[list, StreamDecoder]:
    decoder, items, start = StreamDecoder(), [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        items += decoder.feed(data[start:cut])
        start = max(start, cut)
    return items, decoder


def assert_every_byte_accounted_for(items: list, decoder: StreamDecoder, length: int) -> None:
    """Items cover the stream in order with no gap or overlap; what is left is still buffered."""
    position = 0
    for item in items:
        assert isinstance(item, (Frame, FrameError)), item
        if isinstance(item, FrameError):
            assert item.offset == position and item.skipped > 0
            position += item.skipped
        else:
            position += OVERHEAD + len(item.payload)
    assert position + decoder.buffered == length


@BOUNDED
@given(messages_(), st.lists(st.integers(0, 10_000), max_size=6))
def test_any_message_survives_encoding_and_decoding(message, cuts):
    frame, body = message
    items, decoder = feed_in_chunks(encode_frame(frame), cuts)
    assert items == [frame] and decoder.buffered == 0
    assert parse_body(items[0]) == body


@BOUNDED
@given(messages_())
def test_any_message_survives_its_json_form(message):
    frame, _ = message
    obj = json.loads(json.dumps(frame_to_json(frame)))
    assert "message" in obj
    assert frame_from_json(obj) == frame
    assert frame_to_json(frame_from_json(obj)) == obj


@BOUNDED
@given(st.sampled_from(KINDS), st.binary(max_size=64), st.sampled_from([0x00, 0x99, 0xFFFF]))
def test_any_payload_even_invalid_survives_its_json_form(kind, payload, other_command):
    command, flags = kind
    for frame in (Frame(command, payload, flags), Frame(other_command, payload, flags | 0x80)):
        obj = json.loads(json.dumps(frame_to_json(frame)))
        assert encode_frame(frame_from_json(obj)) == encode_frame(frame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@BOUNDED
@given(messages_(), st.data())
def test_a_damaged_json_frame_is_a_message_error_or_still_a_frame(message, data):
    obj = frame_to_json(message[0])
    node = obj
    while True:  # walk down to a random object or list, then damage one of its entries
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and data.draw(st.booleans()):
            del node[key]
        else:
            node[key] = data.draw(json_values)
        break
    try:
        encode_frame(frame_from_json(obj))
    except MessageError:
        pass


@BOUNDED
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_bytes_yield_only_frame_errors_and_every_byte_is_accounted_for(data, cuts):
    items, decoder = feed_in_chunks(data, cuts)
    assert_every_byte_accounted_for(items, decoder, len(data))


def corrupt(data: bytes, how: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, where, extra in how:
        at = where % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << (extra[0] % 8) if extra else 1
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = extra
        elif kind == "drop":
            del out[at : at + 1 + len(extra)]
    return bytes(out)


damage = st.lists(
    st.tuples(st.sampled_from(["flip", "truncate", "insert", "drop"]), st.integers(0, 100_000), st.binary(max_size=6)),
    min_size=1,
    max_size=5,
)


@BOUNDED
@given(
    st.lists(messages_(), min_size=1, max_size=3),
    damage,
    st.lists(messages_(), min_size=1, max_size=2),
    st.lists(st.integers(0, 100_000), max_size=8),
)
def test_corrupt_frames_never_cost_a_valid_frame_that_follows(damaged, how, following, cuts):
    garbage = corrupt(b"".join(encode_frame(f) for f, _ in damaged), how)
    # A damaged frame whose header survived makes the decoder wait for its announced length:
    # the filler frame supplies that many bytes, so the wait ends and the resync finds what follows.
    filler = Frame(Command.KEEPALIVE, bytes(max(len(encode_frame(f)) for f, _ in damaged)), terminal_id=7)
    expected = [f for f, _ in following] + [filler]
    stream = garbage + b"".join(encode_frame(f) for f in expected)
    items, decoder = feed_in_chunks(stream, cuts)
    assert_every_byte_accounted_for(items, decoder, len(stream))
    frames = [item for item in items if isinstance(item, Frame)]
    assert frames[-len(expected) :] == expected
    assert decoder.buffered == 0


# -- compiled constructs against their plain declarations -------------------------------------

BODY_PAIRS = [
    (
        f"{command.name} {'response' if response else 'request'}",
        compiled,
        messages.body_struct(command, response, compiled=False),
    )
    for (command, response), compiled in messages._COMPILED.items()
] + [("error reply", messages._COMPILED_ERROR, messages.ErrorBody)]


def test_the_hot_bodies_are_the_compiled_ones():
    assert set(messages._COMPILED) == messages._HOT
    for command, response in messages._HOT:
        assert messages.body_struct(command, response) is messages._COMPILED[(command, response)]


@pytest.mark.parametrize("command, flags, body", [
    (Command.GET_USERS, Flags.RESPONSE, dict(users=[], missing=["1099"])),
    (Command.POLL, Flags.RESPONSE, dict(events=[Event(1, 2, 0x2000, 2, "1042")])),
    (Command.PUT_USERS, Flags.REQUEST, dict(keep_local_changes=False, users=[UserRecord("1042", photo=b"jpeg")])),
    (
        Command.PUT_USERS,
        Flags.REQUEST,
        dict(keep_local_changes=False, users=[UserRecord("1042", faces=(Face(0, b"ab"),))]),
    ),
])
def test_a_truncated_string_at_the_end_of_a_compiled_body_is_a_bad_message(command, flags, body):
    """construct 2.10 compiles strings to a bare io.read(n) that returns the short tail; they must fail."""
    payload = build_body(command, bool(flags & Flags.RESPONSE), body)[:-1]
    with pytest.raises(MessageError):
        parse_body(Frame(command, payload, flags))


@pytest.mark.parametrize("field, value", [
    (Bytes(4), b"\x00\x01\x02\x03"),
    (PascalString(Int16ub, "utf8"), "Grüße"),
    (Prefixed(Int8ub, GreedyBytes), b"\x00\x01"),
])
def test_a_length_checked_field_compiles_to_a_checked_read(field, value):
    plain = Struct("field" / LengthChecked(field))
    compiled = plain.compile()
    encoded = plain.build(dict(field=value))
    assert compiled.build(dict(field=value)) == encoded
    assert compiled.parse(encoded) == plain.parse(encoded) == dict(field=value)
    assert "linkedparsers[" not in compiled.source and "linkedbuilders[" not in compiled.source
    with pytest.raises(StreamError, match="stream read less than specified amount"):
        compiled.parse(encoded[:-1])


def test_a_compiled_fixed_size_field_refuses_bytes_of_the_wrong_length():
    """construct's compiled Bytes writes whatever it is given; a short PIN hash would shift the record."""
    compiled = Struct("pin_hash" / LengthChecked(Bytes(32))).compile()
    with pytest.raises(StreamError, match="wrong length"):
        compiled.build(dict(pin_hash=bytes(31)))


def outcome(struct, data: bytes):
    try:
        return struct.parse(data)
    except Exception as exc:  # only whether both fail matters: construct's error types differ by design
        return ("failed", MessageError if isinstance(exc, MessageError) else Exception)


@pytest.mark.parametrize("label, compiled, plain", BODY_PAIRS, ids=[label for label, _, _ in BODY_PAIRS])
@BOUNDED
@given(data=st.data())
def test_compiled_bodies_read_and_write_like_the_plain_declaration(label, compiled, plain, data):
    body = data.draw(body_values(plain))
    encoded = plain.build(body)
    assert compiled.build(body) == encoded
    assert compiled.parse(encoded) == plain.parse(encoded) == body
    noise = data.draw(st.binary(max_size=200) | st.just(encoded[:-1]) | st.just(encoded + b"\x00"))
    assert outcome(compiled, noise) == outcome(plain, noise)


# Events and records: compiled once, used compiled by every body, plain only through .defersubcon.
WIRE_PAIRS = [("event", EventWire, events), ("user record", UserRecordWire, records)]


@pytest.mark.parametrize("wire", [wire for _, wire, _ in WIRE_PAIRS], ids=[label for label, _, _ in WIRE_PAIRS])
def test_events_and_records_parse_compiled_all_the_way_down(wire):
    """A field construct cannot compile would quietly run plainly, at several times the cost."""
    assert "linkedparsers[" not in wire.source


@pytest.mark.parametrize("label, wire, values", WIRE_PAIRS, ids=[label for label, _, _ in WIRE_PAIRS])
@BOUNDED
@given(data=st.data())
def test_compiled_events_and_records_read_and_write_like_the_plain_declaration(label, wire, values, data):
    plain = wire.defersubcon
    value = data.draw(values)
    encoded = plain.build(value)
    assert wire.build(value) == encoded
    assert wire.parse(encoded) == plain.parse(encoded) == value
    truncated = encoded[: data.draw(st.integers(0, len(encoded) - 1))]
    assert outcome(wire, truncated) == outcome(plain, truncated) == ("failed", Exception)
    noise = data.draw(st.binary(max_size=200) | st.just(encoded + b"\x00"))
    assert outcome(wire, noise) == outcome(plain, noise)


header_fields = st.fixed_dictionaries(
    {
        "version": unsigned(1),
        "flags": unsigned(1),
        "address": unsigned(1),
        "terminal_id": unsigned(4),
        "seq": unsigned(4),
        "command": unsigned(2),
        "length": unsigned(4),
        "header_crc": unsigned(2),
    }
)


@BOUNDED
@given(header_fields, st.binary(min_size=21, max_size=21), st.booleans())
def test_compiled_frame_header_reads_and_writes_like_the_plain_declaration(fields, raw, starts_right):
    encoded = FrameHeader.build(fields)
    assert FrameHeaderCompiled.build(fields) == encoded
    assert FrameHeaderCompiled.parse(encoded) == FrameHeader.parse(encoded)
    if starts_right:
        raw = SOF + raw[2:]
    assert outcome(FrameHeaderCompiled, raw) == outcome(FrameHeader, raw)


@BOUNDED
@given(header_fields)
def test_the_struct_layout_the_codec_uses_reads_and_writes_like_the_declaration(fields):
    order = ("version", "flags", "address", "terminal_id", "seq", "command", "length", "header_crc")
    encoded = FrameHeader.build(fields)
    assert HEADER_STRUCT.pack(SOF, *(fields[name] for name in order)) == encoded
    assert HEADER_STRUCT.unpack(encoded) == (SOF, *(FrameHeader.parse(encoded)[name] for name in order))


# -- the struct module's readers of a lone delivery's bodies against construct -----------------

EVENT_BATCH = messages.body_struct(Command.EVENTS, False, compiled=False)
EVENT_ACK = messages.body_struct(Command.EVENTS, True, compiled=False)
# An id or a timestamp one past what the database stores: construct refuses it, so must the reader.
too_large = st.builds(lambda ev: Event(MAX_EVENT_ID + 1, ev.timestamp_ms, ev.code, ev.sub_code, ev.user_id), events)


@BOUNDED
@given(data=st.data())
def test_an_event_batch_reads_with_struct_as_with_construct(data):
    body = data.draw(body_values(EVENT_BATCH))
    encoded = EVENT_BATCH.build(body)
    assert hot_bodies.read_event_batch(encoded) == EVENT_BATCH.parse(encoded) == body
    overflow = EVENT_BATCH.build(dict(events=[*body["events"], data.draw(too_large)]))
    noise = data.draw(st.binary(max_size=200) | st.just(encoded[:-1]) | st.just(encoded + b"\x00") | st.just(overflow))
    read = hot_bodies.read_event_batch(noise)
    if read is not None:  # what it takes, construct takes the same way; the rest construct reads
        assert read == EVENT_BATCH.parse(noise)
    elif noise in (encoded[:-1], encoded + b"\x00", overflow):
        assert outcome(EVENT_BATCH, noise)[0] == "failed"


USER_RESULTS = messages.body_struct(Command.PUT_USERS, True, compiled=False)


@BOUNDED
@given(data=st.data())
def test_user_results_read_with_struct_as_with_construct(data):
    body = data.draw(body_values(USER_RESULTS))
    encoded = USER_RESULTS.build(body)
    assert hot_bodies.read_user_results(encoded) == USER_RESULTS.parse(encoded) == body
    noise = data.draw(st.binary(max_size=200) | st.just(encoded[:-1]) | st.just(encoded + b"\x00"))
    read = hot_bodies.read_user_results(noise)
    if read is not None:
        assert read == USER_RESULTS.parse(noise)
    elif noise in (encoded[:-1], encoded + b"\x00"):
        assert outcome(USER_RESULTS, noise)[0] == "failed"


@BOUNDED
@given(st.integers(-1, 2**64) | st.text(max_size=2))
def test_an_event_acknowledgement_builds_with_struct_as_with_construct(ack_through):
    built = hot_bodies.build_event_ack(dict(ack_through=ack_through))
    if built is None:
        with pytest.raises(Exception):
            EVENT_ACK.build(dict(ack_through=ack_through))
    else:
        assert built == EVENT_ACK.build(dict(ack_through=ack_through))
    assert hot_bodies.build_event_ack({}) is None


def test_a_lone_delivery_s_bodies_go_through_the_struct_module_and_the_rest_through_construct():
    batch = EVENT_BATCH.build(dict(events=[Event(7, 1_700_000_000_000, 0x2200, 1, "3-17")]))
    assert messages.parse_body(Frame(Command.EVENTS, batch)) == hot_bodies.read_event_batch(batch)
    assert messages.build_body(Command.EVENTS, True, dict(ack_through=7)) == bytes(7) + b"\x07"
    with pytest.raises(MessageError, match="bad EVENTS request"):
        messages.parse_body(Frame(Command.EVENTS, batch[:-1]))
    answer = USER_RESULTS.build(dict(results=[dict(user_id="3-17", status=0)]))
    assert messages.parse_body(Frame(Command.PUT_USERS, answer, Flags.RESPONSE)) == hot_bodies.read_user_results(answer)
    with pytest.raises(MessageError, match="bad PUT_USERS response"):
        messages.parse_body(Frame(Command.PUT_USERS, answer + b"\x00", Flags.RESPONSE))
    with pytest.raises(MessageError, match="cannot build EVENTS"):
        messages.build_body(Command.EVENTS, True, dict(ack_through=-1))
