"""Captures as tests: ``gateway-check --zk ... --record FILE`` writes a session with a device in
the documented format (docs/zk.md section "Captures"), ``gateway-check --replay FILE`` meets that
device's answers again, and packets published from field devices read through the codec as the
people who published them read them."""

import io
import json
from datetime import datetime

import pytest

from protocol.zk.capture import Capture, CaptureError, CaptureWriter, Chunk, packets, read_capture
from protocol.zk.commands import Command, ReplyCode
from protocol.zk.errors import PacketError
from protocol.zk.packet import Packet, encode_payload, encode_tcp
from protocol.zk.realtime import RealtimeAttendance, parse_attendance_events
from protocol.zk.records import decode_attendance, parse_attendance_table
from test_check_zk import gateway_check, zk_terminal  # noqa: F401 (a fixture)

# Published by people with the devices, in the issues where they asked for help.
# kurenai-ryu/pyzk #8: a QF-001 (Ver 6.60 Aug 23 2014, ZEM600_TFT), EF_ATTLOG data of 32 bytes.
QF001_EVENT = "3131343030363400000000000000000000000000000000000f00120b1d0c3703"
# bulentv/js_zklib #50: a device on Ver 6.60 Aug 17 2015, a UDP DATA datagram of its attendance
# log as the reporter pasted it (cut off at the end: the checksum no longer matches). The records
# are the 16-byte form, starting 4 bytes into the data.
VER660_2015_LOG = (
    "dd05b4e67b0002000000000015000000ec154f2300000000000000001000000095164f2300000000000000000b000000c1194f23000000000000"
    "00000d000000521b4f2300000000000000000d000000521b4f2300000000000000000c0000005c1b4f2300000000000000000c0000005d1b4f23"
    "00000000000000001d000000611c4f23000000000000000008000000661c4f23000000000000000009000000051d4f230000000000000000040000"
    "007e1e4f230000000000000000040000007f1e4f230000000000000000140000002b1f4f2300000000000000001300000067214f230000000000"
    "0000000e0000003c234f23000000000000000020000000be254f2300000000000000000a0000001e294f23000000000000000002000000fb294f23"
    "0000000000000000170000002f2b4f23000000000000000007000000832d4f2300000000000000001b000000f92d4f2300000000000000001b0000"
    "00fa2d4f2300000000000000001a00000064394f2300000000000000001a00000066394f23000000000000000006000000064f4f23000000000000"
    "000006000000074f4f2300000000000000001600000082824f2300000000000000001600000085824f2301000000000000001600000086824f2301"
    "000000000000000b0000007c844f2301000000000000000800000032864f2301000000000000001500000025874f2301000000000000000d000000"
    "9e8b4f2301000000000000000d0000009f8b4f2301000000000000000d000000a08b4f2301000000000000000c000000168c4f2301000000000000"
    "0009000000a08d4f23010000000000000014000000f4914f2301000000000000001e00000049924f230100000000"
)


def test_a_published_32_byte_event_reads_as_its_reporter_was_told():
    events, skipped = parse_attendance_events(bytes.fromhex(QF001_EVENT))
    assert skipped is None
    assert events == [RealtimeAttendance("1140064", datetime(2018, 11, 29, 12, 55, 3), verify_type=15, punch=0)]


def test_a_published_16_byte_attendance_log_reads_whole_records_of_june_2018():
    datagram = bytes.fromhex(VER660_2015_LOG)
    data = datagram[8 + 4 :]
    whole = len(data) // 16
    records = [decode_attendance(data[i : i + 16]) for i in range(0, whole * 16, 16)]
    assert whole == 38 and records[0].user_id == "21" and records[0].timestamp == datetime(2018, 6, 6, 7, 31, 56)
    assert all(r.uid is None and r.user_id.isdigit() and r.timestamp.year == 2018 and r.timestamp.month == 6 for r in records)
    # As a table whose count says one more, with the cut-off tail: the 16-byte records, said twice.
    body = data[: whole * 16 + 5]
    table = parse_attendance_table(len(body).to_bytes(4, "little") + body, whole + 1)
    assert table.records == tuple(records) and table.record_size == 16 and len(table.problems) == 2
    [(_, cut_off)] = packets(Capture("udp", "", "", (Chunk(0, "in", datagram),)))
    assert isinstance(cut_off, PacketError) and "checksum 0xE6B4 is wrong" in cut_off.reason, "as pasted, it is no packet"


def test_a_capture_is_written_as_it_happens_and_read_back_packet_by_packet():
    out = io.StringIO()
    writer = CaptureWriter(out, transport="tcp", device="10.0.0.61:4370", started="2026-12-06T04:00:00Z", note="F19 at the door")
    request, answer = encode_tcp(Packet(Command.GET_VERSION, 7, 1)), encode_tcp(Packet(ReplyCode.ACK_OK, 7, 1, b"Ver 6.60\0"))
    writer.record("out", request, now=100.0)
    writer.record("in", answer[:5], now=100.25)
    writer.record("in", answer[5:], now=100.5)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0]) == dict(zk_capture=1, transport="tcp", device="10.0.0.61:4370", started="2026-12-06T04:00:00Z",
                                        note="F19 at the door")
    assert json.loads(lines[2]) == dict(t=0.25, dir="in", hex=answer[:5].hex())
    capture = read_capture(lines)
    assert [(c.t, c.direction) for c in capture.chunks] == [(0.0, "out"), (0.25, "in"), (0.5, "in")]
    assert [(chunk.t, item) for chunk, item in packets(capture)] == [
        (0.0, Packet(Command.GET_VERSION, 7, 1)), (0.5, Packet(ReplyCode.ACK_OK, 7, 1, b"Ver 6.60\0"))]
    udp = read_capture([json.dumps(dict(zk_capture=1, transport="udp")), json.dumps(dict(t=0, dir="in", hex=encode_payload(Packet(2000)).hex()))])
    assert [item for _, item in packets(udp)] == [Packet(2000)]


@pytest.mark.parametrize("lines, message", [
    ([], "an empty file: no capture header"),
    (['{"zk_capture": 2, "transport": "tcp"}'], "line 1: not a ZK capture header of version 1"),
    (['{"zk_capture": 1, "transport": "tcp"}', "[1]"], "line 2: not a JSON object"),
    (['{"zk_capture": 1, "transport": "tcp"}', "{"], "line 2: not JSON"),
    (['{"zk_capture": 1, "transport": "tcp"}', '{"t": 0, "dir": "out", "hex": "zz"}'], "line 2: a chunk needs t (seconds), dir and hex"),
    (['{"zk_capture": 1, "transport": "tcp"}', '{"t": 0, "dir": "sideways", "hex": ""}'], "line 2: dir is out or in, not 'sideways'"),
])
def test_a_file_that_is_no_capture_is_refused_naming_the_line(lines, message):
    with pytest.raises(CaptureError) as refused:
        read_capture(lines)
    assert str(refused.value).startswith(message)


def test_a_recorded_session_replays_to_the_same_checks(zk_terminal, tmp_path):  # noqa: F811
    port = zk_terminal("--users", "6", "--firmware", "count-plus-one", "--serial", "REC-1")
    record = tmp_path / "device.jsonl"
    live = gateway_check("--zk", f"127.0.0.1:{port}", "--record", str(record))
    assert live.returncode == 0, live.stdout + live.stderr
    assert "NOTE the device sent other than it announced, read as far as it goes: user table of 432 bytes does not hold the 7 records" \
        in live.stdout
    capture = read_capture(record.read_text().splitlines())
    assert capture.transport == "tcp" and capture.device == f"127.0.0.1:{port}"
    decoded = [item for _, item in packets(capture)]
    assert decoded and not [item for item in decoded if isinstance(item, PacketError)]
    assert {Command.CONNECT, Command.PREPARE_BUFFER, Command.EXIT} <= {p.command for p in decoded}
    replayed = gateway_check("--replay", str(record))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout.splitlines()[1:] == [line for line in live.stdout.splitlines() if not line.startswith("session recorded")]


def test_a_udp_device_passes_every_check_and_a_bad_replay_file_is_one_line(zk_terminal, tmp_path):  # noqa: F811
    port = zk_terminal("--users", "30", "--transport", "udp", "--comm-key", "42")
    result = gateway_check("--zk", f"127.0.0.1:{port}", "--udp", "--comm-key", "42", "--write")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS users: 30 users in 72-byte records" in result.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not a capture\n")
    refused = gateway_check("--replay", str(bad))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "line 1: not JSON" in refused.stderr
