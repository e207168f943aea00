"""The emulated ZK device on UDP, as old devices serve it: one packet per datagram, a session per
client address (ZKLibrary #84 and pyzk #86 report devices that speak nothing else).

A client that falls silent while holding the keypad loses the hold after ``keypad_hold_s``, as
on TCP; one silent ten times that long loses its session, since UDP never says a client left.
"""

from twisted.internet import protocol, task
from twisted.logger import Logger

from protocol.zk.errors import PacketError
from protocol.zk.packet import Packet, decode_payload, encode_payload
from simulator.zk.device import ZkDevice
from simulator.zk.session import DeviceSession

log = Logger(namespace="simulator.zk")
MAX_SESSIONS = 64  # clients served at once; the longest silent goes first


class DeviceDatagrams(protocol.DatagramProtocol):
    noisy = False
    keypad_hold_s = 60.0
    sweep_s = 1.0

    def __init__(self, device: ZkDevice, clock, first_session_id: int = 0x5A5A):
        self.device = device
        self.clock = clock
        self._session_id = first_session_id
        self.sessions: dict[tuple, DeviceSession] = {}
        self._heard: dict[tuple, float] = {}
        self._sweep = task.LoopingCall(self._sweep_silent)
        self._sweep.clock = clock

    def startProtocol(self):
        self._sweep.start(self.sweep_s, now=False)

    def stopProtocol(self):
        if self._sweep.running:
            self._sweep.stop()
        for address in list(self.sessions):
            self._end(address)

    def datagramReceived(self, datagram: bytes, address):
        try:
            packet = decode_payload(datagram)
        except PacketError as exc:
            log.warn("ZK device: a bad datagram from {address} skipped: {error}", address=address, error=exc)
            return
        session = self.sessions.get(address)
        if session is None:
            if len(self.sessions) >= MAX_SESSIONS:
                self._end(min(self._heard, key=self._heard.get))
            session = self.sessions[address] = DeviceSession(self.device, self._next_session_id(), lambda p: self._send(p, address), datagrams=True)
        self._heard[address] = self.clock.seconds()
        session.receive(packet)
        if session.closed:
            self._end(address)

    def _send(self, packet: Packet, address) -> None:
        if self.transport is not None:
            self.transport.write(encode_payload(packet), address)

    def _next_session_id(self) -> int:
        self._session_id = self._session_id % 0xFFFF + 1
        return self._session_id

    def _sweep_silent(self) -> None:
        now = self.clock.seconds()
        for address, heard in list(self._heard.items()):
            session = self.sessions[address]
            if now - heard >= 10 * self.keypad_hold_s:
                self._end(address)
            elif now - heard >= self.keypad_hold_s and session.holds_keypad:
                log.warn("ZK device: the UDP client {address} held the keypad and said nothing for {s:g} s; keypad enabled again",
                         address=address, s=self.keypad_hold_s)
                session.release_keypad()

    def _end(self, address) -> None:
        self._heard.pop(address, None)
        session = self.sessions.pop(address, None)
        if session is not None:
            session.close()


def listen_udp(device: ZkDevice, reactor, port: int = 0, interface: str = "127.0.0.1"):
    """Serve ``device`` on UDP; the listening port (``.getHost().port`` when ``port`` was 0)."""
    return reactor.listenUDP(port, DeviceDatagrams(device, reactor), interface=interface)
