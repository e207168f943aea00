"""The ZK driver's I/O: one connection to a ZK device over TCP or UDP, and the dialer that keeps
it up.

``ZkLink`` is the thin Twisted shell around ``protocol.zk.client.ZkClient`` that docs/zk.md
describes: bytes in, the client's packets out, one timer at the client's next deadline, and each
operation's end delivered as a Deferred. ``ZkDialer`` keeps one device connected with Twisted's
``ClientService``, redialling with backoff, and says why the device is unreachable. On UDP a
"connection" is a connected datagram socket (``_DatagramLink``) that hands ZkLink one datagram
at a time, as the client's UDP framing wants; everything above it is the same.
"""

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from protocol.errors import ProtocolError
from protocol.zk.client import MAX_TRANSFER, OPERATION_LIMIT_S, REQUEST_LIMIT_S, Framing, ZkClient
from protocol.zk.commands import name_of
from protocol.zk.errors import BodyError, LocalProtocolError
from protocol.zk.events import DeviceQuirk, OverLimit, ProtocolViolation, RealtimeEvent, RequestFailed, TimedOut

log = Logger(namespace="gateway.zk")


class DeviceRefused(ProtocolError):
    """The device answered, but not with the result: ``code`` is its reply code (ACK_ERROR,
    ACK_UNKNOWN for a command it lacks, ACK_UNAUTH for a wrong comm key), or None when its
    answer was malformed."""

    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason)
        self.reason, self.code = reason, code


class DeviceLost(ProtocolError):
    """The connection ended (or was ended) before the device answered."""


BUSY = object()  # a released session found the device in another client's hands: nothing was done


@dataclass(frozen=True)
class LinkSettings:
    """How the gateway talks to one device: its ``[[zk]]`` settings of the link (docs/zk.md
    section "Limits"). ``chunk_size`` 0 is the transport's default."""

    transport: Literal["tcp", "udp"] = "tcp"
    timeout_s: float = 10.0
    request_limit_s: float = REQUEST_LIMIT_S
    operation_limit_s: float = OPERATION_LIMIT_S
    max_transfer: int = MAX_TRANSFER
    chunk_size: int = 0

    @classmethod
    def of(cls, entry) -> "LinkSettings":
        """From a ``[[zk]]`` entry (gateway/zk/config.py, ZkEntry)."""
        return cls(entry.transport.value, entry.timeout_s, entry.request_limit_s, entry.operation_limit_s,
                   int(entry.max_transfer_mb * 1024 * 1024), entry.chunk_size)

    def client(self, comm_key: int) -> ZkClient:
        """A fresh conversation for one connection."""
        return ZkClient(comm_key, framing=Framing(self.transport), timeout_s=self.timeout_s, request_limit_s=self.request_limit_s,
                        operation_limit_s=self.operation_limit_s, max_transfer=self.max_transfer, chunk_size=self.chunk_size or None)


class ZkLink(protocol.Protocol):
    """One connection's conversation. ``on_connected()`` hears that the TCP connection is up;
    ``on_realtime(event)`` hears the device's real-time events; ``on_broken(reason)`` hears once
    that the link is unusable (closed, silent past its deadline, over a limit, or sending what is
    no packet); ``on_quirk(quirk)`` hears what the device sent other than it announced, once per
    kind (the client read what it could; the link goes on). Quirks are logged here."""

    def __init__(self, client: ZkClient, clock, *, on_realtime: Callable[[RealtimeEvent], None], on_broken: Callable[[str], None],
                 on_connected: Callable[[], None] = lambda: None, on_quirk: Callable[[DeviceQuirk], None] = lambda quirk: None):
        self.client = client
        self.clock = clock
        self.on_realtime = on_realtime
        self.on_broken = on_broken
        self.on_connected = on_connected
        self.on_quirk = on_quirk
        self.description = "zk"
        self.last_heard_s = clock.seconds()  # when the device last sent anything
        self._waiting: dict[int, defer.Deferred] = {}
        self._timer = None
        self._ended: str | None = None  # why the link is unusable, once it is
        self.lost: defer.Deferred = defer.Deferred()  # fires once the transport is closed

    # -- operations ------------------------------------------------------------------------------

    def run(self, operation: str, *args, **kwargs) -> defer.Deferred:
        """Start one ZkClient operation (``"read_users"``, ``"request"``, ...); fires with its
        result event, or fails with DeviceRefused or DeviceLost."""
        if self._ended is not None:
            return defer.fail(DeviceLost(self._ended))
        try:
            token = getattr(self.client, operation)(*args, now=self.clock.seconds(), **kwargs)
        except BodyError as exc:
            return defer.fail(DeviceRefused(str(exc)))
        except LocalProtocolError as exc:
            return defer.fail(DeviceLost(str(exc)))
        d = self._waiting[token] = defer.Deferred()
        self._flush()
        return d

    def end(self, reason: str) -> None:
        """Close the connection; what waits fails with ``reason``."""
        if self._ended is None:
            self._ended = reason
            self.on_broken(reason)
        if self.transport is not None:
            self.transport.loseConnection()

    # -- Twisted ---------------------------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.description = f"zk {peer.host}:{peer.port}"
        self.on_connected()

    def dataReceived(self, data: bytes):
        if self._ended is not None:
            return
        self.last_heard_s = self.clock.seconds()
        self._dispatch(self.client.receive(data, now=self.clock.seconds()))
        self._flush()

    def connectionLost(self, reason=protocol.connectionDone):
        if self._ended is None:
            self._ended = f"connection lost ({reason.getErrorMessage()})"
            self.on_broken(self._ended)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(DeviceLost(self._ended))
        self.lost.callback(None)

    # -- the client's events ---------------------------------------------------------------------

    def _dispatch(self, events) -> None:
        for event in events:
            if isinstance(event, RealtimeEvent):
                self.on_realtime(event)
            elif isinstance(event, ProtocolViolation):
                self.end(f"the device sent what the protocol does not allow: {event.reason}")
            elif isinstance(event, DeviceQuirk):
                log.warn("{link}: {kind} not as announced, read what could be: {detail}", link=self.description, kind=event.kind, detail=event.detail)
                self.on_quirk(event)
            elif isinstance(event, (TimedOut, OverLimit)):
                reason = event.reason or f"the device did not answer {name_of(event.command)} in time"
                waiting = self._waiting.pop(event.token)
                self.end(reason)  # first: whoever waited hears that the link is over, and why
                waiting.errback(DeviceLost(reason))
            elif isinstance(event, RequestFailed):
                self._waiting.pop(event.token).errback(DeviceRefused(event.reason, event.code))
            else:
                self._waiting.pop(event.token).callback(event)

    def _flush(self) -> None:
        if self._ended is not None:
            return
        packets = self.client.data_to_send()
        if packets:
            self.transport.writeSequence(packets)
        deadline = self.client.next_deadline()
        if self._timer is not None and self._timer.active():
            if deadline is None:
                self._timer.cancel()
                self._timer = None
            elif self._timer.getTime() != deadline:
                # Moved, not made anew: every request moves the deadline, and a reactor moves a
                # call to later without touching its heap (cancelling a hundred devices' calls
                # a request made it rebuild the heap).
                self._timer.reset(max(0.0, deadline - self.clock.seconds()))
            return
        self._timer = None if deadline is None else self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        self._dispatch(self.client.check_deadline(now=self.clock.seconds()))
        self._flush()


class ZkDialer:
    """Keeps one ZK device connected: ``new_link()`` makes each connection's ZkLink (and what
    drives it); ``unreachable(reason)`` hears why a connection could not be made. The backoff
    restarts only once the device came online (``online``), not at every TCP connect, so a
    device that answers but refuses the comm key is not redialled every half second.

    A released session (``[[zk]] session = "released"``) is not kept connected: it asks for
    one link at a time (``dial``), and for the delay before dialling again after a failure
    (``retry_after``)."""

    def __init__(self, reactor, host: str, port: int, new_link: Callable[[], ZkLink], unreachable: Callable[[str], None],
                 transport: Literal["tcp", "udp"] = "tcp"):
        self.host, self.port = host, port
        self.attempts = 0
        self._policy = backoffPolicy(initialDelay=0.5, maxDelay=30)
        self._unreachable = unreachable
        factory = protocol.Factory.forProtocol(new_link)
        factory.noisy = False
        dial = HostnameEndpoint(reactor, host, port) if transport == "tcp" else _DatagramEndpoint(reactor, host, port)
        self._endpoint = _Reporting(dial, self._connect_failed)
        self._service = ClientService(self._endpoint, factory, retryPolicy=self.retry_after, clock=reactor)

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> defer.Deferred:
        return self._service.stopService()

    def online(self) -> None:
        self.attempts = 0

    def retry_after(self, _failed_in_a_row: int = 0) -> float:
        self.attempts += 1
        return self._policy(self.attempts)

    def dial(self, new_link: Callable[[], ZkLink]) -> defer.Deferred:
        """One connection, not kept: fires with its ZkLink once connected, or fails with
        DeviceLost saying why it could not be made."""
        factory = protocol.Factory.forProtocol(new_link)
        factory.noisy = False

        def failed(failure):
            if failure.check(defer.CancelledError):
                return failure
            raise DeviceLost(f"cannot connect to {self.host}:{self.port}: {failure.getErrorMessage()}")

        return self._endpoint.connect(factory).addErrback(failed)

    def _connect_failed(self, failure) -> None:
        self._unreachable(f"cannot connect to {self.host}:{self.port}: {failure.getErrorMessage()}")


class _Reporting:
    """An endpoint that says why a connection attempt failed (ClientService only retries)."""

    def __init__(self, endpoint, on_failure):
        self._endpoint = endpoint
        self._on_failure = on_failure

    def connect(self, factory):
        d = self._endpoint.connect(factory)

        def failed(failure):
            self._on_failure(failure)
            return failure

        return d.addErrback(failed)


class _DatagramEndpoint:
    """Dials a device over UDP: a datagram socket connected to the device (so only its datagrams
    arrive, and an ICMP refusal is heard), carrying one ZkLink. Names are resolved first: a
    connected UDP socket takes an address only."""

    def __init__(self, reactor, host: str, port: int):
        self._reactor, self._host, self._port = reactor, host, port

    @defer.inlineCallbacks
    def connect(self, factory):
        try:
            address = str(ipaddress.ip_address(self._host))
        except ValueError:
            address = yield self._reactor.resolve(self._host)
        link = factory.buildProtocol(IPv4Address("UDP", address, self._port))
        datagrams = _DatagramLink(link, address, self._port)
        self._reactor.listenUDP(0, datagrams, interface="::" if ":" in address else "0.0.0.0")
        return link


class _DatagramLink(protocol.DatagramProtocol):
    """A connected UDP socket as a stream transport for ZkLink: each datagram is one
    ``dataReceived``; ``writeSequence`` sends each packet as a datagram; losing the connection
    closes the socket. UDP has no connection to lose: a device that vanishes is found by the
    client's deadlines, as pyzk finds it."""

    def __init__(self, link: protocol.Protocol, host: str, port: int):
        self._link, self._host, self._port = link, host, port
        self._lost = False

    def startProtocol(self):
        self.transport.connect(self._host, self._port)
        self._link.makeConnection(self)

    def datagramReceived(self, datagram: bytes, addr):
        self._link.dataReceived(datagram)

    def connectionRefused(self):
        self._lose(_REFUSED)

    def stopProtocol(self):
        # The port closed: by _lose, or under us when the reactor found the socket in error
        # (an ICMP refusal read back).
        if not self._lost:
            self._lost = True
            self._tell(_REFUSED)

    # -- the transport ZkLink writes to --

    def write(self, data: bytes) -> None:
        if not self._lost and self.transport is not None:
            self.transport.write(data)

    def writeSequence(self, datagrams) -> None:
        for datagram in datagrams:
            self.write(datagram)

    def getPeer(self):
        return IPv4Address("UDP", self._host, self._port)

    def getHost(self):
        return self.transport.getHost()

    def loseConnection(self) -> None:
        self._lose(None)

    abortConnection = loseConnection

    def _lose(self, why: str | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self.transport is not None:
            self.transport.stopListening()
        self._tell(why)

    def _tell(self, why: str | None) -> None:
        self._link.connectionLost(Failure(ConnectionDone() if why is None else DeviceLost(why)))


_REFUSED = "the device refused the datagram (ICMP port unreachable)"
