"""The emulated ZK device on TCP, and ``simulator zk-terminal``: one device listening on a port
(TCP, or UDP through simulator/zk/udp.py), answering as the firmware variant it is given.

Each connection gets a ``DeviceSession`` with the next session id; a firmware that serves
``sessions`` clients at once closes any connection beyond them at once, as a busy device does. Bytes that are no packet are
logged and skipped, as a device would; EXIT closes the connection once it is answered. A client
that holds the keypad (DISABLEDEVICE) and then says nothing for ``keypad_hold_s`` loses the hold,
as a real device enables itself again, so people at the keypad never wait for a vanished client.
"""

import argparse
import sys
from collections import deque

from twisted.internet import defer, protocol, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from protocol.zk.commkey import MAX_COMM_KEY
from protocol.zk.decoder import PacketDecoder
from protocol.zk.packet import Packet, encode_tcp
from simulator.logs import start_logging
from simulator.zk.device import FIRMWARES, ZkDevice, firmware_variant, populate
from simulator.zk.session import DeviceSession
from simulator.zk.udp import listen_udp

log = Logger(namespace="simulator.zk")
DEFAULT_PORT = 4370


class DeviceConnection(protocol.Protocol):
    turned_away = False

    def connectionMade(self):
        limit = self.factory.device.firmware.sessions
        if limit and len(self.factory.connections) >= limit:
            self.turned_away = True
            self.factory.turned_away += 1
            self.transport.loseConnection()
            return
        self.factory.connections.add(self)
        self.decoder = PacketDecoder()
        self.session = DeviceSession(self.factory.device, self.factory.next_session_id(), self._write)
        self._hold_timer = None
        firmware = self.factory.device.firmware
        self._line = SlowLine(self.factory.clock, firmware.link_bytes_per_s, self.transport.write, firmware.link_segment_bytes)

    def dataReceived(self, data: bytes):
        if self.turned_away:
            return
        self.factory.bytes_received += len(data)
        for item in self.decoder.feed(data):
            if not isinstance(item, Packet):
                log.warn("ZK device: bad bytes from the client skipped: {error}", error=item)
                continue
            self.session.receive(item)
            if self.session.closed:
                self.transport.loseConnection()
                return
        self._watch_hold()

    def connectionLost(self, reason=None):
        if self.turned_away:
            return
        self.factory.connections.discard(self)
        self._cancel_hold_timer()
        self._line.stop()
        self.session.close()

    def _watch_hold(self) -> None:
        """While the client holds the keypad, its silence is timed from its last packet."""
        if not self.session.holds_keypad:
            self._cancel_hold_timer()
        elif self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.reset(self.factory.keypad_hold_s)
        else:
            self._hold_timer = self.factory.clock.callLater(self.factory.keypad_hold_s, self._hold_expired)

    def _hold_expired(self) -> None:
        self._hold_timer = None
        log.warn("ZK device: the client held the keypad and said nothing for {s:g} s; keypad enabled again", s=self.factory.keypad_hold_s)
        self.session.release_keypad()

    def _cancel_hold_timer(self) -> None:
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None

    def _write(self, packet: Packet) -> None:
        mangle = self.factory.device.faults.mangle
        mangled = mangle(packet) if mangle is not None else None
        data = encode_tcp(packet) if mangled is None else mangled
        self.factory.bytes_sent += len(data)
        self._line.write(data)


class SlowLine:
    """Bytes leave at ``bytes_per_s`` (0: at once), as over a cellular link, in segments of at
    most ``segment_bytes`` that never span two writes: as a link of that MSS delivers them, a
    small packet whole. A segment of 1 byte is a drip. What waits stays here, in order."""

    def __init__(self, clock, bytes_per_s: int, write, segment_bytes: int = 1460):
        self._write = write
        self._rate = bytes_per_s
        self._segment = max(1, segment_bytes)
        self._waiting: deque[bytes] = deque()
        self._credit = 0.0
        self._tick_s = max(0.02, 1.0 / bytes_per_s) if bytes_per_s else 0.0
        self._loop = task.LoopingCall(self._drain)
        self._loop.clock = clock

    def write(self, data: bytes) -> None:
        if not self._rate:
            self._write(data)
            return
        self._waiting.append(data)
        if not self._loop.running:
            self._credit = 0.0
            self._loop.start(self._tick_s, now=False)

    def _drain(self) -> None:
        self._credit += self._rate * self._tick_s
        while self._waiting:
            head = self._waiting[0]
            size = min(self._segment, len(head))
            if self._credit < size:
                break
            self._credit -= size
            self._write(head[:size])
            if size == len(head):
                self._waiting.popleft()
            else:
                self._waiting[0] = head[size:]
        if not self._waiting:
            self._loop.stop()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()


class DeviceFactory(protocol.ServerFactory):
    protocol = DeviceConnection
    noisy = False
    keypad_hold_s = 60.0  # a silent client's hold on the keypad lasts this long

    def __init__(self, device: ZkDevice, clock, first_session_id: int = 0x5A5A):
        self.device = device
        self.clock = clock
        self._session_id = first_session_id
        self.connections: set[DeviceConnection] = set()
        self.bytes_received = self.bytes_sent = 0  # over every connection: what polling costs on the wire
        self.turned_away = 0  # connections closed because the device served its ``sessions`` already

    def drop_connections(self) -> None:
        """Cut every client off at once, as a device does when it reboots."""
        for connection in list(self.connections):
            connection.transport.abortConnection()

    def next_session_id(self) -> int:
        self._session_id = self._session_id % 0xFFFF + 1  # 1 to 65535: never 0, the id before CONNECT
        return self._session_id


def listen(device: ZkDevice, reactor, port: int = 0, interface: str = "127.0.0.1"):
    """Serve ``device`` on TCP; the listening port (``.getHost().port`` when ``port`` was 0)."""
    return reactor.listenTCP(port, DeviceFactory(device, reactor), interface=interface)


def add_parser(sub) -> None:
    p = sub.add_parser("zk-terminal", help="one emulated ZKTeco device on TCP or UDP, for pyzk, the gateway or gateway-check")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP or UDP port (default {DEFAULT_PORT})")
    p.add_argument("--transport", choices=("tcp", "udp"), default="tcp", help="serve on TCP (default) or UDP, as old devices do")
    p.add_argument("--firmware", choices=sorted(FIRMWARES), default="f19",
                   help="how the device's firmware answers, a variant seen in the field (docs/zk.md section Firmwares; default f19)")
    p.add_argument("--link-bps", type=int, metavar="N", help="answers leave at N bytes a second (default: the variant's; at once)")
    p.add_argument("--pin-width", type=int, metavar="N", help="option ~PIN2Width, the longest user id held (default: the variant's; 24)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--comm-key", type=int, default=0, metavar="K", help=f"communication key, 0 to {MAX_COMM_KEY} (default 0: none)")
    p.add_argument("--users", type=int, default=0, metavar="N", help="enrol N seeded people with one fingerprint each (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the enrolled people (default 0)")
    p.add_argument("--fp-version", type=int, default=10, metavar="V", help="fingerprint algorithm, option ~ZKFPVersion (default 10)")
    p.add_argument("--serial", default="EMU0000000001", help="serial number, option ~SerialNumber")
    p.add_argument("--sessions", type=int, default=0, metavar="N",
                   help="TCP clients served at once, another turned away (default 0: any; 1 as most devices)")


def run(args: argparse.Namespace) -> int:
    firmware, faults = firmware_variant(args.firmware)
    if args.link_bps is not None:
        if args.link_bps < 0:
            return _usage("--link-bps must be 0 or more")
        firmware.link_bytes_per_s = args.link_bps
    if args.pin_width is not None:
        if not 1 <= args.pin_width <= 24:
            return _usage("--pin-width must be 1 to 24")
        firmware.pin_width = args.pin_width
    if args.sessions < 0:
        return _usage("--sessions must be 0 or more")
    firmware.sessions = args.sessions
    device = ZkDevice(comm_key=args.comm_key, serial_number=args.serial, fp_version=args.fp_version, firmware=firmware)
    for fault, value in faults.items():
        setattr(device.faults, fault, value)
    if not 0 <= args.comm_key <= MAX_COMM_KEY:
        return _usage(f"--comm-key must be 0 to {MAX_COMM_KEY}")
    if not 0 <= args.users <= device.firmware.users_capacity:
        return _usage(f"--users must be 0 to {device.firmware.users_capacity}")
    populate(device, args.users, args.seed)
    task.react(_serve, [device, args])


def _serve(reactor, device: ZkDevice, args) -> defer.Deferred:
    try:
        port = (listen if args.transport == "tcp" else listen_udp)(device, reactor, args.port, args.host)
    except CannotListenError as exc:
        raise SystemExit(_usage(f"cannot listen on {args.host}:{args.port}: {exc.socketError}")) from None
    start_logging()
    print(f"ZK device {args.serial} on {args.host}:{port.getHost().port}: {args.transport.upper()}, {args.users} users, "
          f"fingerprint algorithm {args.fp_version}, {'comm key set' if args.comm_key else 'no comm key'}, firmware {args.firmware}", flush=True)
    return defer.Deferred()  # runs until stopped (Ctrl-C, SIGTERM)


def _usage(problem: str) -> int:
    print(f"simulator zk-terminal: {problem}", file=sys.stderr)
    return 2
