"""GatewayConfig: every setting, from defaults, a TOML file, then command-line options.

A file looks like docs/gateway.example.toml. Unknown keys are errors, so a typo never silently
falls back to a default. ``[[serial]]`` entries (RS-485 buses, docs/rs485.md) are checked here and
read as ``SerialBus`` by ``parse_serial``.
"""

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from gateway.database import DEFAULT_URL
from gateway.syncmode import SyncMode
from gateway.terminals import ADMISSION_POLICIES


class ConfigError(ValueError):
    pass


@dataclass
class GatewayConfig:
    db: str = DEFAULT_URL
    tcp_host: str = "0.0.0.0"  # terminals dial in from the site network
    tcp_port: int = 4370
    http_host: str = "127.0.0.1"  # the API stays on loopback unless configured otherwise
    http_port: int = 8080
    api_token: str | None = None
    admission: str = "allowlist"
    default_secret: str | None = None
    sync_mode: str = SyncMode.ALL_WITH_DEVICE_UPDATES.value
    keepalive_s: int = 30
    # [[terminals]] entries: id, secret, optional name, groups (list of ints), dial ("host:port")
    terminals: list[dict] = field(default_factory=list)
    # [[serial]] entries: device (path or pyserial URL), baud, addresses, rs485 options
    serial: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | None, **overrides) -> "GatewayConfig":
        values: dict = {}
        if path:
            try:
                values = tomllib.loads(Path(path).read_text())
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.admission not in ADMISSION_POLICIES:
            raise ConfigError(f"admission must be one of {', '.join(ADMISSION_POLICIES)}, not {self.admission!r}")
        if self.admission == "open" and not self.default_secret:
            raise ConfigError("admission = 'open' needs default_secret (terminals still authenticate)")
        try:
            SyncMode(self.sync_mode)
        except ValueError:
            raise ConfigError(f"sync_mode must be one of {', '.join(m.value for m in SyncMode)}") from None
        seen = set()
        for entry in self.terminals:
            if not isinstance(entry.get("id"), int) or not isinstance(entry.get("secret"), str):
                raise ConfigError(f"each [[terminals]] entry needs an integer id and a string secret: {entry!r}")
            if entry["id"] in seen:
                raise ConfigError(f"terminal {entry['id']} is configured twice")
            seen.add(entry["id"])
            unknown = set(entry) - {"id", "secret", "name", "groups", "dial"}
            if unknown:
                raise ConfigError(f"terminal {entry['id']}: unknown setting(s) {', '.join(sorted(unknown))}")
            if "dial" in entry:
                parse_host_port(entry["dial"])
        devices = [parse_serial(entry).device for entry in self.serial]
        twice = sorted({d for d in devices if devices.count(d) > 1})
        if twice:
            raise ConfigError(f"serial device(s) configured twice: {', '.join(twice)}")


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


# -- [[serial]]: RS-485 buses ---------------------------------------------------------------------

DEFAULT_BAUD = 9600  # what terminals ship with; raise it on short, clean lines (docs/rs485.md)
DEFAULT_BUS_ADDRESSES = tuple(range(1, 9))  # polled when an entry names no addresses (e.g. --serial)
RS485_OPTIONS = {  # pyserial's serial.rs485.RS485Settings, by the names it uses
    "rts_level_for_tx": bool,
    "rts_level_for_rx": bool,
    "delay_before_tx": (int, float),  # seconds
    "delay_before_rx": (int, float),
}
SERIAL_KEYS = {"device", "baud", "addresses", "ids", "echo", "rs485", "answer_within_ms"}


@dataclass(frozen=True)
class SerialBus:
    """One checked ``[[serial]]`` entry: a bus the gateway masters."""

    device: str  # a device path or a pyserial URL (socket://, rfc2217://)
    baud: int = DEFAULT_BAUD
    # (bus address, terminal id expected there or None for any admitted terminal)
    addresses: tuple[tuple[int, int | None], ...] = tuple((a, None) for a in DEFAULT_BUS_ADDRESSES)
    echo: bool = False  # the adapter hands back what the gateway sends: discard it
    rs485: dict | None = None  # RTS direction control, for adapters that do not switch by themselves
    answer_within_ms: int = 100  # how long a terminal may think before its answer starts


def parse_serial(entry: dict) -> SerialBus:
    """A ``[[serial]]`` entry (or ``--serial DEVICE[:BAUD]``) as a SerialBus; ConfigError says what is wrong."""
    device = entry.get("device")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"each [[serial]] entry needs a device (a path or a pyserial URL): {entry!r}")
    unknown = set(entry) - SERIAL_KEYS
    if unknown:
        raise ConfigError(f"serial {device}: unknown setting(s) {', '.join(sorted(unknown))}")
    baud = entry.get("baud")
    if baud is None:
        device, baud = split_baud(device)
    if not isinstance(baud, int) or isinstance(baud, bool) or not 50 <= baud <= 4_000_000:
        raise ConfigError(f"serial {device}: baud must be a whole number of bits per second, not {baud!r}")
    echo = entry.get("echo", False)
    if not isinstance(echo, bool):
        raise ConfigError(f"serial {device}: echo must be true or false")
    answer_ms = entry.get("answer_within_ms", SerialBus.answer_within_ms)
    if not isinstance(answer_ms, int) or isinstance(answer_ms, bool) or answer_ms <= 0:
        raise ConfigError(f"serial {device}: answer_within_ms must be a positive whole number")
    return SerialBus(device, baud, _bus_addresses(device, entry), echo, _rs485(device, entry.get("rs485")), answer_ms)


def split_baud(text: str) -> tuple[str, int]:
    """``DEVICE[:BAUD]`` -> (device, baud). A URL's own ``host:port`` is not mistaken for a baud rate."""
    head, sep, tail = text.rpartition(":")
    has_port = "://" not in head or ":" in head.split("://", 1)[1]
    if sep and head and tail.isdigit() and has_port:
        return head, int(tail)
    return text, DEFAULT_BAUD


def _bus_addresses(device: str, entry: dict) -> tuple[tuple[int, int | None], ...]:
    if "addresses" in entry and "ids" in entry:
        raise ConfigError(f"serial {device}: give either addresses or ids, not both")
    if "ids" in entry:
        ids = entry["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ConfigError(f"serial {device}: ids must be a list of terminal ids (at addresses 1, 2, ...)")
        pairs = [(n, terminal_id) for n, terminal_id in enumerate(ids, start=1)]
    elif "addresses" in entry:
        if not isinstance(entry["addresses"], list):
            raise ConfigError(f"serial {device}: addresses must be a list")
        pairs = [_bus_address(device, item) for item in entry["addresses"]]
    else:
        pairs = [(a, None) for a in DEFAULT_BUS_ADDRESSES]
    addresses = [a for a, _ in pairs]
    for address in addresses:
        if not 1 <= address <= 254:  # 0 means "no bus address" (TCP), 255 is broadcast
            raise ConfigError(f"serial {device}: bus address {address} is outside 1-254")
        if addresses.count(address) > 1:
            raise ConfigError(f"serial {device}: bus address {address} is listed twice")
    if not pairs:
        raise ConfigError(f"serial {device}: no addresses to poll")
    return tuple(pairs)


def _bus_address(device: str, item) -> tuple[int, int | None]:
    if isinstance(item, int) and not isinstance(item, bool):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("address"), int) and set(item) <= {"address", "id"}:
        terminal_id = item.get("id")
        if terminal_id is None or isinstance(terminal_id, int):
            return item["address"], terminal_id
    raise ConfigError(f"serial {device}: an address is a number or {{address = N, id = TERMINAL}}, not {item!r}")


def _rs485(device: str, options) -> dict | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        raise ConfigError(f"serial {device}: rs485 must be a table of RTS settings")
    if "://" in device:
        raise ConfigError(f"serial {device}: rs485 settings apply to a local adapter; a converter switches direction itself")
    for key, value in options.items():
        kind = RS485_OPTIONS.get(key)
        if kind is None:
            raise ConfigError(f"serial {device}: unknown rs485 setting {key} (known: {', '.join(RS485_OPTIONS)})")
        if not isinstance(value, kind) or (kind is not bool and (isinstance(value, bool) or value < 0)):
            raise ConfigError(f"serial {device}: rs485 {key} has the wrong type or sign: {value!r}")
    return dict(options)
