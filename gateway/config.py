"""GatewayConfig: every setting, from defaults, a TOML file, then command-line options.

A file looks like docs/gateway.example.toml. Unknown keys are errors, so a typo never silently
falls back to a default.
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


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)
