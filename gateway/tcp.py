"""TCP links to terminals, both directions: terminals dialling in to the gateway's port, and the
gateway dialling out to terminals listed in its configuration (reconnecting with backoff).

A ``TcpLink`` turns a connection into the link a ``TerminalSession`` talks through: it feeds
received bytes to a StreamDecoder and hands frames and decode errors to the session.
"""

from twisted.internet import protocol
from twisted.logger import Logger

from gateway.session import TerminalSession
from protocol import MAX_PAYLOAD, Frame, StreamDecoder

log = Logger(namespace="gateway.tcp")


class TcpLink(protocol.Protocol):
    address = 0  # no bus address on TCP
    request_bytes = MAX_PAYLOAD  # how big one request to the terminal may be

    def __init__(self, gateway, expected_terminal_id: int | None = None):
        self.gateway = gateway
        self.expected_terminal_id = expected_terminal_id
        self.decoder = StreamDecoder()
        self.session: TerminalSession | None = None
        self.description = "tcp"

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.description = f"tcp {peer.host}:{peer.port}"
        self.session = TerminalSession(self, self.gateway, self.gateway.clock, self.expected_terminal_id)
        self.session.keepalive_s = self.gateway.config.keepalive_s
        self.session.start()

    def dataReceived(self, data: bytes):
        for item in self.decoder.feed(data):
            if self.session.closed:
                return
            if isinstance(item, Frame):
                self.session.frame_received(item)
            else:
                self.session.frame_error(item)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.session is not None:
            self.session.connection_lost(reason.getErrorMessage())

    # -- the link interface a session uses ---------------------------------------------------

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self, reason: str) -> None:
        self.transport.loseConnection()

    def pause(self) -> None:
        self.transport.pauseProducing()

    def resume(self) -> None:
        self.transport.resumeProducing()


class TerminalListener(protocol.Factory):
    """Accepts terminals that dial in."""

    noisy = False  # the gateway logs each terminal itself

    def __init__(self, gateway):
        self.gateway = gateway

    def buildProtocol(self, addr):
        return TcpLink(self.gateway)


class TerminalDialer(protocol.ReconnectingClientFactory):
    """Keeps a connection open to one terminal that listens, reconnecting with backoff."""

    maxDelay = 30
    initialDelay = 0.5
    noisy = False

    def __init__(self, gateway, terminal_id: int, where: str):
        self.gateway = gateway
        self.terminal_id = terminal_id
        self.where = where
        self.clock = gateway.clock

    def buildProtocol(self, addr):
        # The backoff is reset only once the terminal authenticated (Gateway.session_established):
        # one that answers but is refused must not be redialled every second.
        return TcpLink(self.gateway, expected_terminal_id=self.terminal_id)

    def clientConnectionFailed(self, connector, reason):
        log.info("terminal {tid} at {where} unreachable ({reason}); retrying", tid=self.terminal_id, where=self.where,
                 reason=reason.getErrorMessage())
        super().clientConnectionFailed(connector, reason)
