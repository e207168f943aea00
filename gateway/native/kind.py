"""Our own kind of terminal: listed in ``[[terminals]]``, it proves its secret in a native
handshake over TCP, TLS or an RS-485 bus; the gateway dials those that listen (``dial``)."""

from msgspec import UNSET
from gateway.config import ConfigError, TerminalEntry, checked, parse_host_port
from gateway.kinds import ConfiguredTerminal, ServingEach
from gateway.native.tcp import TerminalDialer
from gateway.native.tls import client_options


class NativeKind:
    name = "native"
    description = "a terminal speaking the gateway's own protocol"
    section = "terminals"
    native_sessions = True

    def configured(self, entries: list[dict]) -> list[ConfiguredTerminal]:
        return [_configured(entry, n) for n, entry in enumerate(entries, start=1)]

    def serve(self, entries: list[dict], gateway) -> "Dialers":
        return Dialers([TerminalDialer(gateway.reactor, entry["dial"], entry["id"], gateway.new_session, _dial_tls(entry))
                        for entry in entries if "dial" in entry])


class Dialers(ServingEach):
    """The terminals the gateway dials: each kept connected by its own TerminalDialer."""

    def terminal_online(self, terminal_id: int) -> None:
        """Its backoff starts again only once the terminal authenticated, not at every connect."""
        for dialer in self.services:
            if dialer.terminal_id == terminal_id:
                dialer.authenticated()


def _configured(entry: dict, n: int) -> ConfiguredTerminal:
    named = f"terminal {entry['id']}" if isinstance(entry, dict) and isinstance(entry.get("id"), int) else f"[[terminals]] entry {n}"
    terminal = checked(entry, TerminalEntry, named)
    if terminal.dial is not UNSET:
        try:
            parse_host_port(terminal.dial)
        except ConfigError as exc:
            raise ConfigError(f"{named}: dial {exc}") from None
    tls = [name for name in ("tls_ca", "tls_name", "tls_cert", "tls_key") if getattr(terminal, name) is not UNSET]
    if tls and (terminal.tls_ca is UNSET or terminal.dial is UNSET):
        raise ConfigError(f"{named}: {', '.join(tls)} need tls_ca and dial (TLS is for a terminal the gateway dials)")
    if (terminal.tls_cert is UNSET) != (terminal.tls_key is UNSET):
        raise ConfigError(f"{named}: tls_cert and tls_key go together")
    return ConfiguredTerminal(terminal.id, NATIVE.name, terminal.name or None, frozenset(terminal.groups or ()), terminal.secret)


def _dial_tls(entry: dict):
    """Client TLS options for a dialled terminal with ``tls_ca``; None for plain TCP."""
    if "tls_ca" not in entry:
        return None
    return client_options(entry.get("tls_name") or parse_host_port(entry["dial"])[0], entry["tls_ca"],
                          entry.get("tls_cert"), entry.get("tls_key"))


NATIVE = NativeKind()
