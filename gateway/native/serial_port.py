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

from serial import SerialException, serial_for_url
from serial.rs485 import RS485, RS485Settings
from serial.threaded import Protocol as ThreadedProtocol
from serial.threaded import ReaderThread
from twisted.internet.error import ConnectionDone
from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

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

    One writer thread keeps frames in order; the reactor thread never waits for the line.
    """

    def __init__(self, port, protocol, reactor):
        self._port = port
        self._protocol = protocol
        self._reactor = reactor
        self._writer = ThreadPool(1, 1, name=f"serial writer {port.port}")
        self._writer.start()
        protocol.makeConnection(self)
        self._reader = ReaderThread(port, lambda: _ToReactor(protocol, reactor))
        self._reader.start()

    def write(self, data: bytes) -> None:
        self._writer.callInThread(self._write, data)

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (SerialException, OSError) as exc:
            self._reactor.callFromThread(log.warn, "{port}: write failed: {e}", port=self._port.port, e=exc)

    def loseConnection(self) -> None:
        self._writer.stop()  # lets queued frames finish first
        self._reader.close()  # the reader thread reports connectionLost as it ends


class _ToReactor(ThreadedProtocol):
    """pyserial's reader-thread protocol, handing everything to the Twisted protocol on the reactor."""

    def __init__(self, protocol, reactor):
        self._protocol = protocol
        self._reactor = reactor

    def data_received(self, data):
        self._reactor.callFromThread(self._protocol.dataReceived, data)

    def connection_lost(self, exc):
        self._reactor.callFromThread(self._protocol.connectionLost, Failure(exc or ConnectionDone()))
