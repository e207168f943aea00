"""Each implementation of an interface, checked against it by the type checker (``make test``
runs mypy over this file): a missing method or a changed signature fails the build, not a
terminal in the field. Nothing here runs."""

from gateway.kinds import Serving, ServingEach, TerminalKind
from gateway.native.kind import NATIVE, Dialers
from gateway.native.session import Link, TerminalSession
from gateway.native.tcp import TcpLink
from gateway.native.bus.link import BusLink
from gateway.push import PushService
from gateway.push.device import PushDevice
from gateway.push.kind import PUSH
from gateway.sync.connection import Admission, EventSink, Presence, TerminalConnection
from gateway.sync.eventlog import EventLog
from gateway.terminals import TerminalRegistry
from gateway.zk.connection import ZkConnection
from gateway.zk.kind import ZK


def terminal_connections(native: TerminalSession, zk: ZkConnection, push: PushDevice) -> list[TerminalConnection]:
    return [native, zk, push]


def what_sessions_are_given(log: EventLog, registry: TerminalRegistry) -> tuple[EventSink, Admission, Presence]:
    return log, registry, registry


def links(tcp: TcpLink, bus: BusLink) -> list[Link]:
    return [tcp, bus]


def kinds() -> list[TerminalKind]:
    return [NATIVE, ZK, PUSH]


def servings(dialers: Dialers, each: ServingEach, push: PushService) -> list[Serving]:
    return [dialers, each, push]
