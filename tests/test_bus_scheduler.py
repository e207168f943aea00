"""Bus master unit tests: task.Clock, no sockets, no sleeps.

The poll scheduler's policy and the [[serial]] settings are tested on their own; the master is
tested against the emulated line (simulator.bus.EmulatedBus) running on the same clock, with
simulated terminals at addresses, so timing, retries, collisions and silence are exact and
repeatable.
"""

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from gateway.native.bus import BusMaster
from gateway.native.bus.scheduler import POLL, SEND, Drop, PollScheduler
from gateway.native.bus.timing import LineTiming
from gateway.config import ConfigError, GatewayConfig, SerialBus, parse_serial
from gateway.native.doorman import Doorman
from gateway.native.link_timers import LinkTimers
from gateway.metrics import Metrics
from gateway.sync.connection import Refused
from gateway.native.session import TerminalSession
from protocol import Frame, StreamDecoder, parse_body
from protocol.errors import ErrorCode
from protocol.messages import Command
from simulator.bus import EmulatedBus
from simulator.terminal import Terminal

# -- the scheduler's policy ---------------------------------------------------------------------


def online_drops(count: int) -> list[Drop]:
    return [Drop(address, online=True) for address in range(1, count + 1)]


def test_idle_terminals_are_polled_in_turn_and_no_faster_than_the_interval():
    drops = online_drops(3)
    scheduler = PollScheduler(drops, poll_interval_s=0.1)
    turns = [scheduler.next_turn(0.0) for _ in range(3)]
    assert [(t.drop.address, t.kind) for t in turns] == [(1, POLL), (2, POLL), (3, POLL)]
    assert scheduler.next_turn(0.05) == pytest.approx(0.1)  # nothing due: when to ask again
    assert scheduler.next_turn(0.1).drop.address == 1


def test_every_due_terminal_is_polled_once_between_two_sends_however_busy_the_line():
    drops = online_drops(4)
    busy = drops[0]
    scheduler = PollScheduler(drops, poll_interval_s=0.0)
    turns = []
    for n in range(15):
        busy.frames.append(b"push")  # the pusher always has more for this terminal
        turn = scheduler.next_turn(float(n))
        turns.append((turn.kind, turn.drop.address))
        if turn.kind == SEND:
            turn.drop.frames.popleft()
    sweep = [(POLL, 1), (POLL, 2), (POLL, 3), (POLL, 4)]
    assert turns == [*sweep, (SEND, 1), *sweep, (SEND, 1), *sweep, (SEND, 1)]


def test_a_terminal_with_events_waiting_cannot_keep_the_line_from_the_others():
    drops = online_drops(2)
    storm, pusher = drops
    pusher.online = False  # only sends for it
    scheduler = PollScheduler(drops, poll_interval_s=0.1)
    turns = []
    for n in range(6):
        pusher.frames.append(b"push")
        storm.next_poll_at = 0.0  # it answered a full batch: poll it again at once
        turn = scheduler.next_turn(1.0 + n)
        turns.append((turn.kind, turn.drop.address))
        if turn.kind == SEND:
            turn.drop.frames.popleft()
    assert turns == [(POLL, 1), (SEND, 2)] * 3


def test_terminals_with_frames_share_the_send_turns_round_robin():
    drops = [Drop(address) for address in (1, 2, 3)]  # not online: only sends, no polls
    for drop in drops[:2]:
        drop.frames.extend([b"a", b"b", b"c"])
    scheduler = PollScheduler(drops, poll_interval_s=0.1)
    order = []
    while (turn := scheduler.next_turn(0.0)) is not None:
        order.append(turn.drop.address)
        turn.drop.frames.popleft()
    assert order == [1, 2, 1, 2, 1, 2]


def test_committing_or_paused_terminals_are_not_polled():
    drops = online_drops(3)
    drops[0].committing = True
    drops[1].paused = True
    scheduler = PollScheduler(drops, poll_interval_s=0.1)
    assert scheduler.next_turn(0.0).drop.address == 3
    assert scheduler.next_turn(0.0) == pytest.approx(0.1)


def test_waits_follow_the_baud_rate_and_the_frame_length():
    slow, fast = LineTiming(9600), LineTiming(115200)
    assert slow.tx_s(960) == pytest.approx(1.0)
    assert slow.answer_deadline_s(960) == pytest.approx(1.0 + slow.answer_within_s + slow.latency_s)
    assert fast.answer_deadline_s(100) < slow.answer_deadline_s(100)
    assert fast.turnaround_s == pytest.approx(3.5 * 10 / 115200)


# -- [[serial]] settings --------------------------------------------------------------------------


@pytest.mark.parametrize("given, device, baud", [
    ("/dev/ttyUSB0", "/dev/ttyUSB0", 9600),
    ("/dev/ttyUSB0:38400", "/dev/ttyUSB0", 38400),
    ("socket://10.0.0.5:4001", "socket://10.0.0.5:4001", 9600),  # a URL's port is not a baud rate
    ("socket://10.0.0.5:4001:115200", "socket://10.0.0.5:4001", 115200),
])
def test_the_command_lines_device_baud_suffix(given, device, baud):
    bus = parse_serial({"device": given})
    assert (bus.device, bus.baud) == (device, baud)
    assert [a for a, _ in bus.addresses] == list(range(1, 9))


def test_addresses_pinned_to_terminals_or_given_as_ids():
    assert parse_serial({"device": "/dev/ttyS0", "ids": [201, 202]}).addresses == ((1, 201), (2, 202))
    pinned = parse_serial({"device": "/dev/ttyS0", "addresses": [{"address": 5, "id": 205}, 7]})
    assert pinned.addresses == ((5, 205), (7, None))


@pytest.mark.parametrize("entry, complaint", [
    ({"device": "/dev/ttyS0", "addresses": [1, 1]}, "listed twice"),
    ({"device": "/dev/ttyS0", "addresses": [255]}, r"addresses\[0\] must be at most 254"),
    ({"device": "/dev/ttyS0", "addresses": [{"address": 0, "id": 7}]}, r"addresses\[0\].address must be at least 1"),
    ({"device": "/dev/ttyS0", "ids": [1], "addresses": [1]}, "not both"),
    ({"device": "/dev/ttyS0", "parity": "E"}, "unknown setting"),
    ({"device": "/dev/ttyS0", "rs485": {"rts_on_send": True}}, "unknown setting rs485.rts_on_send"),
    ({"device": "/dev/ttyS0", "rs485": {"delay_before_tx": -1}}, "rs485.delay_before_tx must be at least 0"),
    ({"device": "/dev/ttyS0", "echo": 1}, "echo must be true or false, not a whole number"),
    ({"device": "socket://h:4001", "rs485": {"rts_level_for_tx": True}}, "converter switches direction"),
    ({"device": "/dev/ttyS0", "baud": "fast"}, "baud must be"),
])
def test_bad_serial_settings_say_what_is_wrong(entry, complaint):
    with pytest.raises(ConfigError, match=complaint):
        parse_serial(entry)


def test_a_device_configured_twice_is_refused():
    with pytest.raises(ConfigError, match="twice"):
        GatewayConfig(serial=[{"device": "/dev/ttyS0"}, {"device": "/dev/ttyS0:19200"}]).validate()


# -- the master on an emulated line -------------------------------------------------------------

SECRET = "s3cret"


class FakeGateway:
    """Stands in for the gateway's collaborators of a session: admits every terminal below 900,
    records what sessions report."""

    def __init__(self, clock, commit_at_once=True):
        self.clock = clock
        self.metrics = Metrics()
        self.timers = LinkTimers(clock)
        self.commit_at_once = commit_at_once
        self.stored: dict[int, list[int]] = {}  # terminal -> event ids, in submission order
        self.commits: list[tuple[defer.Deferred, int]] = []  # held commits and the id each acknowledges
        self.established = []
        self.ended = []
        self.online_now: set[int] = set()

    def secret_for(self, terminal_id, info, description):
        if terminal_id >= 900:
            raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"terminal {terminal_id} is not known")
        return SECRET.encode()

    def refused(self, terminal_id, description, reason):
        return terminal_id < 900

    def begin_log(self, terminal_id, log_epoch):
        return defer.succeed(max(self.stored.get(terminal_id, [0])))

    def submit(self, terminal_id, events, log_epoch=None):
        self.stored.setdefault(terminal_id, []).extend(e.event_id for e in events)
        d = defer.Deferred()
        if self.commit_at_once:
            d.callback(events[-1].event_id)
        else:
            self.commits.append((d, events[-1].event_id))
        return d

    def online(self, connection):
        self.established.append(connection.terminal_id)
        self.online_now.add(connection.terminal_id)
        return True

    def offline(self, connection):
        self.ended.append(connection.terminal_id)
        self.online_now.discard(connection.terminal_id)

    def new_session(self, link, expected_terminal_id=None, timing=None):
        return TerminalSession(link, clock=self.clock, admission=self, events=self, presence=self, doorman=Doorman(self.clock, self.metrics), metrics=self.metrics,
                               timers=self.timers, timing=timing, expected_terminal_id=expected_terminal_id)


class LineTransport:
    """The master's serial port, wired straight to the emulated line; keeps the frames it sends."""

    def __init__(self, line, port):
        self.line = line
        self.port = port
        self.sent: list[Frame] = []
        self._decoder = StreamDecoder()

    def write(self, data):
        self.sent += [f for f in self._decoder.feed(data) if isinstance(f, Frame)]
        self.line.from_master(data)

    def loseConnection(self):
        self.port.connectionLost(Failure(ConnectionDone()))


class Rig:
    """A master and terminals on one emulated line, all on one task.Clock."""

    def __init__(self, addresses=(1, 2, 3), baud=115200, terminal_id_base=200, commit_at_once=True, echo=False, **line):
        self.clock = task.Clock()
        self.gateway = FakeGateway(self.clock, commit_at_once)
        self.line = EmulatedBus(self.clock, baud, echo=echo, **line)
        self.transport = None
        self.terminals = {}
        for address in addresses:
            terminal = Terminal(terminal_id_base + address, SECRET, address=address, clock=self.now_ms)
            self.terminals[address] = self.line.attach(terminal)
        bus = SerialBus("emulated", baud, tuple((a, None) for a in addresses), echo=echo)
        self.master = BusMaster(bus, None, self.gateway.metrics, self.gateway.new_session, clock=self.clock, open_port=self._open)
        self.master.start()

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _open(self, protocol, bus, reactor):
        self.transport = LineTransport(self.line, protocol)
        self.line.to_master = protocol.dataReceived
        protocol.makeConnection(self.transport)

    @property
    def sent(self) -> list[Frame]:
        return self.transport.sent

    def terminal(self, address) -> Terminal:
        return self.terminals[address].terminal

    def run(self, seconds: float, step: float = 0.0005) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def run_until(self, predicate, what: str, limit_s: float = 30.0, step: float = 0.0005) -> None:
        waited = 0.0
        while not predicate():
            if waited > limit_s:
                raise AssertionError(f"not within {limit_s:g} s of bus time: {what}")
            self.clock.advance(step)
            waited += step

    def sent_to(self, address, command) -> list[Frame]:
        return [f for f in self.sent if f.address == address and f.command == command and not f.is_response]


def test_every_terminal_is_greeted_and_polled_without_anyone_talking_over_anyone():
    rig = Rig()
    rig.run_until(lambda: len(rig.gateway.established) == 3, "three sessions established")
    rig.run(0.5)
    for address in (1, 2, 3):
        assert len(rig.sent_to(address, Command.POLL)) >= 3
    assert rig.line.stats.collisions == 0
    assert rig.line.stats.errors == 0
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_timeouts, bus="emulated") == 0


def test_polled_events_are_acknowledged_only_in_a_poll_after_their_commit():
    rig = Rig(addresses=(1,), commit_at_once=False)
    rig.run_until(lambda: rig.gateway.established, "the session")
    terminal = rig.terminal(1)
    for _ in range(3):
        terminal.verify("someone")
    rig.run_until(lambda: rig.gateway.commits, "the events submitted")
    polls_before = len(rig.sent_to(1, Command.POLL))
    rig.run(0.5)
    assert len(rig.sent_to(1, Command.POLL)) == polls_before  # no poll while the commit is pending
    assert terminal.acked_through == 0
    d, ack = rig.gateway.commits.pop()
    d.callback(ack)
    rig.run_until(lambda: terminal.acked_through == 3, "the terminal told the events are stored")
    acks = [parse_body(f).ack_through for f in rig.sent_to(1, Command.POLL)]
    assert acks[polls_before] == 3 and max(acks[:polls_before]) == 0
    assert rig.gateway.stored[201] == [1, 2, 3]


def test_noise_causes_retries_not_lost_or_duplicated_events():
    rig = Rig(noise=3e-4, seed=5)
    rig.run_until(lambda: len(rig.gateway.established) == 3, "three sessions established despite the noise")
    for n in range(40):
        rig.terminal(1 + n % 3).verify(f"person {n}")
        rig.run(0.02)
    rig.run_until(lambda: all(rig.terminal(a).acked_through == rig.terminal(a).next_event_id - 1 for a in (1, 2, 3)),
                  "every event acknowledged")
    for address in (1, 2, 3):
        terminal = rig.terminal(address)
        assert rig.gateway.stored[terminal.terminal_id] == list(range(1, terminal.next_event_id))
    assert rig.line.stats.flipped_bits > 0
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_crc_errors, bus="emulated") > 0
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_retries, bus="emulated") > 0


def test_a_collision_is_retried_and_the_events_arrive_once():
    rig = Rig(addresses=(1, 2))
    rig.run_until(lambda: len(rig.gateway.established) == 2, "both sessions")
    rig.terminals[1].talked_over = 1  # another device answers at the same time as the next answer
    rig.terminal(1).verify("someone")
    rig.run_until(lambda: rig.terminal(1).acked_through == 1, "the event acknowledged")
    assert rig.line.stats.collisions == 1
    assert rig.gateway.stored[201] == [1]
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_retries, bus="emulated") >= 1
    assert not rig.gateway.ended


def test_a_late_answer_is_ignored_and_the_retry_is_answered():
    rig = Rig(addresses=(1, 2))
    rig.run_until(lambda: len(rig.gateway.established) == 2, "both sessions")
    late = rig.terminals[1]
    late.late_answers, late.late_by_s = 1, 0.3  # past the deadline, into the retry
    late.terminal.verify("someone")
    rig.run_until(lambda: late.terminal.acked_through == 1, "the event acknowledged")
    assert rig.gateway.stored[201] == [1]
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_timeouts, bus="emulated") >= 1
    assert not rig.gateway.ended


def test_a_silent_terminal_goes_offline_is_greeted_less_often_and_comes_back():
    rig = Rig()
    rig.run_until(lambda: len(rig.gateway.established) == 3, "three sessions")
    quiet = rig.terminals[2]
    quiet.silent = True
    rig.run_until(lambda: 202 in rig.gateway.ended, "the silent terminal marked offline", limit_s=5)
    hellos_at_offline = len(rig.sent_to(2, Command.HELLO))
    rig.terminal(1).verify("someone")
    rig.run_until(lambda: rig.terminal(1).acked_through == 1, "the others still served")
    rig.run(8)
    greetings = len(rig.sent_to(2, Command.HELLO)) - hellos_at_offline
    assert 2 <= greetings <= 5  # 0.5, 1, 2, 5 s apart: less and less often
    polls = [len(rig.sent_to(a, Command.POLL)) for a in (1, 3)]
    rig.run(1)
    assert all(len(rig.sent_to(a, Command.POLL)) > n + 5 for a, n in zip((1, 3), polls))
    quiet.silent = False
    rig.run_until(lambda: rig.gateway.online_now == {201, 202, 203}, "the terminal back online", limit_s=15)


def test_a_greeting_pending_when_the_port_is_lost_does_not_outlive_the_reopen():
    """An offline address waits to be greeted again; losing and reopening the port greets every
    address afresh, and the old greeting must not then start a second session beside the new one."""
    rig = Rig(addresses=(1, 2))
    rig.run_until(lambda: len(rig.gateway.established) == 2, "two sessions")
    rig.terminals[2].silent = True
    rig.run_until(lambda: 202 in rig.gateway.ended, "address 2 offline, its greeting pending", limit_s=5)
    rig.terminals[2].silent = False
    rig.transport.loseConnection()
    rig.run_until(lambda: rig.gateway.online_now == {201, 202}, "both back after the reopen", limit_s=15)
    ended_before = len(rig.gateway.ended)
    rig.run(40)  # past every greeting delay
    assert len(rig.gateway.ended) == ended_before  # no session was replaced by a stray greeting
    assert rig.gateway.online_now == {201, 202}


def test_a_terminal_that_lost_its_session_is_greeted_again():
    rig = Rig(addresses=(1,))
    rig.run_until(lambda: rig.gateway.established, "the session")
    rig.terminal(1).link_lost()  # rebooted: it answers the next POLL with NOT_AUTHENTICATED
    rig.run_until(lambda: rig.gateway.established == [201, 201], "a second session", limit_s=5)
    assert rig.gateway.ended == [201] and rig.gateway.online_now == {201}


def test_an_unknown_terminal_is_told_why_and_greeted_again_later():
    rig = Rig(addresses=(1,), terminal_id_base=900)  # terminal 901: the gateway refuses it
    rig.run_until(lambda: rig.sent and any(f.is_error for f in rig.sent), "the refusal sent", limit_s=5)
    rig.run(1.5)
    assert len(rig.sent_to(1, Command.HELLO)) >= 2
    assert not rig.gateway.established


def test_echo_of_the_masters_own_bytes_is_discarded():
    rig = Rig(addresses=(1, 2), echo=True)
    rig.run_until(lambda: len(rig.gateway.established) == 2, "both sessions through an echoing adapter")
    rig.terminal(2).verify("someone")
    rig.run_until(lambda: rig.terminal(2).acked_through == 1, "the event acknowledged")
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_crc_errors, bus="emulated") == 0
    assert rig.gateway.metrics.value(rig.gateway.metrics.bus_timeouts, bus="emulated") == 0


def test_stopping_closes_every_session_and_the_port():
    rig = Rig(addresses=(1, 2))
    rig.run_until(lambda: len(rig.gateway.established) == 2, "both sessions")
    done = []
    rig.master.stop().addCallback(done.append)
    assert done and sorted(rig.gateway.ended) == [201, 202]
    rig.line.stop()
    assert rig.clock.getDelayedCalls() == []  # no timer of the master or its sessions left behind
