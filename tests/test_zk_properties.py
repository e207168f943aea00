"""Property tests of the ZK codec: random packets and records round-trip, hostile bytes only ever
give the documented errors, and compiled declarations read and write like their plain ones."""

from dataclasses import fields, replace
from datetime import datetime

import pytest
from construct import ConstructError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.zk import bodies, realtime
from protocol.zk.commkey import MAX_COMM_KEY, commkey_matches, make_commkey
from protocol.zk.decoder import PacketDecoder
from protocol.zk.errors import BodyError, PacketError
from protocol.zk.packet import HEADER_STRUCT, MAGIC, Header, Packet, checksum, checksum_accepted, decode_payload, encode_payload, encode_tcp
from protocol.zk.records import (
    Attendance8Wire,
    Attendance16Wire,
    Attendance40Wire,
    ATTENDANCE_WIRES,
    AttendanceRecord,
    Template,
    TemplateHead,
    TemplateHeadCompiled,
    User,
    User28Compiled,
    User28Wire,
    User72Compiled,
    User72Wire,
    build_attendance_table,
    build_template_table,
    build_user_table,
    decode_attendance,
    decode_time,
    decode_user,
    encode_attendance,
    encode_time,
    encode_user,
    ParsedTable,
    parse_attendance_table,
    parse_template_table,
    parse_user_table,
)

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def u(bits: int):
    return st.integers(0, (1 << bits) - 1)


def text(max_bytes: int):
    """Text that fits ``max_bytes`` of UTF-8 and holds no NUL (a NUL ends a field)."""
    return st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=max_bytes).filter(
        lambda s: len(s.encode()) <= max_bytes
    )


packets = st.builds(Packet, u(16), u(16), u(16), st.binary(max_size=300))
moments = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59, 59)).map(lambda d: d.replace(microsecond=0))
users72 = st.builds(User, u(16), text(24), text(24), u(8), text(8), u(32), text(7))
users28 = st.builds(User, u(16), u(32).map(str), text(8), u(8), text(5), u(32), u(8).map(str))
templates = st.builds(Template, u(16), st.integers(0, 9), st.binary(min_size=1, max_size=600), st.sampled_from([0, 1, 3]))
punches40 = st.builds(AttendanceRecord, u(16), text(24), moments, u(8), u(8), st.just(0))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def feed_all(chunks: list[bytes], max_payload: int = PacketDecoder.max_payload) -> list:
    decoder, out = PacketDecoder(), []
    decoder.max_payload = max_payload
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


@BOUNDED
@given(st.lists(packets, min_size=1, max_size=5), st.lists(st.integers(0, 2000), max_size=8))
def test_packets_round_trip_through_any_chunking(sent, cuts):
    stream = b"".join(encode_tcp(p) for p in sent)
    assert feed_all(chunked(stream, cuts)) == sent


@BOUNDED
@given(packets)
def test_a_udp_payload_round_trips(packet):
    assert decode_payload(encode_payload(packet)) == packet


@BOUNDED
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_random_bytes_give_only_packets_and_packet_errors(noise, cuts):
    out = feed_all(chunked(MAGIC + noise, cuts) + chunked(noise, cuts))
    assert all(isinstance(item, (Packet, PacketError)) for item in out)
    offsets = [item.offset for item in out if isinstance(item, PacketError)]
    assert offsets == sorted(offsets)


@BOUNDED
@given(packets, packets, st.integers(0, 10_000), st.integers(1, 255))
def test_a_corrupted_byte_costs_at_most_its_own_packet(first, second, where, flip):
    stream = bytearray(encode_tcp(first))
    stream[where % len(stream)] ^= flip
    # A corrupted length may swallow what follows it, up to the maximum payload (small here);
    # once that much has arrived, the stream resyncs and later packets are found again.
    following = [encode_tcp(second)] * (1 + 1024 // len(encode_tcp(second)) + 1)
    out = feed_all([bytes(stream), *following], max_payload=1024)
    assert all(isinstance(item, (Packet, PacketError)) for item in out)
    assert out[-1] == second


@BOUNDED
@given(packets, packets, st.integers(1, 10_000))
def test_a_truncated_packet_is_skipped_and_the_stream_resyncs(first, second, keep):
    whole = encode_tcp(first)
    cut = whole[: keep % len(whole)]
    following = [encode_tcp(second)] * (1 + 1024 // len(encode_tcp(second)) + 1)
    out = feed_all([cut, *following], max_payload=1024)
    assert out[-1] == second


def test_a_length_over_the_maximum_is_reported_and_skipped_not_buffered():
    decoder = PacketDecoder()
    huge = MAGIC + (decoder.max_payload + 1).to_bytes(4, "little")
    out = decoder.feed(huge + encode_tcp(Packet(2000, 1, 2)))
    assert isinstance(out[0], PacketError) and "over the" in out[0].reason
    assert out[-1] == Packet(2000, 1, 2)
    assert decoder.buffered == 0


def test_checksums_one_lower_are_accepted_and_others_are_not():
    payload = bytearray(encode_payload(Packet(1000)))
    documented = int.from_bytes(payload[2:4], "little")
    for stored, accepted in [(documented, True), ((documented - 1) & 0xFFFF, True), ((documented + 1) & 0xFFFF, False), ((documented - 2) & 0xFFFF, False)]:
        payload[2:4] = stored.to_bytes(2, "little")
        if accepted:
            assert decode_payload(payload) == Packet(1000)
        else:
            with pytest.raises(PacketError):
                decode_payload(payload)
    assert checksum_accepted(0xFFFF, 0) and not checksum_accepted(0xFFFE, 0)


@BOUNDED
@given(st.binary(max_size=300))
def test_checksum_is_the_ones_complement_of_the_ones_complement_sum(data):
    total = sum(int.from_bytes((data + b"\0")[i : i + 2], "little") for i in range(0, len(data), 2))
    assert (checksum(data) + total) % 0xFFFF == 0  # checksum = -sum in one's complement


@BOUNDED
@given(users72)
def test_72_byte_users_round_trip(user):
    raw = encode_user(user)
    assert len(raw) == 72 and decode_user(raw) == user
    assert User72Compiled.parse(raw) == User72Wire.parse(raw)
    fields = dict(User72Wire.parse(raw))
    fields.pop("_io", None)
    assert User72Compiled.build(fields) == User72Wire.build(fields) == raw
    assert encode_user(replace(user, record=b"")) == User72Wire.build(fields), "the fast writer writes what the declarations declare"


@BOUNDED
@given(users28)
def test_28_byte_users_round_trip(user):
    raw = encode_user(user, 28)
    assert len(raw) == 28 and decode_user(raw) == user
    assert User28Compiled.parse(raw) == User28Wire.parse(raw)


@BOUNDED
@given(st.binary(min_size=72, max_size=72), st.binary(min_size=28, max_size=28))
def test_any_bytes_of_record_size_read_as_a_user_and_write_back_as_read(raw72, raw28):
    for raw in (raw72, raw28):
        user = decode_user(raw)
        again = encode_user(user, len(raw))
        assert decode_user(again) == user  # padding, and bytes after a NUL, are not kept
    declared = User72Wire.parse(raw72)  # the fast reader reads what the declarations declare
    assert decode_user(raw72) == User(declared.uid, declared.user_id, declared.name, declared.privilege, declared.password,
                                      declared.card, declared.group_id)
    declared = User28Wire.parse(raw28)
    assert decode_user(raw28) == User(declared.uid, str(declared.user_id), declared.name, declared.privilege, declared.password,
                                      declared.card, str(declared.group))


@BOUNDED
@given(st.lists(templates, max_size=5))
def test_template_tables_round_trip(items):
    assert parse_template_table(build_template_table(items)) == ParsedTable(tuple(items), 0)


@BOUNDED
@given(templates)
def test_compiled_template_head_agrees(t):
    raw = build_template_table([t])[4:10]
    assert TemplateHeadCompiled.parse(raw) == TemplateHead.parse(raw)


@BOUNDED
@given(st.lists(users72, max_size=5), st.lists(punches40, max_size=5))
def test_user_and_attendance_tables_round_trip(users, punches):
    assert parse_user_table(build_user_table(users), len(users)) == ParsedTable(tuple(users), 72)
    for size in (40, 49):
        assert parse_attendance_table(build_attendance_table(punches, size), len(punches)) == ParsedTable(tuple(punches), size if punches else 40)


@BOUNDED
@given(st.lists(users72, max_size=5), st.lists(users72, max_size=5))
def test_a_user_table_read_with_the_users_of_the_last_reads_the_same_and_decodes_only_new_records(before, after):
    last = parse_user_table(build_user_table(before), len(before)).records
    known = {user.record: user for user in last}
    table = build_user_table(after)
    again = parse_user_table(table, len(after), known)
    assert again == parse_user_table(table, len(after))
    assert all(user is known[user.record] for user in again.records if user.record in known), "a record met again is not decoded again"


@BOUNDED
@given(u(16), u(32), moments, u(8), u(8), u(32))
def test_every_attendance_form_keeps_what_it_carries(uid, number, moment, verify_type, punch, workcode):
    record = AttendanceRecord(uid, str(number), moment, verify_type, punch, workcode)
    assert decode_attendance(encode_attendance(record, 8)) == AttendanceRecord(uid, None, moment, verify_type, punch)
    assert decode_attendance(encode_attendance(record, 16)) == AttendanceRecord(None, str(number), moment, verify_type, punch, workcode)
    assert decode_attendance(encode_attendance(record, 40)) == AttendanceRecord(uid, str(number), moment, verify_type, punch)
    assert decode_attendance(encode_attendance(record, 49)) == AttendanceRecord(uid, str(number), moment, verify_type, punch)
    for size, plain in ((8, Attendance8Wire), (16, Attendance16Wire), (40, Attendance40Wire)):
        raw = encode_attendance(record, size)
        assert ATTENDANCE_WIRES[size].parse(raw) == plain.parse(raw)


@BOUNDED
@given(moments)
def test_zk_time_round_trips(moment):
    assert decode_time(encode_time(moment)) == moment


@BOUNDED
@given(u(32))
def test_any_u32_is_a_time_or_a_body_error(value):
    try:
        moment = decode_time(value)
    except BodyError:
        return
    if moment.year <= 2099:
        assert encode_time(moment) == value


@BOUNDED
@given(st.binary(max_size=400), st.integers(0, 20))
def test_hostile_bodies_raise_only_body_error(data, count):
    # Events are read as far as they go, whatever they hold: never an error; tables too, unless
    # shorter than their own size prefix.
    events, _skipped = realtime.parse_attendance_events(data)
    assert isinstance(events, list)
    readers = [
        lambda: parse_user_table(data, count),
        lambda: parse_template_table(data),
        lambda: parse_attendance_table(data, count),
        lambda: bodies.parse_upload(data),
        lambda: bodies.parse_sizes(data),
        lambda: bodies.parse_buffer_request(data),
        lambda: bodies.parse_buffer_info(data),
        lambda: bodies.parse_chunk_request(data),
        lambda: bodies.parse_option_assignment(data),
        lambda: bodies.parse_uid_finger(data),
        lambda: bodies.parse_user_id_finger(data),
        lambda: realtime.parse_enrolled_finger(data),
    ]
    for read in readers:
        try:
            read()
        except BodyError:
            pass


@BOUNDED
@given(st.lists(users72, max_size=3), st.lists(templates, max_size=4))
def test_uploads_round_trip(users, items):
    assert bodies.parse_upload(bodies.build_upload(users, items)) == (users, items)


@BOUNDED
@given(text(24), moments.filter(lambda m: m.year <= 2099), u(8), u(8), st.sampled_from([32, 36, 37, 52]))
def test_realtime_attendance_round_trips_in_every_text_form(user_id, moment, verify_type, punch, size):
    event = realtime.RealtimeAttendance(user_id, moment, verify_type, punch)
    raw = realtime.encode_attendance_event(event, size)
    assert len(raw) == size and realtime.parse_attendance_events(raw) == ([event], None)
    if size == 52:
        assert realtime.parse_attendance_events(raw * 2) == ([event, event], None)


@BOUNDED
@given(st.integers(0, MAX_COMM_KEY), st.integers(0, MAX_COMM_KEY), u(16), u(8))
def test_a_comm_key_proof_matches_its_key_only(key, other, session_id, ticks):
    proof = make_commkey(key, session_id, ticks)
    assert commkey_matches(key, session_id, proof)
    assert commkey_matches(other, session_id, proof) == (other == key)


@BOUNDED
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=14, max_size=14))
def test_the_sizes_structs_agree_with_the_declarations(counts):
    sizes = bodies.Sizes(*counts)
    values = {f.name: getattr(sizes, f.name) for f in fields(bodies.Sizes)}
    encoded = bodies.SizesWire.build(values) + bodies.FacesWire.build(values)
    assert bodies.encode_sizes(sizes) == encoded
    assert bodies.parse_sizes(encoded) == sizes
    assert bodies.parse_sizes(encoded[: bodies.SIZES_SIZE]) == replace(sizes, faces=0, faces_capacity=0)


@BOUNDED
@given(u(16), st.integers(0, 15), st.integers(0, 9), u(32), u(32), u(32))
def test_the_upload_structs_agree_with_the_declarations(uid, valid, fid, offset, users_size, table_size):
    entry = dict(marker=bodies.UPLOAD_MARKER, uid=uid, kind=valid << 4 | fid, offset=offset)
    assert bodies.UPLOAD_ENTRY_STRUCT.pack(*entry.values()) == bodies.UploadEntry.build(entry)
    head = dict(users_size=users_size, table_size=table_size, templates_size=offset)
    assert bodies.UPLOAD_HEAD_STRUCT.pack(*head.values()) == bodies.UploadHead.build(head)


@BOUNDED
@given(st.integers(max_value=-1) | st.integers(min_value=1 << 16), st.integers(0, 15), st.integers(0, 9))
def test_an_upload_entry_out_of_range_is_refused_as_the_declaration_refuses_it(uid, valid, fid):
    with pytest.raises(ConstructError):
        bodies.UploadEntry.build(dict(marker=bodies.UPLOAD_MARKER, uid=uid, kind=valid << 4 | fid, offset=0))
    with pytest.raises(BodyError):
        bodies.build_upload([], [Template(uid, fid, b"\x01", valid)])


def test_the_header_struct_agrees_with_the_declaration():
    raw = encode_payload(Packet(1503, 7, 9, b"x"))[:8]
    parsed = Header.parse(raw)
    assert HEADER_STRUCT.unpack(raw) == (parsed.command, parsed.checksum, parsed.session_id, parsed.reply_id)
    assert HEADER_STRUCT.pack(*HEADER_STRUCT.unpack(raw)) == Header.build(parsed)
