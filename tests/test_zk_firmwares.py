"""End to end: the gateway against each firmware variant the field shows (docs/zk.md section
"Firmwares"), emulated beside a well-behaved device, over real loopback sockets. The tolerant
variants come online and sync; the hostile ones go offline with a reason and cost bounded memory."""

import resource

from twisted.internet import defer

from gateway.metrics import Metrics
from gateway.sync.monitor import PUSH_REFUSED, SAVED_FROM_DEVICE
from live_site import wait_until
from protocol.events import EventCode
from protocol.zk.client import MAX_TRANSFER
from protocol.zk.commands import Command
from simulator.zk.device import ZkDevice, firmware_variant, populate
from test_zk_e2e import ZkSite

HEALTHY, VARIANT = 1, 2


def variant(name: str, **options) -> ZkDevice:
    firmware, faults = firmware_variant(name)
    device = ZkDevice(serial_number=name.upper(), firmware=firmware, **options)
    for fault, value in faults.items():
        setattr(device.faults, fault, value)
    return device


class TolerantFirmwares(ZkSite):
    timeout = 120

    @defer.inlineCallbacks
    def synced_both_ways(self, device: ZkDevice, **site_options):
        """The variant online; an enrolment and a punch at it reach the server, and an enrolment at
        the healthy device reaches it."""
        healthy = ZkDevice(serial_number="HEALTHY")
        device.enroll("10", "Already There")
        device.punch("10")
        self.start_devices({HEALTHY: healthy, VARIANT: device})
        site = self.start_site(**site_options)
        yield wait_until(lambda: site.online(HEALTHY, VARIANT), "both devices online", timeout=60)
        yield wait_until(lambda: site.count_events(terminal_id=VARIANT, code=EventCode.VERIFY_SUCCESS, user_id="10") == 1,
                         "the punch read from the device's log")
        device.enroll("11", "Enrolled At The Variant")
        healthy.enroll("12", "Enrolled Elsewhere")
        yield wait_until(lambda: site.count_events(type=SAVED_FROM_DEVICE, terminal_id=VARIANT, user_id="11") == 1, "its enrolment saved")
        yield wait_until(lambda: self.holds(VARIANT, "12") and self.holds(HEALTHY, "11"), "each device given the other's user")
        device.punch("11")
        yield wait_until(lambda: site.count_events(terminal_id=VARIANT, code=EventCode.VERIFY_SUCCESS, user_id="11") == 1, "a second punch")
        self.assertTrue(site.online(VARIANT))
        return site

    @defer.inlineCallbacks
    def test_49_byte_attendance_records(self):
        device = variant("mb560-vl")
        yield self.synced_both_ways(device)
        self.assertEqual(device.firmware.attendance_record_size, 49)

    @defer.inlineCallbacks
    def test_a_user_count_one_higher_than_the_table_holds(self):
        site = yield self.synced_both_ways(variant("count-plus-one"))
        self.assertGreaterEqual(Metrics.value(site.gateway.metrics.zk_quirks, kind="user table"), 1, "counted where an operator sees it")

    @defer.inlineCallbacks
    def test_real_time_events_of_a_length_no_client_knows_keep_the_link(self):
        device = variant("odd-events")
        site = yield self.synced_both_ways(device)
        sessions = self.ports[VARIANT].factory.next_session_id() - 1  # the last session id given
        for n in range(3):
            device.punch("10")
        yield wait_until(lambda: site.count_events(terminal_id=VARIANT, code=EventCode.VERIFY_SUCCESS, user_id="10") == 4, "the punches")
        self.assertEqual(self.ports[VARIANT].factory.next_session_id() - 2, sessions, "no new connection: the link was never dropped")
        self.assertEqual(Metrics.value(site.gateway.metrics.zk_quirks, kind="real-time event"), 1, "said once per connection")

    @defer.inlineCallbacks
    def test_a_device_that_ignores_disabledevice(self):
        device = variant("no-disable")
        site = yield self.synced_both_ways(device)
        healthy = self.devices[HEALTHY]

        def walk_in(packet):  # a person at the keypad while the gateway's upload is under way
            if packet.command == Command.PREPARE_DATA and walk_in in device.request_listeners:
                device.request_listeners.remove(walk_in)
                device.enroll("walk-in", "Walked In")

        device.request_listeners.append(walk_in)
        healthy.enroll("13", "Pushed Meanwhile")
        yield wait_until(lambda: self.holds(VARIANT, "13") and site.server_record("walk-in") is not None, "both kept, the walk-in saved")
        self.assertEqual(device.user("walk-in").name, "Walked In")
        yield wait_until(lambda: self.holds(HEALTHY, "walk-in"), "the walk-in on the other device")

    @defer.inlineCallbacks
    def test_a_4_kb_per_s_link_with_1000_users(self):
        """pyzk reads these users in about 18 s; a 65,472-byte chunk takes 16 s at this rate,
        longer than timeout_s: only the bytes arriving keep the request alive."""
        device = variant("slow-link")
        populate(device, 1000, seed=3, fingers=0)
        self.start_devices({VARIANT: device})
        site = self.start_site(timeout_s=10)
        yield wait_until(lambda: site.count_events(type=SAVED_FROM_DEVICE, terminal_id=VARIANT) == 1000, "1,000 users read", timeout=100)
        self.assertTrue(site.online(VARIANT))
        self.assertFalse(site.gateway.registry.terminals[VARIANT].offline_reason, "never offline on the way")


class LongIds(ZkSite):
    @defer.inlineCallbacks
    def check(self, name: str):
        device = variant(name)
        healthy = ZkDevice(serial_number="HEALTHY")
        self.start_devices({HEALTHY: healthy, VARIANT: device})
        site = self.start_site()
        yield wait_until(lambda: site.online(HEALTHY, VARIANT), "both online")
        self.assertEqual(device.options["~PIN2Width"], "9")
        healthy.enroll("12345678901", "Long Id")
        healthy.enroll("12", "Short Id")
        yield wait_until(lambda: self.holds(VARIANT, "12"), "the short id on the narrow device")
        yield wait_until(lambda: site.server_record("12345678901") is not None, "the long id on the server")
        self.assertTrue(site.online(VARIANT))
        return site, device

    @defer.inlineCallbacks
    def test_a_firmware_that_refuses_long_ids_stays_online(self):
        _site, device = yield self.check("pin-refuse")
        self.assertFalse(self.holds(VARIANT, "12345678901"))

    @defer.inlineCallbacks
    def test_a_firmware_that_truncates_long_ids_stays_online_and_is_never_given_one(self):
        site, device = yield self.check("pin-truncate")
        yield wait_until(lambda: site.count_events(type=PUSH_REFUSED, terminal_id=VARIANT, user_id="12345678901") >= 1,
                         "the long id refused for the narrow device, visibly")
        self.assertFalse(self.holds(VARIANT, "12345678901") or self.holds(VARIANT, "123456789"), "nothing written to be cut")

    @defer.inlineCallbacks
    def test_an_id_cut_by_the_firmware_never_comes_back_as_a_new_person(self):
        site, device = yield self.check("pin-truncate")
        polled = device.requests[Command.GET_FREE_SIZES]
        yield wait_until(lambda: device.requests[Command.GET_FREE_SIZES] >= polled + 3, "three more polls that would find a cut id")
        self.assertIsNone(site.server_record("123456789"), "no phantom user made of the cut id")


class HostileFirmwares(ZkSite):
    timeout = 60

    @defer.inlineCallbacks
    def offline_with(self, device: ZkDevice, reason: str, **site_options):
        healthy = ZkDevice(serial_number="HEALTHY")
        self.start_devices({HEALTHY: healthy, VARIANT: device})
        site = self.start_site(**site_options)
        yield wait_until(lambda: site.online(HEALTHY), "the healthy device online")
        term = site.gateway.registry.terminals[VARIANT]
        yield wait_until(lambda: reason in (term.offline_reason or ""), f"the hostile device offline with {reason!r}", timeout=30)
        self.assertFalse(site.online(VARIANT))
        healthy.enroll("900", "Still Synced")
        yield wait_until(lambda: site.server_record("900") is not None, "the healthy device still synced")
        return term.offline_reason

    @defer.inlineCallbacks
    def test_a_2_gb_table_announcement_is_refused_before_anything_is_held(self):
        device = variant("huge-buffer")
        populate(device, 3, fingers=0)
        peak_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reason = yield self.offline_with(device, "transfer limit")
        self.assertIn(f"the device announced a {2**31}-byte table (USERTEMP_RRQ), over the {MAX_TRANSFER}-byte transfer limit", reason)
        grown_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak_before_mb
        self.assertLess(grown_mb, 64, "the test process's peak memory did not grow by the 2 GB announced")

    @defer.inlineCallbacks
    def test_a_device_that_drips_its_answers_times_out_in_all(self):
        reason = yield self.offline_with(variant("drip"), "however it trickled", timeout_s=2, link=dict(request_limit_s=4))
        self.assertIn("the device took over 4 s to answer CONNECT, however it trickled", reason)
