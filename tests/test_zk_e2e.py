"""End to end: ZK devices (emulated, each with its own comm key) beside native terminals, one
gateway on SQLite, real loopback sockets, every wait bounded.

What a person could check: the server's records, each ZK device's own tables and each native
terminal's store, and the event log.
"""

import socket
import threading
import time

from twisted.internet import defer, reactor, threads

from api_site import http
from gateway.sync import changes as rules
from gateway.sync.history import read_history
from gateway.sync.monitor import RECONCILED, SAVED_FROM_DEVICE
from gateway.zk import mapping
from live_site import LiveTestCase, Site, wait_until
from protocol.events import EventCode, Origin
from protocol.records import Card, CardType, hash_pin
from protocol.zk.commands import Command
from simulator.people import People
from simulator.zk.device import Firmware, ZkDevice, populate
from simulator.zk.tcp import listen

ZK1, ZK2, ZK3 = 1, 2, 3
NATIVE_A, NATIVE_B = 101, 102
COMM_KEYS = {ZK1: 0, ZK2: 1234, ZK3: 999_999}
POLL_S = 0.2


class ZkSite(LiveTestCase):
    timeout = 120

    def start_devices(self, devices: dict[int, ZkDevice]) -> None:
        self.devices = devices
        self.ports = {tid: listen(device, reactor) for tid, device in devices.items()}
        for port in self.ports.values():
            self.addCleanup(_stop_listening, port)

    def start_site(self, native=(), timeout_s: float = 10, link: dict | None = None, links: dict[int, dict] | None = None, **config) -> Site:
        """``link``: more [[zk]] settings for every device (request_limit_s, chunk_size, ...);
        ``links``: for some, by terminal id."""
        numbers = {tid: port.getHost().port for tid, port in self.ports.items()}
        entries = [dict(id=tid, host="127.0.0.1", port=numbers[tid], comm_key=self.devices[tid].comm_key, poll_s=POLL_S, timeout_s=timeout_s,
                        **(link or {}), **(links or {}).get(tid, {}))
                   for tid in self.devices]
        self.site = Site(self.db_url, terminal_ids=native, zk=entries, **config).start()
        self.addCleanup(self.site.stop)
        return self.site

    def holds(self, tid: int, user_id: str) -> bool:
        return self.devices[tid].user(user_id) is not None

    def templates_of(self, tid: int, user_id: str) -> dict[int, bytes]:
        device = self.devices[tid]
        user = device.user(user_id)
        return {} if user is None else {fid: t.template for (uid, fid), t in device.templates.items() if uid == user.uid}


def _stop_listening(port):
    port.factory.drop_connections()
    return port.stopListening()


class MixedSite(ZkSite):
    @defer.inlineCallbacks
    def test_zk_devices_and_native_terminals_keep_each_other_in_sync(self):
        self.start_devices({
            ZK1: ZkDevice(comm_key=COMM_KEYS[ZK1], serial_number="ZK1"),
            ZK2: ZkDevice(comm_key=COMM_KEYS[ZK2], serial_number="ZK2"),
            # Another fingerprint algorithm, and an old firmware: 28-byte users (numeric ids, names of
            # 8 bytes), 16-byte attendance records, table chunks answered inline.
            ZK3: ZkDevice(comm_key=COMM_KEYS[ZK3], serial_number="ZK3", fp_version=9,
                          firmware=Firmware(user_record_size=28, attendance_record_size=16, chunks_through_prepare_data=False)),
        })
        zk1, zk2, zk3 = (self.devices[t] for t in (ZK1, ZK2, ZK3))
        zk3.enroll("1", "Old")  # an empty device on TCP is taken for 72-byte records, as pyzk does: this one says otherwise
        site = self.start_site(native=(NATIVE_A, NATIVE_B))
        yield wait_until(lambda: site.online(ZK1, ZK2, ZK3, NATIVE_A, NATIVE_B), "every terminal online")
        yield wait_until(lambda: all(self.holds(t, "1") for t in (ZK1, ZK2)), "ZK-3's user on the others")

        # An enrolment at ZK-1 reaches the server, ZK-2, ZK-3 (without its templates) and the natives.
        finger = bytes(range(256)) * 3
        zk1.enroll("500", "Ana Lima", card=0xA1B2C3D4, fingers={3: finger})
        yield wait_until(lambda: all(self.holds(t, "500") for t in (ZK2, ZK3))
                         and all("500" in site.terminals[t].users for t in (NATIVE_A, NATIVE_B)), "user 500 everywhere")
        server = site.server_record("500")
        self.assertEqual((server.name, server.cards), ("Ana Lima", (Card(CardType.CSN, bytes.fromhex("a1b2c3d4")),)))
        yield wait_until(lambda: [(f.index, f.format, f.template1) for f in site.server_record("500").fingerprints] == [(3, "zk10", finger)],
                         "the template pulled from ZK-1")  # templates are read on their own, after the user
        yield wait_until(lambda: self.templates_of(ZK2, "500") == {3: finger}, "the template on ZK-2")
        self.assertEqual(self.templates_of(ZK3, "500"), {}, "ZK-3's algorithm cannot use a zk10 template")
        self.assertEqual(zk3.user("500").name, "Ana Lima", "8 bytes on an old firmware")
        self.assertEqual(zk2.user("500").card, 0xA1B2C3D4)
        self.assertEqual(site.terminals[NATIVE_A].users["500"], server)
        self.assertEqual(site.count_events(type=SAVED_FROM_DEVICE, user_id="500", terminal_id=ZK1), 1)

        # An edit at ZK-2: the server keeps its name; the vacant PIN is filled; ZK-2 is corrected.
        # (While the gateway holds ZK-2's keypad, the edit waits, as at a real device.)
        zk2.edit("500", name="Somebody Else", password="4321")
        yield wait_until(lambda: site.server_record("500").pin_hash is not None, "the PIN pulled from ZK-2")
        self.assertEqual(site.server_record("500").name, "Ana Lima")
        self.assertEqual(site.server_record("500").pin_hash, hash_pin("500", "4321"))
        yield wait_until(lambda: zk2.user("500").name == "Ana Lima", "ZK-2 given the server's name back")
        self.assertEqual(zk2.user("500").password, "4321", "the PIN set at ZK-2 stays on ZK-2")
        yield wait_until(lambda: site.terminals[NATIVE_B].users["500"].pin_hash is not None, "the PIN on the natives")

        # A delete at ZK-3 deletes nothing on the server, and is logged as the device's.
        zk3.delete("500")
        yield wait_until(lambda: site.count_events(terminal_id=ZK3, code=EventCode.DELETE_SUCCESS, sub_code=Origin.DEVICE) == 1,
                         "the delete at ZK-3 logged")
        self.assertIsNotNone(site.server_record("500"))
        self.assertTrue(self.holds(ZK1, "500") and self.holds(ZK2, "500"))

        # The user's history names, for each ZK device's change, the rule that took or refused each field.
        entries, _ = yield site.gateway.db.read(read_history, "500")
        decided = [(e["terminal_id"], {(c["field"], c["outcome"], c["rule"]) for c in e["changes"]}) for e in entries]
        first_from, first = decided[0]
        self.assertEqual(first_from, ZK1)
        self.assertLessEqual({("name", "taken", rules.NEW_USER), ("cards", "taken", rules.NEW_USER)}, first)
        self.assertEqual({rule for _, _, rule in first}, {rules.NEW_USER})
        self.assertIn((ZK2, {("name", "refused", rules.SERVER_KEPT), ("pin_hash", "taken", rules.VACANT_FILLED)}), decided)
        self.assertEqual(decided[-1], (ZK3, {("user", "noted", rules.TERMINAL_DELETE)}))

        # A punch at ZK-1 is one verification event, however many polls read the log again.
        zk1.punch("500")
        yield wait_until(lambda: site.count_events(terminal_id=ZK1, code=EventCode.VERIFY_SUCCESS) == 1, "the punch stored")
        polled = zk1.requests[Command.GET_FREE_SIZES]
        yield wait_until(lambda: zk1.requests[Command.GET_FREE_SIZES] >= polled + 3, "three more polls of ZK-1", timeout=60)
        self.assertEqual(site.count_events(terminal_id=ZK1, code=EventCode.VERIFY_SUCCESS), 1)

        # ZK-2 goes away; an enrolment at a native terminal reaches ZK-1 and ZK-3 now, ZK-2 when it is back.
        port2 = self.ports[ZK2].getHost().port
        yield _stop_listening(self.ports[ZK2])
        yield wait_until(lambda: not site.online(ZK2), "ZK-2 offline")
        person = People(seed=3).person("600")
        site.terminals[NATIVE_A].enroll(person)
        yield wait_until(lambda: self.holds(ZK1, "600") and self.holds(ZK3, "600"), "user 600 on ZK-1 and ZK-3")
        self.assertEqual(zk1.user("600").name, person.name)
        self.assertFalse(self.holds(ZK2, "600"))
        self.ports[ZK2] = reactor.listenTCP(port2, self.ports[ZK2].factory, interface="127.0.0.1")
        self.addCleanup(_stop_listening, self.ports[ZK2])
        yield wait_until(lambda: self.holds(ZK2, "600"), "ZK-2 converged after it returned", timeout=60)

        # A punch on the old firmware (16-byte records) names its user too.
        zk3.punch("600")
        yield wait_until(lambda: site.count_events(terminal_id=ZK3, code=EventCode.VERIFY_SUCCESS, user_id="600") == 1, "ZK-3's punch")

        # Nothing the gateway wrote came back as a device edit.
        for tid in (ZK1, ZK2, ZK3):
            self.assertEqual(site.count_events(terminal_id=tid, code=EventCode.UPDATE_SUCCESS, sub_code=Origin.DEVICE),
                             1 if tid == ZK2 else 0)


class PinThreads(ZkSite):
    @defer.inlineCallbacks
    def test_a_devices_pins_are_hashed_on_the_zk_threads_which_end_with_the_gateway(self):
        """Not on Twisted's default threads, which also resolve the names devices are dialled at."""
        hashed_on = []
        self.patch(mapping, "hash_pin", lambda user_id, pin: hashed_on.append(threading.current_thread().name) or hash_pin(user_id, pin))
        self.addCleanup(self.assert_no_pin_threads)  # runs after the site's stop, added later
        self.start_devices({ZK1: ZkDevice(comm_key=COMM_KEYS[ZK1])})
        self.devices[ZK1].enroll("7", "Has A Pin", password="2580")
        site = self.start_site()
        yield wait_until(lambda: site.server_record("7") is not None, "the person pulled")
        self.assertEqual(site.server_record("7").pin_hash, hash_pin("7", "2580"))
        self.assertTrue(hashed_on)
        self.assertEqual({name.rsplit("-", 1)[0] for name in hashed_on}, {"PoolThread-zk-pins"})

    def assert_no_pin_threads(self):
        self.assertEqual([t.name for t in threading.enumerate() if t.name.startswith("PoolThread-zk-pins")], [])


class LargeDevice(ZkSite):
    timeout = 300

    @defer.inlineCallbacks
    def test_3000_users_are_read_and_a_fresh_device_is_filled_completely(self):
        full, fresh = ZkDevice(serial_number="FULL"), ZkDevice(comm_key=77, serial_number="FRESH")
        populate(full, 3000, seed=5)
        self.start_devices({ZK1: full, ZK2: fresh})
        site = self.start_site()
        target = next(t for t in site.gateway.serving["zk"].services if t.terminal_id == ZK2)
        yield target.stop()  # the fresh device joins once the server holds everyone
        yield wait_until(lambda: site.online(ZK1), "the full device online")
        read_started = time.monotonic()
        yield wait_until(lambda: site.count_events(type=SAVED_FROM_DEVICE, terminal_id=ZK1) == 3000, "3,000 users read", timeout=180)
        read_s = time.monotonic() - read_started
        started = time.monotonic()
        target.start()
        yield wait_until(lambda: len(fresh.users) == 3000 and len(fresh.templates) == 3000, "the fresh device filled", timeout=180)
        fill_s = time.monotonic() - started
        print(f"\nZK: 3,000 users and templates read from a device in {read_s:.1f} s; a fresh device filled in {fill_s:.1f} s")
        for uid, user in full.users.items():
            copy = fresh.user(user.user_id)
            self.assertEqual((copy.name, copy.card), (user.name, user.card))
            self.assertEqual(self.templates_of(ZK2, user.user_id), self.templates_of(ZK1, user.user_id))


class WipedDevice(ZkSite):
    @defer.inlineCallbacks
    def test_a_device_wiped_while_watched_is_refilled_and_the_api_says_so(self):
        source, door = ZkDevice(serial_number="SOURCE"), ZkDevice(serial_number="DOOR")
        populate(source, 5, seed=3)
        self.start_devices({ZK1: source, ZK2: door})
        site = self.start_site(api_token="t0ken")
        yield wait_until(lambda: len(door.users) == 5, "the door holds everyone")
        for user in list(door.users.values()):  # "clear all data" in the device's menu, while the gateway watches
            door.delete(user.user_id)
        yield wait_until(lambda: len(door.users) == 5 and len(door.templates) == 5, "the door refilled")
        self.assertEqual(site.count_events(type="DELETE_SUCCESS", terminal_id=ZK2), 0, "the wipe is no keypad deletion")
        yield wait_until(lambda: site.count_events(type=RECONCILED, terminal_id=ZK2) == 5, "each repair a monitoring event")
        url = f"http://127.0.0.1:{site.gateway.http_port.getHost().port}"
        status, answer, _ = yield threads.deferToThread(http, "POST", f"{url}/api/reconcile", token="t0ken")
        found = {t["id"]: t for t in answer["terminals"]}
        self.assertEqual((status, found[ZK2]["compared"], found[ZK2]["differences"], found[ZK2]["note"]), (200, 5, 0, None))
        status, shown, _ = yield threads.deferToThread(http, "GET", f"{url}/api/terminals/{ZK2}", token="t0ken")
        self.assertEqual(shown["reconciliation"]["repaired_total"], 5, "the API says what was done")



class SharedDevice(ZkSite):
    @defer.inlineCallbacks
    def test_the_sites_own_zk_software_uses_a_released_device_between_polls(self):
        from zk import ZK  # pyzk: the site's own software, here

        shared = ZkDevice(serial_number="SHARED", firmware=Firmware(sessions=1))  # one client at a time, as most devices
        held = ZkDevice(serial_number="HELD", firmware=Firmware(sessions=1))
        populate(shared, 2, seed=4)
        self.start_devices({ZK1: shared, ZK2: held})
        site = self.start_site(links={ZK1: dict(session="released")})
        yield wait_until(lambda: site.online(ZK1, ZK2) and len(held.users) == 2, "both online, the shared device's people on the other")

        def enrol_with_pyzk(tid: int, user_id: str, tries: int) -> int:
            """Connect as the site's software does, enrol one person, disconnect: the tries it took."""
            for attempt in range(1, tries + 1):
                try:
                    conn = ZK("127.0.0.1", self.ports[tid].getHost().port, timeout=2, ommit_ping=True).connect()
                except Exception:
                    time.sleep(0.05)  # the gateway is polling it: the next gap
                    continue
                try:
                    conn.get_users()
                    conn.set_user(name="Set By ZKTime", user_id=user_id)
                finally:
                    conn.disconnect()
                return attempt
            raise AssertionError(f"pyzk never had the device in {tries} tries")

        tries = yield threads.deferToThread(enrol_with_pyzk, ZK1, "700", 100)
        yield wait_until(lambda: self.holds(ZK2, "700") and site.server_record("700") is not None, "pyzk's enrolment synced")
        self.assertEqual(site.server_record("700").name, "Set By ZKTime")
        self.assertTrue(site.online(ZK1), "the shared device stayed online")
        print(f"\nZK: pyzk had a released device after {tries} tries; "
              f"the gateway was turned away {self.ports[ZK1].factory.turned_away} times")
        with self.assertRaises(AssertionError):  # a held session leaves the site's software no gap
            yield threads.deferToThread(enrol_with_pyzk, ZK2, "701", 5)

    @defer.inlineCallbacks
    def test_a_released_device_away_is_offline_with_the_reason_and_dialled_again(self):
        device = ZkDevice(serial_number="AWAY", firmware=Firmware(sessions=1))
        populate(device, 2, seed=5)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            number = probe.getsockname()[1]  # closed again: nothing listens there
        site = Site(self.db_url, terminal_ids=(), zk=[dict(id=ZK1, host="127.0.0.1", port=number, session="released", timeout_s=1,
                                                            poll_s=POLL_S)]).start()
        self.addCleanup(site.stop)
        term = site.gateway.registry.terminals[ZK1]
        yield wait_until(lambda: "cannot connect" in (term.offline_reason or ""), "offline with the reason")
        port = listen(device, reactor, number)
        self.addCleanup(_stop_listening, port)
        yield wait_until(lambda: site.online(ZK1) and site.server_record("2") is not None, "dialled again, read", timeout=60)
        yield _stop_listening(port)  # gone between polls: busy for timeout_s, then offline
        yield wait_until(lambda: not site.online(ZK1), "offline once it is not to be had")
        self.assertIn("not to be had for", term.offline_reason)
