"""ZkEntry: a ``[[zk]]`` entry of the configuration file, or ``gateway run --zk HOST[:PORT]``."""

import zlib
from enum import Enum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta, Struct

from gateway.config import U32, ConfigError, Text, checked
from gateway.zk.mapping import CardField
from protocol.address import AddressError, parse_host_port

ZK_PORT = 4370


class ZkTransport(Enum):
    TCP = "tcp"
    UDP = "udp"


class ZkSession(Enum):
    HELD = "held"  # connected for good: real-time events, no dial per poll
    RELEASED = "released"  # connect, poll or write, disconnect: the site's own ZK software can use it between


class ZkEntry(Struct, forbid_unknown_fields=True):
    """A ``[[zk]]`` entry, or ``gateway run --zk HOST[:PORT]``: a ZK device, admitted by being
    configured (it cannot prove a secret; the comm key is the device's own)."""

    id: U32  # the terminal id the gateway uses for it
    host: Text
    port: Annotated[int, Meta(ge=1, le=65535)] = ZK_PORT
    comm_key: Annotated[int, Meta(ge=0, le=999_999)] = 0  # the device's communication password
    name: str = ""
    groups: list[U32] = msgspec.field(default_factory=list)
    poll_s: Annotated[float, Meta(ge=0.1)] = 5.0  # how often its counts are read
    # The link (docs/zk.md section "Limits"): how long the device may fall silent in a request,
    # how long one request may take however its bytes trickle, how long one operation (a table of
    # many chunks) may take in all, how much one transfer may announce,
    # and how many bytes each READ_BUFFER asks (0: 65472 on TCP, 16384 on UDP; less on slow links).
    timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    request_limit_s: Annotated[float, Meta(gt=0)] = 120.0
    operation_limit_s: Annotated[float, Meta(gt=0)] = 600.0
    max_transfer_mb: Annotated[float, Meta(gt=0, le=4096)] = 64.0
    chunk_size: Annotated[int, Meta(ge=0, le=65472)] = 0
    transport: ZkTransport = ZkTransport.TCP  # UDP for the old devices that speak nothing else
    session: ZkSession = ZkSession.HELD  # docs/zk.md, "Sharing the device"
    timezone: str = ""  # the device's time zone, an IANA name ("Europe/Madrid"); "": the gateway's local zone
    set_clock: bool = False  # set the device's clock to the gateway's at connect when it is off
    card: str = "CSN:4"  # which server cards its card field (a u32) carries: CSN:N or WIEGAND:N, N bytes (docs/zk.md)


def parse_zk(entry: dict, n: int = 1) -> ZkEntry:
    """A ``[[zk]]`` entry as a ZkEntry; ConfigError naming the entry and the setting at fault."""
    named = f"zk terminal {entry['id']}" if isinstance(entry, dict) and isinstance(entry.get("id"), int) else f"[[zk]] entry {n}"
    device = checked(entry, ZkEntry, named)
    if device.timezone:
        try:
            ZoneInfo(device.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{named}: timezone {device.timezone!r} is no time zone this machine knows (an IANA name: Europe/Madrid)") from None
    try:
        CardField.parse(device.card)
    except ValueError as exc:
        raise ConfigError(f"{named}: {exc}") from None
    return device


def zk_from_option(where: str, terminal_id: int | None = None, comm_key: int = 0) -> dict:
    """The ``[[zk]]`` entry ``--zk HOST[:PORT]`` stands for; without ``--zk-id`` the id is the
    CRC-32 of ``host:port``, the same at every start."""
    try:
        host, port = parse_host_port(where, ZK_PORT)
    except AddressError:
        raise ConfigError(f"--zk expects HOST[:PORT], got {where!r}") from None
    if terminal_id is None:
        terminal_id = zlib.crc32(f"{host}:{port}".encode())
    return dict(id=terminal_id, host=host, port=int(port), comm_key=comm_key)
