"""TCP links to terminals, both directions: terminals dialling in to the gateway's port, and the
gateway dialling out to terminals listed in its configuration (reconnecting with backoff).

A ``TcpLink`` turns a connection into the link a ``TerminalSession`` talks through: it feeds
received bytes to a StreamDecoder, hands frames and decode errors to the session, and encodes
the frames the session sends. Sessions come from ``new_session(link, expected_terminal_id)``,
which the gateway gives the listener and the dialers, so a link knows nothing of the gateway.

Until its peer authenticated, a link's decoder takes only frames of a handshake's size (memory
a stranger can hold), and a link the listener accepted holds a stranger's place at the
``Doorman``, which may refuse the connection outright or have it wait for a place: the gateway
says nothing on a waiting link (no HELLO) until it is let in, and refuses one that speaks first.

A link closed is gone within ``CLOSE_GRACE_S`` whatever its peer does: a polite close waits for
the peer to take what was written, and TLS's waits for the TLS handshake to end, which a peer
that never sends a ClientHello never lets happen. A stranger's place is given back at the close.
"""

import fcntl
import struct
import termios

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import protocol, tcp
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, wrapClientTLS
from twisted.logger import Logger

from gateway.config import parse_host_port
from protocol import MAX_PAYLOAD, Frame, StreamDecoder, encode_frame
from protocol.messages import MAX_HANDSHAKE_PAYLOAD

log = Logger(namespace="gateway.tcp")

CLOSE_GRACE_S = 2.0  # what a closed link's peer has to take the last frame (a refusal's reason) before it is cut off


class TcpLink(protocol.Protocol):
    address = 0  # no bus address on TCP
    request_bytes = MAX_PAYLOAD  # how big one request to the terminal may be

    def __init__(self, new_session, clock, expected_terminal_id: int | None = None, doorman=None):
        self._clock = clock
        self._cut_off = None
        self._new_session = new_session
        self.expected_terminal_id = expected_terminal_id
        self._doorman = doorman  # set while this link holds a stranger's place
        self.decoder = StreamDecoder()
        self.decoder.max_payload = MAX_HANDSHAKE_PAYLOAD
        self.session = None
        self.waiting = False  # for a stranger's place at the doorman
        self.description = "tcp"
        self.source = "tcp"

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.description = f"tcp {peer.host}:{peer.port}"
        self.source = peer.host
        if self._doorman is not None and not self._doorman.arrive(self.source, self):
            self._doorman = None
            self.transport.abortConnection()
            return
        if not self.waiting:
            self._start_session()

    def let_in(self) -> None:
        """The doorman gave this waiting link a stranger's place: the handshake starts."""
        self._start_session()

    def turn_away(self) -> None:
        """The doorman gave up on this waiting link (it counted and said so)."""
        self._doorman = None
        self.transport.abortConnection()

    def hurry(self, reason: str) -> None:
        """The doorman closes this stranger: it was slow while others waited for its place."""
        self.session.close(reason)

    def _start_session(self) -> None:
        self.session = self._new_session(self, self.expected_terminal_id)
        self.session.start()

    def dataReceived(self, data: bytes):
        if self.waiting:
            self._doorman.spoke_while_waiting(self)
        if self.session is None:
            return
        for item in self.decoder.read(data):
            if self.session.closed:
                return
            if isinstance(item, Frame):
                self.session.frame_received(item)
            else:
                self.session.frame_error(item)
            if self.session.established and self.decoder.max_payload < MAX_PAYLOAD:
                self.decoder.max_payload = MAX_PAYLOAD
                self._no_longer_a_stranger(authenticated=True)

    def connectionLost(self, reason=protocol.connectionDone):
        if self._cut_off is not None and self._cut_off.active():
            self._cut_off.cancel()
        if self.waiting:
            self._doorman.stop_waiting(self)
            self._doorman = None
        self._no_longer_a_stranger()
        if self.session is not None:
            self.session.connection_lost(reason.getErrorMessage())

    def _no_longer_a_stranger(self, authenticated: bool = False) -> None:
        if self._doorman is not None:
            self._doorman.leave(self.source, self, authenticated)
            self._doorman = None

    # -- the link interface a session uses ---------------------------------------------------

    def send(self, frame: Frame) -> None:
        send_now(self.transport, encode_frame(frame))

    def close(self, reason: str) -> None:
        self._no_longer_a_stranger()
        self.transport.loseConnection()
        if self._cut_off is None:
            self._cut_off = self._clock.callLater(CLOSE_GRACE_S, self.transport.abortConnection)

    def pause(self) -> None:
        self.transport.pauseProducing()

    def resume(self) -> None:
        self.transport.resumeProducing()

    def unread(self) -> bool:
        return unread_bytes(self.transport) > 0


def send_now(transport, data: bytes) -> None:
    """Hand ``data`` to the kernel at once when nothing waits in the transport's buffer; what it
    does not take, and any write on another kind of transport (TLS, a test's), goes through
    ``transport.write`` behind it, in order.

    Twisted's ``write`` buffers, registers the socket for writing (a system call), sends on the
    reactor's next turn and unregisters it (another). A lone delivery writes two frames to each
    terminal (PUT_USERS, the acknowledgement of its event), each when its socket has room: the
    registering and the extra turn were a tenth of the reactor's time (docs/loadtest.md).
    """
    # An aborted connection stays connected, and not disconnecting, until the reactor's next turn.
    if isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected and not transport.disconnecting \
            and not getattr(transport, "_aborting", False) and _nothing_buffered(transport):
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):
            sent = 0  # the link failed: write() buffers it and the next turn finds the failure, as before
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def unread_bytes(transport) -> int:
    """Bytes the peer sent that the kernel holds unread (FIONREAD); under TLS, the records not yet
    decrypted (Twisted's TLS delivers whatever it decrypts at once). 0 where that cannot be told:
    a test's transport has no socket, a closed one has none left."""
    if not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)  # TLS: the connection under it
    if not isinstance(transport, tcp.Connection):
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(transport.socket.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError, AttributeError):  # closed meanwhile: the socket is gone
        return 0


def _nothing_buffered(transport: tcp.Connection) -> bool:
    """Whether Twisted holds no bytes for this connection; a buffer it renamed counts as holding
    some, so the frame takes ``write`` (slower, never out of order)."""
    return not transport.dataBuffer and getattr(transport, "_tempDataBuffer", None) == []


class TerminalListener(protocol.Factory):
    """Accepts terminals that dial in."""

    noisy = False  # the gateway logs each terminal itself

    def __init__(self, new_session, doorman, clock):
        self.new_session = new_session
        self.doorman = doorman
        self.clock = clock

    def buildProtocol(self, addr):
        return TcpLink(self.new_session, self.clock, doorman=self.doorman)


class TerminalDialer:
    """Keeps a connection open to one terminal that listens (``dial`` in the configuration).

    Twisted's ClientService redials with backoff; the backoff restarts only once the terminal
    authenticated (``authenticated``), not on every TCP connect, so a terminal that answers but
    is refused is not redialled every half second.
    """

    def __init__(self, reactor, where: str, terminal_id: int, new_session, tls=None):
        """``tls``: client TLS options (gateway/native/tls.py) to wrap the connection in, or None."""
        self.terminal_id = terminal_id
        self.where = where
        self.attempts = 0  # connections tried since the terminal last authenticated: the backoff grows with them
        self._policy = backoffPolicy(initialDelay=0.5, maxDelay=30)
        factory = protocol.Factory.forProtocol(lambda: TcpLink(new_session, reactor, expected_terminal_id=terminal_id))
        factory.noisy = False
        self._endpoint = dial_endpoint(reactor, where) if tls is None else wrapClientTLS(tls, dial_endpoint(reactor, where))
        self._service = ClientService(self, factory, retryPolicy=self._retry_after, clock=reactor)

    def start(self) -> None:
        self._service.startService()

    def stop(self):
        return self._service.stopService()

    def authenticated(self) -> None:
        self.attempts = 0

    def connect(self, factory):
        """The endpoint ClientService dials through: the terminal's, saying why a dial failed."""
        return self._endpoint.connect(factory).addErrback(self._unreachable)

    def _unreachable(self, failure):
        # Said when a terminal becomes unreachable and then at every tenth try (every five minutes
        # once the backoff is at its cap), not at every try.
        if self.attempts % 10 == 0:
            log.info("terminal {tid} at {where} unreachable ({reason}); dialling it again with backoff",
                     tid=self.terminal_id, where=self.where, reason=failure.getErrorMessage())
        return failure

    def _retry_after(self, _failed_in_a_row: int) -> float:
        self.attempts += 1
        return self._policy(self.attempts)


def dial_endpoint(reactor, where: str):
    """An endpoint from ``host:port``, or from a Twisted endpoint string (``tcp:host=...:port=...``)."""
    if where.startswith(("tcp:", "tls:", "ssl:", "unix:")):
        return clientFromString(reactor, where)
    host, port = parse_host_port(where)
    return HostnameEndpoint(reactor, host, port)
