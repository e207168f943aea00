"""A ZK device that misbehaves: one clear log line, the device offline with the reason in
/api/terminals, every other device unaffected, no traceback (trial fails a test on any logged
failure), and nothing on the server changed by a half-read table."""

import json
import urllib.request

from twisted.internet import defer, threads

from gateway.sync.monitor import SAVED_FROM_DEVICE
from live_site import wait_until
from protocol.zk.commands import Command
from protocol.zk.packet import MAGIC, Packet, encode_tcp
from simulator.zk.device import ZkDevice, populate
from test_zk_e2e import ZkSite

HEALTHY, FAULTY = 1, 2


class BadDevices(ZkSite):
    timeout = 60

    @defer.inlineCallbacks
    def faulty_site(self, faulty: ZkDevice, expected_reason: str):
        healthy = ZkDevice(serial_number="HEALTHY")
        self.start_devices({HEALTHY: healthy, FAULTY: faulty})
        site = self.start_site(timeout_s=1)
        yield wait_until(lambda: site.online(HEALTHY), "the healthy device online")
        term = site.gateway.registry.terminals[FAULTY]
        yield wait_until(lambda: expected_reason in term.offline_reason, f"the faulty device offline with {expected_reason!r}")
        self.assertFalse(site.online(FAULTY))
        healthy.enroll("900", "Still Synced")
        yield wait_until(lambda: site.server_record("900") is not None, "the healthy device's enrolment on the server")
        return site

    @defer.inlineCallbacks
    def test_garbage(self):
        device = ZkDevice()
        device.faults.mangle = lambda packet: b"\x00garbage\xff" * 3
        yield self.faulty_site(device, "outside any packet")

    @defer.inlineCallbacks
    def test_wrong_checksum(self):
        device = ZkDevice()

        def bad_checksum(packet):
            raw = bytearray(encode_tcp(packet))
            raw[10] ^= 0x55
            return bytes(raw)

        device.faults.mangle = bad_checksum
        yield self.faulty_site(device, "checksum")

    @defer.inlineCallbacks
    def test_truncated_packet(self):
        device = ZkDevice()
        populate(device, 2)
        device.faults.mangle = lambda packet: encode_tcp(packet)[:-3] if packet.command == Command.DATA else None
        site = yield self.faulty_site(device, "did not answer")
        self.assertIn("PREPARE_BUFFER", site.gateway.registry.terminals[FAULTY].offline_reason)

    @defer.inlineCallbacks
    def test_oversized_packet(self):
        device = ZkDevice()
        device.faults.mangle = lambda packet: MAGIC + (2 << 20).to_bytes(4, "little") + bytes(64)
        yield self.faulty_site(device, "over the 1048576-byte maximum")

    @defer.inlineCallbacks
    def test_a_half_read_table_changes_nothing_on_the_server(self):
        device = ZkDevice()
        populate(device, 5)

        def short_table(packet):
            if packet.command == Command.DATA and len(packet.data) > 20:
                return encode_tcp(Packet(packet.command, packet.session_id, packet.reply_id, packet.data[:-72]))
            return None

        device.faults.mangle = short_table
        site = yield self.faulty_site(device, "malformed answer")
        self.assertEqual(site.count_events(terminal_id=FAULTY), 0)
        self.assertTrue(all(site.server_record(str(n)) is None for n in range(1, 6)))
        self.assertEqual(device.requests[Command.DISABLEDEVICE], device.requests[Command.ENABLEDEVICE],
                         "the keypad given back after the read it held it for")

    @defer.inlineCallbacks
    def test_a_wrong_comm_key(self):
        healthy, faulty = ZkDevice(serial_number="HEALTHY"), ZkDevice(comm_key=5)
        self.start_devices({HEALTHY: healthy, FAULTY: faulty})
        site = self.start_site(timeout_s=1)
        faulty.comm_key = 6  # changed at the device's menu: the configuration still says 5
        yield wait_until(lambda: "refused the comm key" in site.gateway.registry.terminals[FAULTY].offline_reason, "the refusal")
        url = f"http://127.0.0.1:{site.gateway.http_port.getHost().port}/api/terminals/{FAULTY}"
        shown = json.loads((yield threads.deferToThread(lambda: urllib.request.urlopen(url, timeout=5).read())))
        self.assertEqual((shown["online"], shown["kind"]), (False, "zk"))
        self.assertIn("refused the comm key", shown["offline_reason"])
        yield wait_until(lambda: site.online(HEALTHY), "the healthy device online")

    @defer.inlineCallbacks
    def test_unknown_optional_commands_fall_back(self):
        device = ZkDevice()
        device.faults.unknown_commands = {Command.SAVE_USERTEMPS, Command.REG_EVENT, Command.GET_VERSION}
        healthy = ZkDevice(serial_number="HEALTHY")
        self.start_devices({HEALTHY: healthy, FAULTY: device})
        site = self.start_site(timeout_s=1)
        yield wait_until(lambda: site.online(HEALTHY, FAULTY), "both online")
        healthy.enroll("901", "Written One By One", fingers={0: b"t" * 500})
        yield wait_until(lambda: self.holds(FAULTY, "901"), "the user on the device without bulk upload")
        self.assertEqual(device.user("901").name, "Written One By One")
        self.assertEqual(self.templates_of(FAULTY, "901"), {}, "no templates without the bulk upload")
        self.assertEqual(site.count_events(type=SAVED_FROM_DEVICE, terminal_id=FAULTY), 0, "its own write not pulled back")
        self.assertTrue(site.online(FAULTY))
        self.assertEqual(device.requests[Command.USER_WRQ], 1)
