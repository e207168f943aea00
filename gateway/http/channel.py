"""HTTP connections: what one client may hold of the API's port.

Twisted's HTTP channel keeps a connection for as long as its client sends a byte a minute
(its idle time-out), so a slowloris client dripping a header held a place for ever, and 1,500 of
them were held at once; and a request line or header over 16 KiB was answered by closing the
connection without a word. Here:

- a request must arrive whole (request line, headers, body) within ``REQUEST_ARRIVAL_S`` of its
  first byte, or it is answered 408 and the connection closed; an idle keep-alive connection
  between requests keeps Twisted's idle time-out;
- at most ``MAX_CONNECTIONS_PER_ADDRESS`` connections from one address at once (a browser
  opens 6; scripts, the CLI and the page of one operator stay far below); one more is answered
  503 and closed at once;
- a request line or one header over 16 KiB, all of them over 16 KiB together, or more than
  500 headers, is 431; a body whose Content-Length is over ``MAX_BODY`` is 413 at once.

Each refusal is one warning, then a summary per address (``RepeatedLines``).
"""

import json
from collections import Counter

from twisted.logger import Logger
from twisted.internet import protocol
from twisted.web.http import HTTPChannel

from gateway.http.api import MAX_BODY
from gateway.quietlog import RepeatedLines

log = Logger(namespace="gateway.http")

REQUEST_ARRIVAL_S = 10.0
MAX_CONNECTIONS_PER_ADDRESS = 64
MAX_HEADERS_BYTES = 16 * 1024  # Twisted's own limits, for one line and for all: nginx's large_client_header_buffers is 8 KiB


def refusal(status: int, reason: str, message: str) -> bytes:
    """A whole JSON error response that ends the connection, written before any request is parsed."""
    body = json.dumps({"error": message, "status": status}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class GuardedChannel(HTTPChannel):
    """Twisted's HTTP channel with a deadline for each request to arrive, and 431 for big headers."""

    MAX_LENGTH = MAX_HEADERS_BYTES
    totalHeadersSize = MAX_HEADERS_BYTES
    _arrival = None

    def dataReceived(self, data):
        if self._arrival is None and not self._handlingRequest:
            self._arrival = self.callLater(REQUEST_ARRIVAL_S, self._arrived_too_slowly)
        super().dataReceived(data)

    def allContentReceived(self):
        self._stop_arrival()
        super().allContentReceived()

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            return self._refuse(431, "Request Header Fields Too Large",
                                f"request line and headers over {self.totalHeadersSize} bytes")
        if line and self._receivedHeaderCount >= self.maxHeaders:
            return self._refuse(431, "Request Header Fields Too Large", f"more than {self.maxHeaders} headers")
        return super().lineReceived(line)

    def allHeadersReceived(self):
        if self.length is not None and self.length > MAX_BODY:  # said before it is sent: no waiting for it
            return self._refuse(413, "Payload Too Large", f"request body larger than {MAX_BODY} bytes")
        return super().allHeadersReceived()

    def lineLengthExceeded(self, line):
        return self._refuse(431, "Request Header Fields Too Large", f"a request line or header over {self.MAX_LENGTH} bytes")

    def _arrived_too_slowly(self):
        self._arrival = None
        self._refuse(408, "Request Timeout", f"the request did not arrive whole within {REQUEST_ARRIVAL_S:g} s")

    def _refuse(self, status: int, reason: str, message: str):
        self.site.refused(self.transport.getPeer().host, message)
        self._stop_arrival()
        self.transport.write(refusal(status, reason, message))
        self.transport.loseConnection()
        self.dataReceived = self.lineReceived = lambda *_: None  # nothing more of this connection is read
        return True

    def _stop_arrival(self):
        if self._arrival is not None and self._arrival.active():
            self._arrival.cancel()
        self._arrival = None

    def connectionLost(self, reason):
        self._stop_arrival()
        self.site.left(self.transport.getPeer().host)
        super().connectionLost(reason)


class _TooMany(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(refusal(503, "Service Unavailable",
                                     f"more than {MAX_CONNECTIONS_PER_ADDRESS} connections from your address; close some"))
        self.transport.loseConnection()


class ConnectionsPerAddress:
    """The site's side: connections counted by address, refusals said (mixed into GatewaySite)."""

    protocol = GuardedChannel

    def count_connections(self, clock) -> None:
        self._connections: Counter[str] = Counter()
        self._lines = RepeatedLines(log, clock)

    def buildProtocol(self, addr):
        host = getattr(addr, "host", "")
        if self._connections[host] >= MAX_CONNECTIONS_PER_ADDRESS:
            self.refused(host, f"more than {MAX_CONNECTIONS_PER_ADDRESS} connections at once")
            return _TooMany()
        self._connections[host] += 1
        return super().buildProtocol(addr)

    def left(self, host: str) -> None:
        self._connections[host] -= 1
        if self._connections[host] <= 0:
            del self._connections[host]

    def refused(self, host: str, why: str) -> None:
        self._lines.warn("refused HTTP requests", host, "refused HTTP request from {host}: {why}", host=host, why=why)
