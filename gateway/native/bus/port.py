"""BusPort: one serial port as a bus master uses it: opened (and reopened), bytes out, frames in.

It owns what is about the wire rather than the conversation: opening the device (an unplugged
adapter is tried again every few seconds), discarding the echo of an adapter that hands back
what it sends, decoding what arrives, and the byte counts behind the bus's metrics. What the
frames mean is its receiver's business (``ExchangeLine``). ``bytes_moved`` counts both directions, for
the master's utilisation figure.
"""

from serial import SerialException
from twisted.internet import defer, protocol
from twisted.logger import Logger

from gateway.native.serial_port import open_serial
from protocol import Frame, StreamDecoder, encode_frame

log = Logger(namespace="gateway.bus")


class BusPort(protocol.Protocol):
    reopen_s = 5.0  # a port that could not be opened (an unplugged adapter) is tried again after

    def __init__(self, bus, reactor, clock, metrics, receiver, open_port=open_serial):
        self.bus = bus
        self.name = bus.device
        self._reactor = reactor
        self._clock = clock
        self._receiver = receiver
        self._open_port = open_port
        self._metrics = metrics
        self._decoder = StreamDecoder()
        self._echo_left = 0
        self._stopping = False
        self._stopped = None
        self._reopen = None
        self.bytes_moved = 0
        self._sent = metrics.bus_bytes.labels(self.name, "tx")
        self._received = metrics.bus_bytes.labels(self.name, "rx")
        self._crc_errors = metrics.bus_crc_errors.labels(self.name)

    @property
    def is_open(self) -> bool:
        return self.transport is not None

    def start(self) -> None:
        self._open()

    def stop(self) -> defer.Deferred:
        """Close the port; fires once it is closed."""
        self._stopping = True
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        if self.transport is None:
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        self.transport.loseConnection()
        return self._stopped

    def _open(self) -> None:
        self._reopen = None
        try:
            self._open_port(self, self.bus, self._reactor)
        except (SerialException, OSError, ValueError) as exc:
            log.warn("bus {bus}: cannot open the port ({e}); trying again in {s:g} s", bus=self.name, e=exc, s=self.reopen_s)
            self._reopen = self._clock.callLater(self.reopen_s, self._open)

    def connectionMade(self) -> None:
        self._receiver.port_opened()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.transport = None
        self._receiver.port_lost(reason.getErrorMessage())
        if self._stopping:
            if self._stopped is not None:
                self._stopped.callback(None)
            return
        log.warn("bus {bus}: port lost ({e}); reopening in {s:g} s", bus=self.name, e=reason.getErrorMessage(), s=self.reopen_s)
        self._reopen = self._clock.callLater(self.reopen_s, self._open)

    # -- bytes -------------------------------------------------------------------------------

    def write(self, frame: Frame) -> int:
        """Put a frame on the line; returns its length in bytes."""
        data = encode_frame(frame)
        self._decoder = StreamDecoder()  # what is left of a broken answer must not swallow the next
        self.transport.write(data)
        self._sent.inc(len(data))
        self.bytes_moved += len(data)
        if self.bus.echo:
            self._echo_left += len(data)
        return len(data)

    def dataReceived(self, data: bytes) -> None:
        if self._echo_left:
            echoed = min(self._echo_left, len(data))
            self._echo_left -= echoed
            data = data[echoed:]
            if not data:
                return
        self._received.inc(len(data))
        self.bytes_moved += len(data)
        self._receiver.bytes_arriving()
        for item in self._decoder.feed(data):
            if isinstance(item, Frame):
                self._receiver.frame_received(item)
            else:
                self._crc_errors.inc()
                self._metrics.frame_errors.inc()
                log.debug("bus {bus}: corrupt data skipped: {e}", bus=self.name, e=item)
