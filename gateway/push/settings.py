"""``[push]``: the listener for ZKTeco PUSH devices and the devices it admits (docs/zk-push.md).

Declared as msgspec Structs like the rest of the settings (gateway/config.py); off unless the
section is given. A device's terminal id is its ``id``, or the CRC-32 of its serial number: the
same at every start, and what an unknown serial is recorded under.
"""

import ipaddress
import zlib
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.config import ConfigError, Port, Text, U32, checked

PUSH_PORT = 8081  # what ZKBioTime and most ADMS servers listen on: devices are often preset to it


class PushDeviceEntry(Struct, forbid_unknown_fields=True):
    """A ``[[push.devices]]`` entry: a device admitted by its serial number."""

    sn: Text
    id: U32 | UnsetType = UNSET
    name: str = ""
    groups: list[U32] = msgspec.field(default_factory=list)
    # PUSH 2.x has no secret: where the device's requests may come from (CIDR), when known.
    networks: list[Text] = msgspec.field(default_factory=list)
    charset: Text | UnsetType = UNSET  # for lines that are not UTF-8 (older firmware: "gb18030", "cp1252")
    # PUSH 2.x (attendance) or 3.x (access control, "Security PUSH"): "auto" takes what the device shows of itself.
    push_version: Literal["auto", "2", "3"] = "auto"

    @property
    def terminal_id(self) -> int:
        return self.id if self.id is not UNSET else terminal_id_of(self.sn)


class PushEntry(Struct, kw_only=True, forbid_unknown_fields=True):
    """``[push]``: where devices call in, and what the initialization answer tells them."""

    host: str = "0.0.0.0"  # devices call in from the site network, or over the internet
    port: Port = PUSH_PORT
    cert: Text | UnsetType = UNSET  # TLS: the gateway's certificate (PEM), with key
    key: Text | UnsetType = UNSET
    delay_s: Annotated[int, Meta(ge=1, le=3600)] = 10  # Delay: seconds between a device's getrequests
    error_delay_s: Annotated[int, Meta(ge=1, le=3600)] = 30  # ErrorDelay
    realtime: bool = True  # Realtime=1: each record is uploaded as it happens
    timezone_h: Annotated[int, Meta(ge=-12, le=14)] = 0  # TimeZone: the devices' clocks, hours from UTC
    offline_s: Annotated[float, Meta(gt=0)] | UnsetType = UNSET  # silent this long: offline (default 3 × delay_s + 30)
    command_s: Annotated[float, Meta(gt=0)] = 60.0  # a command without a result by then is sent again
    # Reverse proxies in front of the listener (CIDR): a request from one of them is taken to come
    # from the last address of its X-Forwarded-For; that header from anyone else is ignored.
    proxies: list[Text] = msgspec.field(default_factory=list)
    devices: list[PushDeviceEntry] = msgspec.field(default_factory=list)

    @property
    def silent_s(self) -> float:
        return self.offline_s if self.offline_s is not UNSET else 3 * self.delay_s + 30.0


def terminal_id_of(serial: str) -> int:
    return zlib.crc32(serial.encode("utf-8"))


def parse_push(section: dict) -> PushEntry:
    """The ``[push]`` section, checked; ConfigError naming the setting at fault."""
    entry = checked(section, PushEntry, "[push]")
    if (entry.cert is UNSET) != (entry.key is UNSET):
        raise ConfigError("[push]: cert and key go together")
    for network in entry.proxies:
        if not _is_network(network):
            raise ConfigError(f"[push] proxies: {network!r} is not a network such as 10.1.2.0/24")
    seen: dict[str, int] = {}
    for device in entry.devices:
        if device.sn in seen:
            raise ConfigError(f"[push]: device {device.sn} is listed twice")
        seen[device.sn] = device.terminal_id
        for network in device.networks:
            if not _is_network(network):
                raise ConfigError(f"[push] device {device.sn}: {network!r} is not a network such as 10.1.2.0/24")
        if device.charset is not UNSET:
            try:
                "".encode(device.charset)
            except LookupError:
                raise ConfigError(f"[push] device {device.sn}: unknown charset {device.charset!r}") from None
    ids = list(seen.values())
    if len(set(ids)) != len(ids):
        raise ConfigError("[push]: two devices have the same terminal id (give one an id)")
    return entry


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def within(address: str, networks: list[str]) -> bool:
    """Whether ``address`` is in one of ``networks`` (CIDR, checked by ``parse_push``); False for
    what is not an address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
