"""Serial ports as Twisted transports: a device path or any pyserial URL, with RS-485 direction control.

A local device and a ``socket://`` converter have a file descriptor, so Twisted's own SerialPort
reads and writes them on the reactor. An ``rfc2217://`` port has none (pyserial reads it on its
own thread), and an adapter whose RTS line the gateway must switch needs writes that block until
the last bit has left; those two run on threads and hand what they read to the reactor.

Direction control (docs/rs485.md): with ``rs485`` settings, the kernel driver is asked to switch
RTS around each transmission (TIOCSRS485, on-board UARTs mostly). A driver that cannot (most USB
adapters) gets pyserial's software switching instead: RTS set, the frame written and drained,
RTS set back.
"""

import queue
import threading

from serial import SerialException, serial_for_url
from serial.rs485 import RS485, RS485Settings
from serial.threaded import Protocol as ThreadedProtocol
from serial.threaded import ReaderThread
from twisted.internet.error import ConnectionDone
from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="gateway.serial")


def open_serial(protocol, bus, reactor):
    """Open ``bus.device`` at ``bus.baud`` and connect ``protocol`` to it.

    Raises SerialException, saying why, when the port cannot be opened or cannot do what the
    settings ask.
    """
    if bus.rs485 is not None:
        port = _open_rs485(bus)
    else:
        port = serial_for_url(bus.device, baudrate=bus.baud, timeout=0)
    if isinstance(port, RS485) or not _selectable(port):
        return ThreadedSerialTransport(port, protocol, reactor)
    return SelectableSerialPort(protocol, port, reactor)


def _selectable(port) -> bool:
    try:
        port.fileno()
    except (OSError, AttributeError):  # io.UnsupportedOperation is an OSError
        return False
    return True


def _open_rs485(bus):
    settings = RS485Settings(**bus.rs485)
    port = serial_for_url(bus.device, baudrate=bus.baud, timeout=0, do_not_open=True)
    port.rs485_mode = settings
    try:
        port.open()
        return port
    except ValueError as exc:  # pyserial: "Failed to set RS485 mode"
        log.info("{device}: the driver does not switch RTS itself ({e}); the gateway switches it around each frame",
                 device=bus.device, e=exc)
    port = RS485(baudrate=bus.baud, timeout=None)  # reads block on the reader thread
    port.port = bus.device
    port.rs485_mode = settings
    port.open()
    try:
        port.rts = settings.rts_level_for_rx  # listen while idle
    except OSError as exc:
        port.close()
        raise SerialException(
            f"cannot switch RTS on {bus.device} ({exc.strerror}); an adapter that switches direction "
            "by itself needs no rs485 settings"
        ) from None
    return port


class SelectableSerialPort(SerialPort):
    """Twisted's SerialPort around a port pyserial already opened (a device, or a URL with a socket)."""

    def __init__(self, protocol, port, reactor):
        self._opened = port
        super().__init__(protocol, port.port, reactor)

    def _serialFactory(self, *_args, **_settings):
        return self._opened

    def fileno(self):
        return self._serial.fileno()


class ThreadedSerialTransport:
    """A pyserial port read on pyserial's reader thread and written on a writer thread of its own.

    One writer thread keeps frames in order; the reactor thread never waits for the line. Both
    threads end with the port, however it ends (closed by the gateway, or lost: a converter or
    an RFC 2217 server gone), and both are daemon threads, so that no way out of the process
    (SIGTERM, a start failure) waits for a serial line: a gateway mastering an ``rfc2217://``
    bus once lived on after SIGTERM, its writer blocked for ever waiting for work.
    """

    def __init__(self, port, protocol, reactor):
        self._port = port
        self.protocol = protocol
        self._reactor = reactor
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_frames, name=f"serial writer {port.port}", daemon=True)
        self._writer.start()
        protocol.makeConnection(self)
        self._reader = _Reader(port, _ToReactor(self, reactor))
        self._reader.start()

    def write(self, data: bytes) -> None:
        self._frames.put(data)

    def _write_frames(self) -> None:
        while (data := self._frames.get()) is not None:
            try:
                self._port.write(data)
            except (SerialException, OSError) as exc:
                self._reactor.callFromThread(self._write_failed, exc)
                return

    def _write_failed(self, exc: Exception) -> None:
        """A port that cannot be written is lost (an RFC 2217 server or a converter gone): closed
        here, and its bus opens it again, instead of failing every frame for ever."""
        log.warn("{port}: write failed ({e}); closing the port", port=self._port.port, e=exc)
        self._reader.close()

    def loseConnection(self) -> None:
        self._frames.put(None)  # the writer ends after the frames queued before
        self._reader.close()  # the reader thread reports connectionLost as it ends

    def connection_lost(self, reason: Failure) -> None:
        """The reader ended (the port closed or lost): so does the writer; then the protocol hears it."""
        self._frames.put(None)
        self.protocol.connectionLost(reason)


class _Reader(ReaderThread):
    """pyserial's reader thread, which says when it ends however it ends: pyserial's own lets an
    exception before its loop (an RFC 2217 server that stops answering while the read time-out
    is set) end the thread without a word, leaving a port that looks open and is not."""

    def __init__(self, port, protocol: "_ToReactor"):
        super().__init__(port, lambda: protocol)
        self._told = protocol

    def run(self):
        try:
            super().run()
        except Exception as exc:  # pyserial's run() reports errors in its loop itself; this is what it misses
            self.alive = False
            self._told.connection_lost(exc)


class _ToReactor(ThreadedProtocol):
    """pyserial's reader-thread protocol, handing everything to the transport's protocol on the reactor."""

    def __init__(self, transport: ThreadedSerialTransport, reactor):
        self._transport = transport
        self._reactor = reactor

    def data_received(self, data):
        self._reactor.callFromThread(self._transport.protocol.dataReceived, data)

    def connection_lost(self, exc):
        self._reactor.callFromThread(self._transport.connection_lost, Failure(exc or ConnectionDone()))
