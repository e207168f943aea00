"""The ZKTeco wire protocol, with no I/O: packets, checksum, comm key, records, command bodies,
real-time events and a sans-I/O client conversation. docs/zk.md is its spec.

Pure like the rest of protocol/: the gateway's ZK driver, the emulated device in simulator/zk/
and the tools share it.
"""

from protocol.zk.client import Framing, State, ZkClient
from protocol.zk.commands import Command, EventFlag, Privilege, ReplyCode, Table
from protocol.zk.commkey import commkey_matches, make_commkey
from protocol.zk.decoder import PacketDecoder
from protocol.zk.errors import BodyError, LocalProtocolError, PacketError
from protocol.zk.packet import MAX_PAYLOAD, Packet, checksum, decode_payload, encode_payload, encode_tcp
from protocol.zk.records import AttendanceRecord, Template, User

__all__ = [
    "AttendanceRecord",
    "BodyError",
    "Command",
    "EventFlag",
    "Framing",
    "LocalProtocolError",
    "MAX_PAYLOAD",
    "Packet",
    "PacketDecoder",
    "PacketError",
    "Privilege",
    "ReplyCode",
    "State",
    "Table",
    "Template",
    "User",
    "ZkClient",
    "checksum",
    "commkey_matches",
    "decode_payload",
    "encode_payload",
    "encode_tcp",
    "make_commkey",
]
