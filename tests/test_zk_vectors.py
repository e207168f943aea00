"""ZK golden vectors: each packet decodes to its JSON and encodes back to its bytes, and packets
captured from a real device (published in adrobinoga/zk-protocol) read as that source says."""

import json

import pytest

from protocol.zk.decoder import PacketDecoder
from protocol.zk.packet import Packet, checksum, encode_tcp
from vectors.zk.generate import CAPTURED, READERS, VECTOR_DIR, build_vectors, describe, render_files

NAMES = sorted(path.stem for path in VECTOR_DIR.glob("*.hex"))


def decode_one(data: bytes) -> Packet:
    items = PacketDecoder().feed(data)
    assert len(items) == 1 and isinstance(items[0], Packet), items
    return items[0]


@pytest.mark.parametrize("name", NAMES)
def test_bytes_decode_to_the_json_and_encode_back(name):
    data = bytes.fromhex((VECTOR_DIR / f"{name}.hex").read_text())
    expected = json.loads((VECTOR_DIR / f"{name}.json").read_text())
    packet = decode_one(data)
    assert describe(packet, expected["kind"], expected["about"]) == expected
    assert encode_tcp(packet) == data


def test_the_files_are_what_generate_py_writes():
    on_disk = {path.name: path.read_text() for path in VECTOR_DIR.iterdir() if path.suffix in (".hex", ".json")}
    assert on_disk == render_files(build_vectors()), "run python tests/vectors/zk/generate.py"


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_captured_packets_read_as_published(name):
    hex_bytes, kind, expected = CAPTURED[name]
    packet = decode_one(bytes.fromhex(hex_bytes))
    assert READERS[kind](packet.data) == expected


def test_captured_packets_carry_the_documented_checksum_exactly():
    for hex_bytes, _, _ in CAPTURED.values():
        payload = bytearray.fromhex(hex_bytes)[8:]
        stored = int.from_bytes(payload[2:4], "little")
        payload[2:4] = b"\0\0"
        assert checksum(payload) == stored


def test_the_worked_checksum_values_of_the_notes():
    # adrobinoga/zk-protocol, "Checksum", test vectors 1 and 2 (checksum field zeroed).
    assert checksum(bytes.fromhex("0b000000f38d03005a4b4661636556657273696f6e00")) == 0x175A
    assert checksum(bytes.fromhex("d0070000f38d0a0009")) == 0x6A29
