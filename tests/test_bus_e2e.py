"""End to end over real ptys: a gateway on SQLite masters an emulated RS-485 bus (simulator.bus)
beside terminals on loopback TCP; and the serial ports underneath, opened by device and by URL.

What design.md promises for TCP holds on the bus: an enrolment reaches every other terminal
whichever link it came from; noise and collisions cost retries, never events; a terminal that
falls silent does not hold up the others and is caught up when it answers again.
"""

import pytest
from serial import SerialException
from twisted.internet import defer, protocol, reactor

from gateway.config import SerialBus
from gateway.sync.monitor import SAVE_FAILED, SAVED_FROM_DEVICE
from gateway.native.serial_port import SelectableSerialPort, ThreadedSerialTransport, open_serial
from gateway.terminals import ADMITTED
from live_site import LiveTestCase, Site, wait_until
from simulator.bus import BusSimulation
from simulator.people import People
from simulator.tcp import DialingTerminal

TCP_A, TCP_B = 101, 102
BUS = (201, 202, 203)
BAUD = 115200


class BusSite(Site):
    """A Site whose gateway also masters an emulated bus on a pty, with terminals ``bus_ids`` on it;
    those also in ``unlisted`` are on the bus but not in the gateway's configuration."""

    def __init__(self, db_url, tcp_ids, bus_ids, *, unlisted=(), noise=0.0, seed=0, converter=False):
        self.sim = BusSimulation(reactor, BAUD, bus_ids, noise=noise, seed=seed, tcp_port=0 if converter else None)
        serial = [dict(device=self.sim.path, baud=BAUD, ids=list(bus_ids))]
        listed = [t for t in bus_ids if t not in unlisted]
        super().__init__(db_url, terminal_ids=(*tcp_ids, *listed), serial=serial)
        self.tcp_ids = tcp_ids
        self.terminals.update({tid: drop.terminal for tid, drop in self.sim.drops.items()})

    def start(self) -> "BusSite":
        self.gateway.start()
        for terminal_id in self.tcp_ids:  # the bus terminals wait to be polled instead of dialling
            self.dialers[terminal_id] = DialingTerminal(self.terminals[terminal_id], reactor, "127.0.0.1", self.port).start()
        return self

    @property
    def master(self):
        return self.gateway.buses[0]

    @defer.inlineCallbacks
    def stop(self):
        yield super().stop()
        yield self.sim.stop()

    def bus_figure(self, name: str) -> float:
        metrics = self.gateway.metrics
        return metrics.value(getattr(metrics, name), bus=self.sim.path)


class BusSync(LiveTestCase):
    @defer.inlineCallbacks
    def start_site(self, tcp_ids=(TCP_A, TCP_B), bus_ids=BUS, **line):
        self.site = BusSite(f"sqlite:///{self.tmp_path / 'gateway.db'}", tcp_ids, bus_ids, **line).start()
        self.addCleanup(self.site.stop)
        self.people = People(seed=11)
        yield wait_until(self.site.online, "every terminal online, on TCP and on the bus")
        return self.site

    def holds(self, terminal_id, record) -> bool:
        return self.site.terminals[terminal_id].users.get(record.user_id) == record

    def holds_everywhere_but(self, origin, record) -> bool:
        return all(self.holds(t, record) for t in self.site.terminals if t != origin)

    @defer.inlineCallbacks
    def test_enrolment_on_a_bus_terminal_reaches_tcp_terminals_and_the_other_bus_terminals(self):
        site = yield self.start_site()
        person = self.people.person("8001")
        site.terminals[201].enroll(person)
        yield wait_until(lambda: self.holds_everywhere_but(201, person), "the user on every other terminal")
        self.assertEqual(site.server_record("8001"), person)
        self.assertEqual(site.count_events(type=SAVED_FROM_DEVICE, user_id="8001", terminal_id=201), 1)
        self.assertEqual(site.count_events(type=SAVE_FAILED), 0)

    @defer.inlineCallbacks
    def test_enrolment_on_a_tcp_terminal_reaches_every_bus_terminal(self):
        site = yield self.start_site()
        person = self.people.person("8002")
        site.terminals[TCP_A].enroll(person)
        yield wait_until(lambda: self.holds_everywhere_but(TCP_A, person), "the user on every other terminal")
        self.assertEqual(site.server_record("8002"), person)

    @defer.inlineCallbacks
    def test_noise_and_a_collision_cause_retries_not_lost_or_duplicated_events(self):
        site = yield self.start_site(tcp_ids=(), noise=2e-5, seed=3)
        site.sim.drops[202].talked_over = 2  # another device answers on top of 202's next answers
        person = self.people.person("8003")
        site.terminals[201].enroll(person)
        for n in range(60):
            site.terminals[BUS[n % 3]].verify(person.user_id)
        yield wait_until(lambda: self.holds(202, person) and self.holds(203, person), "the user on 202 and 203")
        logged = {t: site.terminals[t].next_event_id - 1 for t in BUS}
        yield wait_until(lambda: all(len(site.stored_event_ids(t)) == n for t, n in logged.items()),
                         "every event the bus terminals logged stored")
        for terminal_id, count in logged.items():
            self.assertEqual(site.stored_event_ids(terminal_id), list(range(1, count + 1)))
        # Nothing was even submitted twice: every event went to the event log once.
        self.assertEqual(site.gateway.metrics.value(site.gateway.metrics.events_ingested), sum(logged.values()))
        self.assertGreater(site.sim.bus.stats.collisions, 0)
        self.assertGreater(site.bus_figure("bus_crc_errors"), 0)
        self.assertGreater(site.bus_figure("bus_retries"), 0)

    @defer.inlineCallbacks
    def test_a_silent_terminal_does_not_stall_the_others_and_is_caught_up_when_it_returns(self):
        site = yield self.start_site(tcp_ids=(TCP_A,))
        site.master.regreet_after = lambda failures: min(1.0, 0.2 * 2 ** failures)  # back in seconds, not half a minute
        unplugged = site.sim.drops[202]
        unplugged.silent = True
        yield wait_until(lambda: not site.online(202), "the silent terminal marked offline", timeout=10)

        from_server = self.people.person("8004")
        yield site.gateway.users.create(from_server)
        at_the_door = self.people.person("8005")
        site.terminals[201].enroll(at_the_door)
        while_away = self.people.person("8006")
        site.terminals[202].enroll(while_away)  # enrolled at the keypad while its cable is out
        yield wait_until(lambda: all(self.holds(t, r) for t in (TCP_A, 203) for r in (from_server, at_the_door)),
                         "the others served while 202 is silent")
        self.assertNotIn("8006", site.terminals[201].users)

        unplugged.silent = False
        yield wait_until(lambda: site.online(202), "202 back online", timeout=10)
        yield wait_until(lambda: self.holds(202, from_server) and self.holds(202, at_the_door), "202 caught up")
        yield wait_until(lambda: self.holds_everywhere_but(202, while_away), "what was enrolled at 202 everywhere")
        self.assertGreater(site.bus_figure("bus_timeouts"), 0)

    @defer.inlineCallbacks
    def test_a_terminal_admitted_by_an_administrator_is_greeted_at_once_not_at_its_next_try(self):
        site = BusSite(f"sqlite:///{self.tmp_path / 'gateway.db'}", (), (201, 202), unlisted=(202,)).start()
        self.addCleanup(site.stop)
        site.master.regreet_after = lambda failures: 3600  # the next try would come after the test's end
        stranger = next(drop for drop in site.master.drops if drop.terminal_id == 202)
        yield wait_until(lambda: site.online(201) and stranger.failures and stranger.session is None,
                         "201 online and 202 refused by the allowlist")
        yield site.gateway.registry.set_admission(202, ADMITTED, "secret-202")
        yield wait_until(lambda: site.online(202), "202 online once admitted", timeout=10)

    @defer.inlineCallbacks
    def test_a_bus_behind_a_serial_over_ip_converter_is_reached_with_a_socket_url(self):
        site = yield self.start_site(tcp_ids=(TCP_A,), bus_ids=(201, 202), converter=True)
        self.assertTrue(site.sim.path.startswith("socket://"))
        person = self.people.person("8007")
        site.terminals[202].enroll(person)
        yield wait_until(lambda: self.holds_everywhere_but(202, person), "the user on every other terminal")


class Received(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.lost = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=protocol.connectionDone):
        self.lost = True


class SerialPorts(LiveTestCase):
    @defer.inlineCallbacks
    def test_a_pty_is_read_and_written_on_the_reactor(self):
        sim = BusSimulation(reactor, BAUD, ())
        self.addCleanup(sim.stop)
        sim.bus.to_master = lambda data: None
        heard = []
        sim.bus.from_master = heard.append  # what the gateway writes, straight from the pty
        received = Received()
        port = open_serial(received, SerialBus(sim.path, BAUD), reactor)
        self.assertIsInstance(port, SelectableSerialPort)
        port.write(b"to the line")
        sim.port.write(b"from the line")
        yield wait_until(lambda: b"".join(heard) == b"to the line" and received.data == b"from the line", "bytes both ways")
        port.loseConnection()
        yield wait_until(lambda: received.lost, "the port closed")

    @defer.inlineCallbacks
    def test_a_port_without_a_file_descriptor_is_read_and_written_on_threads(self):
        received = Received()
        port = open_serial(received, SerialBus("loop://", BAUD), reactor)  # pyserial's loopback URL
        self.assertIsInstance(port, ThreadedSerialTransport)
        port.write(b"round trip")
        yield wait_until(lambda: received.data == b"round trip", "the bytes back through the loop")
        port.loseConnection()
        yield wait_until(lambda: received.lost, "the port closed")

    def test_rts_settings_on_a_port_that_cannot_switch_rts_are_refused_saying_why(self):
        sim = BusSimulation(reactor, BAUD, ())
        self.addCleanup(sim.stop)
        with pytest.raises(SerialException, match="cannot switch RTS"):
            open_serial(Received(), SerialBus(sim.path, BAUD, rs485=dict(rts_level_for_tx=True)), reactor)
