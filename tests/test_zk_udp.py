"""ZK over UDP, for the old devices that speak nothing else (ZKLibrary #84, pyzk #86): the
emulator serving UDP with pyzk (``force_udp=True``) as the peer nobody on the team wrote, and the
gateway dialling a device over UDP end to end (``[[zk]] transport = "udp"``)."""

import socket

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest
from zk import ZK

from gateway.sync.monitor import SAVED_FROM_DEVICE
from gateway.zk.driver import LinkSettings, ZkLink, _DatagramLink
from live_site import Site, wait_until
from protocol.events import EventCode
from protocol.zk.commands import Command, ReplyCode
from protocol.zk.packet import Packet, decode_payload, encode_payload
from simulator.zk.device import ZkDevice, populate
from simulator.zk.udp import listen_udp
from test_zk_e2e import POLL_S, ZkSite

PYZK_TIMEOUT_S = 5


class PyzkOverUdp(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_pyzk_reads_and_writes_the_emulator_over_udp(self):
        device = ZkDevice(comm_key=4321, serial_number="UDP1")
        populate(device, 300, seed=2, fingers=1)  # tables larger than one 16 KiB datagram chunk
        device.punch("7")
        port = listen_udp(device, reactor)
        self.addCleanup(port.stopListening)

        def session():
            conn = ZK("127.0.0.1", port.getHost().port, timeout=PYZK_TIMEOUT_S, password=4321, force_udp=True, ommit_ping=True).connect()
            try:
                serial, users, templates = conn.get_serialnumber(), conn.get_users(), conn.get_templates()
                attendance = conn.get_attendance()
                conn.set_user(uid=400, name="Over UDP", user_id="400", card=77)
                return serial, users, templates, attendance
            finally:
                conn.disconnect()

        serial, users, templates, attendance = yield threads.deferToThread(session)
        self.assertEqual(serial, "UDP1")
        self.assertEqual(sorted((u.uid, u.user_id, u.name, u.card) for u in users)[:3],
                         sorted((u.uid, u.user_id, u.name, u.card) for u in device.users.values() if u.user_id != "400")[:3])
        self.assertEqual(len(users), 300)
        self.assertEqual(sorted((t.uid, t.fid, t.template) for t in templates), sorted((t.uid, t.fid, t.template) for t in device.templates.values()))
        self.assertEqual([a.user_id for a in attendance], ["7"])
        self.assertEqual((device.user("400").name, device.user("400").card), ("Over UDP", 77))
        self.assertEqual(port.protocol.sessions, {}, "EXIT ended the session")


class GatewayOverUdp(ZkSite):
    session = "held"

    @defer.inlineCallbacks
    def test_a_udp_device_comes_online_and_syncs_both_ways(self):
        udp, tcp = ZkDevice(comm_key=55, serial_number="UDP"), ZkDevice(serial_number="TCP")
        populate(udp, 200, seed=4)
        udp_port = listen_udp(udp, reactor)
        self.addCleanup(udp_port.stopListening)
        self.start_devices({2: tcp})
        self.devices[1], self.ports[1] = udp, udp_port
        site = self.start_site(links={1: dict(transport="udp", session=self.session)})
        yield wait_until(lambda: site.online(1, 2), "both devices online")
        yield wait_until(lambda: site.count_events(type=SAVED_FROM_DEVICE, terminal_id=1) == 200, "the UDP device's users read")
        tcp.enroll("900", "From The TCP Device", fingers={2: bytes(range(200))})
        udp.punch("5")
        yield wait_until(lambda: self.holds(1, "900") and self.templates_of(1, "900") == {2: bytes(range(200))}, "the user on the UDP device")
        yield wait_until(lambda: site.count_events(terminal_id=1, code=EventCode.VERIFY_SUCCESS, user_id="5") == 1, "its punch")
        yield wait_until(lambda: len(tcp.users) == 201, "the UDP device's users on the TCP one")

    @defer.inlineCallbacks
    def test_a_udp_device_that_is_not_there_is_offline_with_the_reason(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]  # closed again: nothing listens there
        site = Site(self.db_url, terminal_ids=(), zk=[dict(id=1, host="127.0.0.1", port=free, transport="udp", timeout_s=1, poll_s=POLL_S)]).start()
        self.addCleanup(site.stop)
        term = site.gateway.registry.terminals[1]
        yield wait_until(lambda: "refused the datagram" in (term.offline_reason or ""), "offline with the reason")
        self.assertEqual(term.offline_reason, "connection lost (the device refused the datagram (ICMP port unreachable))")
        self.assertFalse(site.online(1))


class ReleasedOverUdp(ZkSite):
    """The same with the session released between polls: a datagram socket per conversation."""

    session = "released"
    test_a_released_udp_device_comes_online_and_syncs_both_ways = GatewayOverUdp.test_a_udp_device_comes_online_and_syncs_both_ways


class FakePort:
    """What listenUDP gives a DatagramProtocol, recording what was done to it."""

    def __init__(self):
        self.datagrams, self.connected_to, self.stopped = [], None, 0

    def connect(self, host, port):
        self.connected_to = (host, port)

    def write(self, datagram):
        self.datagrams.append(datagram)

    def stopListening(self):
        self.stopped += 1

    def getHost(self):
        return None


def test_a_udp_link_sends_each_packet_as_a_datagram_and_ends_once():
    clock, broken = task.Clock(), []
    link = ZkLink(LinkSettings(transport="udp").client(0), clock, on_realtime=lambda e: None, on_broken=broken.append)
    datagrams, port = _DatagramLink(link, "192.0.2.10", 4370), FakePort()
    datagrams.makeConnection(port)
    assert port.connected_to == ("192.0.2.10", 4370) and link.description == "zk 192.0.2.10:4370"
    connected = link.run("connect")
    [sent] = port.datagrams
    assert decode_payload(sent) == Packet(Command.CONNECT)
    datagrams.datagramReceived(encode_payload(Packet(ReplyCode.ACK_OK, 77, 0)), ("192.0.2.10", 4370))
    assert connected.result.session_id == 77
    lost = []
    for command in (Command.GET_TIME, Command.GET_VERSION):  # the second queued: one request at a time
        link.run("request", command).addErrback(lambda failure: lost.append(failure.getErrorMessage()))
    assert len(port.datagrams) == 2
    datagrams.stopProtocol()  # the reactor closed the socket under us: an ICMP refusal read back
    assert broken == ["connection lost (the device refused the datagram (ICMP port unreachable))"] and len(lost) == 2
    datagrams.loseConnection()
    assert port.stopped == 0 and len(broken) == 1, "ended once"
