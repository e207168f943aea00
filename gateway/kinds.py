"""Terminal kinds: the one table each kind of terminal the gateway serves registers in.

A kind says its name (in the API and on the page), its section of the configuration file, the
terminals that section admits, and how their connections are made. The configuration loader,
the terminal registry, the service and the OpenAPI document learn the kinds from here; nothing
else names one. A new kind is a folder of its own and one line in ``REGISTERED`` (as
python-can's interfaces are one line of ``can/interfaces/__init__.py``).
"""

from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults

# name -> "module:attribute" of its TerminalKind, imported on first use.
REGISTERED = {
    "native": "gateway.native.kind:NATIVE",
    "zk": "gateway.zk.kind:ZK",
    "push": "gateway.push.kind:PUSH",
}


@dataclass(frozen=True)
class ConfiguredTerminal:
    """A terminal the configuration admits, as the registry keeps it."""

    id: int
    kind: str
    name: str | None = None
    groups: frozenset[int] = frozenset()
    secret: str | None = None  # what it proves in a native handshake; None for kinds that prove nothing


class Serving(Protocol):
    """The connections of one kind's configured terminals, made and kept while the gateway runs."""

    def start(self) -> None: ...

    def stop(self) -> "Deferred[Any]": ...

    def terminal_online(self, terminal_id: int) -> None:
        """A terminal authenticated on some link (a dialler's backoff starts again)."""
        ...


class TerminalKind(Protocol):
    name: str  # in the API, the page and the OpenAPI enum
    description: str  # what such a terminal is, for people
    section: str  # the configuration file's section that lists them: [[zk]] entries, a [push] table
    # Whether its terminals open native-protocol sessions to the gateway's listeners and buses;
    # one that does not is refused there, whatever secret it shows.
    native_sessions: bool

    def configured(self, section: Any) -> list[ConfiguredTerminal]:
        """The terminals its section admits, checked (ConfigError names the entry and setting at
        fault); ``section`` is the section as the file gave it, None when absent."""
        ...

    def serve(self, section: Any, gateway: Any) -> Serving:
        """What makes and keeps the connections of the configured terminals; started by the
        first gateway process only. ``gateway`` is the running service: a kind takes from it the
        collaborators its connections need (event log, registry, clock) and hands on no more."""
        ...


class ServingEach:
    """A kind's connections kept by one service per terminal, each with ``start`` and ``stop``."""

    def __init__(self, services: list[Any]):
        self.services = services

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self) -> "Deferred[Any]":
        return gatherResults([service.stop() for service in self.services])

    def terminal_online(self, terminal_id: int) -> None:
        """Nothing by default: a service that cares hears it from its own connection."""


@cache
def kinds() -> dict[str, TerminalKind]:
    found = {}
    for name, where in REGISTERED.items():
        module, attribute = where.split(":")
        found[name] = getattr(import_module(module), attribute)
    return found


def kind_of_section(section: str) -> TerminalKind | None:
    return next((kind for kind in kinds().values() if kind.section == section), None)
