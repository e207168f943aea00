"""GatewayConfig: every setting, declared once, from defaults, a TOML file, then command-line options.

A file looks like docs/gateway.example.toml. The declarations below are the schema: msgspec
checks types, ranges and unknown keys (a typo never silently falls back to a default) and
stops at the first mistake, which ConfigError states in one line. What no type can say (a
terminal configured twice, ``open`` admission without a secret) is checked after.
``[[terminals]]`` and ``[[serial]]`` entries stay the plain tables that were given, read by key;
``parse_serial`` turns a ``[[serial]]`` entry into a SerialBus (RS-485 buses, docs/rs485.md).
Every other kind of terminal brings its own section (``[[zk]]``: gateway/zk/kind.py), which the
loader learns from gateway/kinds.py and keeps in ``sections``; the kind checks its entries.
"""

import re
import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from gateway.admission import AdmissionPolicy
from gateway.store.database import DEFAULT_URL
from gateway.sync.syncmode import SyncMode
from gateway.kinds import kind_of_section, kinds
from protocol import address
from protocol.address import AddressError


class ConfigError(ValueError):
    pass


Port = Annotated[int, Meta(ge=0, le=65535)]  # 0: any free port (tests)
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]  # terminal ids and access groups, as the wire carries them
Text = Annotated[str, Meta(min_length=1)]


class TerminalEntry(Struct, forbid_unknown_fields=True):
    """A ``[[terminals]]`` entry: a terminal admitted by the configuration."""

    id: U32
    secret: Text
    name: str | UnsetType = UNSET
    groups: list[U32] | UnsetType = UNSET
    dial: str | UnsetType = UNSET  # "host:port" of a terminal the gateway dials out to
    # TLS to a dialled terminal (docs/tls.md): its certificate must be signed by tls_ca and name
    # tls_name (default: the host of dial); tls_cert and tls_key are the gateway's, if it asks.
    tls_ca: Text | UnsetType = UNSET
    tls_name: Text | UnsetType = UNSET
    tls_cert: Text | UnsetType = UNSET
    tls_key: Text | UnsetType = UNSET


class TlsListenerEntry(Struct, kw_only=True, forbid_unknown_fields=True):
    """``[tls]``: a second listener, for terminals that dial in over TLS (docs/tls.md)."""

    host: str | UnsetType = UNSET  # default: tcp_host
    port: Port = 4371
    cert: Text  # the gateway's certificate (PEM), chain included
    key: Text  # its private key (PEM)
    client_ca: Text | UnsetType = UNSET  # terminals must show a certificate this CA signed


class GatewayConfig(Struct, kw_only=True, forbid_unknown_fields=True):
    db: str = DEFAULT_URL
    tcp_host: str = "0.0.0.0"  # terminals dial in from the site network
    tcp_port: Port = 4370
    http_host: str = "127.0.0.1"  # the API stays on loopback unless configured otherwise
    http_port: Port = 8080
    http_process: bool = True  # the API in a process of its own, never waiting on terminals (gateway/http/serve.py)
    api_token: Text | None = None
    admission: AdmissionPolicy = AdmissionPolicy.ALLOWLIST
    default_secret: Text | None = None
    sync_mode: SyncMode = SyncMode.ALL_WITH_DEVICE_UPDATES
    events_keep_days: Annotated[int, Meta(ge=0)] = 0  # events recorded longer ago leave the online log; 0 keeps them all
    events_export_dir: Text | None = None  # where they go first, as gzip JSON lines; unset: they are dropped
    workers: Annotated[int, Meta(ge=1, le=64)] = 1  # gateway processes sharing the ports; above 1 only on PostgreSQL
    keepalive_s: Annotated[int, Meta(gt=0)] = 30
    # Strangers and guessed secrets (gateway/native/doorman.py; docs/protocol.md, "Strangers and guessed secrets")
    max_unauthenticated: Annotated[int, Meta(ge=1)] = 256  # links still shaking hands, in total
    max_unauthenticated_per_address: Annotated[int, Meta(ge=1)] = 64  # the same, from one address (a NAT: a site's terminals after a restart)
    auth_slow_after: Annotated[int, Meta(ge=1)] = 3  # wrong proofs from an address before its proofs are spaced out
    auth_lockout_after: Annotated[int, Meta(ge=1)] = 10  # wrong proofs before an address is locked out (or a terminal id under attack)
    auth_lockout_s: Annotated[float, Meta(gt=0)] = 900.0
    tls: dict | None = None  # a TlsListenerEntry
    terminals: list[dict] = msgspec.field(default_factory=list)  # each a TerminalEntry
    serial: list[dict] = msgspec.field(default_factory=list)  # each a SerialEntry
    # Other kinds' sections by name (``[[zk]]``: "zk", ``[push]``: "push"), each checked by its kind (gateway/kinds.py).
    sections: dict[str, Any] = msgspec.field(default_factory=dict)

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
        where = f"config file {path}" if path else "configuration"
        sections = {name: values.pop(name) for name in list(values) if _kind_section(name)}
        config = checked(values, cls, where)
        config.sections.update(sections)
        for name, value in overrides.items():
            if value is None:
                continue
            if _kind_section(name):
                config.sections[name] = value
            else:
                setattr(config, name, value)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every setting, also of a config built in code, and give each its declared type
        (enums, not strings); ConfigError says what is wrong."""
        typed = checked(msgspec.structs.asdict(self), GatewayConfig, "configuration")
        for name in self.__struct_fields__:
            setattr(self, name, getattr(typed, name))
        try:
            url = make_url(self.db)
            url.get_dialect()
        except (ArgumentError, NoSuchModuleError):
            raise ConfigError(f"db must be a database URL such as {DEFAULT_URL} or postgresql+psycopg2://user:pass@host/db, "
                              f"not {self.db!r}") from None
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            folder = Path(url.database).parent
            if not folder.is_dir():
                raise ConfigError(f"db {self.db!r}: there is no folder {folder} for the SQLite file (make it first)")
        if self.workers > 1 and make_url(self.db).get_backend_name() != "postgresql":
            raise ConfigError(f"workers = {self.workers} needs a PostgreSQL database: SQLite takes one writing process "
                              f"(db = postgresql+psycopg2://user:pass@host/db, or workers = 1)")
        if self.admission == AdmissionPolicy.OPEN and not self.default_secret:
            raise ConfigError("admission = 'open' needs default_secret (terminals still authenticate)")
        if self.tls is not None:
            checked(self.tls, TlsListenerEntry, "[tls]")
        seen: set[int] = set()
        for section in self.sections:
            if kind_of_section(section) is None:
                raise ConfigError(f"unknown section {section}: terminals are configured in "
                                  f"{', '.join(k.section for k in kinds().values())}")
        for kind in kinds().values():
            for terminal in kind.configured(self.section(kind.section)):
                if terminal.id in seen:
                    raise ConfigError(f"terminal {terminal.id} is configured twice (the ids of every section are terminal ids)")
                seen.add(terminal.id)
        devices = [parse_serial(entry).device for entry in self.serial]
        twice = sorted({d for d in devices if devices.count(d) > 1})
        if twice:
            raise ConfigError(f"serial device(s) configured twice: {', '.join(twice)}")

    def configured_ids(self) -> set[int]:
        """The terminals this configuration admits, of every kind."""
        return {t.id for kind in kinds().values() for t in kind.configured(self.section(kind.section))}

    def section(self, name: str) -> Any:
        """One kind's section as given (None when absent); ``[[terminals]]``, our own protocol's, is declared above."""
        return self.terminals if name == "terminals" else self.sections.get(name)


def _kind_section(name: str) -> bool:
    """A section some kind of terminal declares ([[zk]]), beyond the settings declared above."""
    return name not in GatewayConfig.__struct_fields__ and kind_of_section(name) is not None


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (protocol/address.py), or ConfigError saying what was given."""
    try:
        return address.parse_host_port(text)
    except AddressError as exc:
        raise ConfigError(str(exc)) from None


# -- [[serial]]: RS-485 buses ---------------------------------------------------------------------

DEFAULT_BAUD = 9600  # what terminals ship with; raise it on short, clean lines (docs/rs485.md)
DEFAULT_BUS_ADDRESSES = tuple(range(1, 9))  # polled when an entry names no addresses (e.g. --serial)
BusAddress = Annotated[int, Meta(ge=1, le=254)]  # 0 means "no bus address" (TCP), 255 is broadcast
Seconds = Annotated[float, Meta(ge=0)]


class PinnedAddress(Struct, forbid_unknown_fields=True):
    """``{address = N, id = TERMINAL}``: the terminal expected at a bus address."""

    address: BusAddress
    id: U32 | None = None


class RS485Entry(Struct, forbid_unknown_fields=True):
    """pyserial's serial.rs485.RS485Settings, by the names it uses: RTS direction control."""

    rts_level_for_tx: bool = True
    rts_level_for_rx: bool = False
    delay_before_tx: Seconds | None = None
    delay_before_rx: Seconds | None = None


class SerialEntry(Struct, forbid_unknown_fields=True):
    """A ``[[serial]]`` entry, or ``--serial DEVICE[:BAUD]``."""

    device: Text  # a device path or a pyserial URL (socket://, rfc2217://); "DEVICE:BAUD" without baud
    baud: Annotated[int, Meta(ge=50, le=4_000_000)] | UnsetType = UNSET
    addresses: list[BusAddress | PinnedAddress] | UnsetType = UNSET
    ids: list[U32] | UnsetType = UNSET  # terminals at addresses 1, 2, ...
    echo: bool = False  # the adapter hands back what the gateway sends: discard it
    rs485: RS485Entry | None = None
    answer_within_ms: Annotated[int, Meta(gt=0)] = 100  # how long a terminal may think before its answer starts


@dataclass(frozen=True)
class SerialBus:
    """One checked ``[[serial]]`` entry: a bus the gateway masters."""

    device: str
    baud: int = DEFAULT_BAUD
    # (bus address, terminal id expected there or None for any admitted terminal)
    addresses: tuple[tuple[int, int | None], ...] = tuple((a, None) for a in DEFAULT_BUS_ADDRESSES)
    echo: bool = False
    rs485: dict | None = None  # RTS direction control, for adapters that do not switch by themselves
    answer_within_ms: int = 100


def parse_serial(entry: dict) -> SerialBus:
    """A ``[[serial]]`` entry (or ``--serial DEVICE[:BAUD]``) as a SerialBus; ConfigError says what is wrong."""
    device = entry.get("device")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"each [[serial]] entry needs a device (a path or a pyserial URL): {entry!r}")
    bus = checked(entry, SerialEntry, f"serial {device}")
    baud = bus.baud
    if baud is UNSET:
        device, baud = split_baud(device)
    if bus.rs485 is not None and "://" in device:
        raise ConfigError(f"serial {device}: rs485 settings apply to a local adapter; a converter switches direction itself")
    rs485 = msgspec.to_builtins(bus.rs485) if bus.rs485 is not None else None
    return SerialBus(device, baud, _bus_addresses(device, bus), bus.echo, rs485, bus.answer_within_ms)


def split_baud(text: str) -> tuple[str, int]:
    """``DEVICE[:BAUD]`` -> (device, baud). A URL's own ``host:port`` is not mistaken for a baud rate."""
    head, sep, tail = text.rpartition(":")
    has_port = "://" not in head or ":" in head.split("://", 1)[1]
    if sep and head and tail.isdigit() and has_port:
        return head, int(tail)
    return text, DEFAULT_BAUD


def _bus_addresses(device: str, bus: SerialEntry) -> tuple[tuple[int, int | None], ...]:
    if bus.addresses is not UNSET and bus.ids is not UNSET:
        raise ConfigError(f"serial {device}: give either addresses or ids, not both")
    if bus.ids is not UNSET:
        pairs = [(n, terminal_id) for n, terminal_id in enumerate(bus.ids, start=1)]
    elif bus.addresses is not UNSET:
        pairs = [(a.address, a.id) if isinstance(a, PinnedAddress) else (a, None) for a in bus.addresses]
    else:
        pairs = [(a, None) for a in DEFAULT_BUS_ADDRESSES]
    if not pairs:
        raise ConfigError(f"serial {device}: no addresses to poll")
    addresses = [a for a, _ in pairs]
    twice = sorted({a for a in addresses if addresses.count(a) > 1})
    if twice:
        raise ConfigError(f"serial {device}: bus address {twice[0]} is listed twice")
    return tuple(pairs)


# -- one line per mistake -------------------------------------------------------------------------


def checked(value, kind: type, where: str):
    """``value`` converted to ``kind``; ConfigError naming ``where`` and the setting at fault."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_plain(str(exc), kind)}") from None


_TYPE_NAMES = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false",
               "array": "a list", "object": "a table"}
_GIVEN_NAMES = {**_TYPE_NAMES, "bool": "a boolean", "null": "nothing"}
_BOUNDS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}


def _plain(message: str, kind: type) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.terminals[0].id`" in words an operator reads."""
    text, _, at = message.partition(" - at `$")
    path = at.rstrip("`").lstrip(".")
    if found := re.fullmatch(r"Object contains unknown field `(.+)`", text):
        return f"unknown setting {_join(path, found[1])}"
    if found := re.fullmatch(r"Object missing required field `(.+)`", text):
        return f"{_join(path, found[1])} is required"
    if found := re.fullmatch(r"Expected `(.+?)`, got `(.+)`", text):
        expected = " or ".join(_TYPE_NAMES.get(t, t) for t in found[1].split(" | ") if t != "null")
        return f"{path or 'the file'} must be {expected}, not {_GIVEN_NAMES.get(found[2], found[2])}"
    if found := re.fullmatch(r"Expected `.+?` (>=|<=|>|<) (\S+)", text):
        return f"{path} must be {_BOUNDS[found[1]]} {found[2]}"
    if found := re.fullmatch(r"Expected `.+?` of length (>=|<=) (\S+)", text):
        return f"{path} must not be empty" if found[2] == "1" else f"{path} length must be {_BOUNDS[found[1]]} {found[2]}"
    if text.startswith("Invalid enum value"):
        choices = _enum_choices(kind, path)
        return f"{path} must be one of {', '.join(choices)}" if choices else f"{path}: {text}"
    return f"{path}: {text}" if path else text


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _enum_choices(kind: type, name: str) -> list[str]:
    for item in msgspec.structs.fields(kind) if isinstance(kind, type) and issubclass(kind, Struct) else ():
        if item.name == name and isinstance(item.type, type) and issubclass(item.type, Enum):
            return [member.value for member in item.type]
    return []
