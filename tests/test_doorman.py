"""Doorman: strangers limited in total and per address, guessed secrets slowed then locked out,
and the real terminal never pushed off. task.Clock and StringTransport, no sockets."""

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from gateway.native.doorman import DoorLimits, Doorman
from gateway.native.link_timers import LinkTimers
from gateway.native.tcp import CLOSE_GRACE_S, TcpLink
from gateway.metrics import Metrics
from gateway.quietlog import RepeatedLines
from protocol.messages import Command
from test_session import Collaborators, Peer


class Said:
    """A Logger stand-in that keeps what was said."""

    def __init__(self):
        self.lines = []

    def warn(self, format, **fields):
        self.lines.append(format.format(**fields))


def doorman(**limits) -> Doorman:
    clock, metrics = task.Clock(), Metrics()
    return Doorman(clock, metrics, DoorLimits(**limits), RepeatedLines(Said(), clock))


def guarded(**limits) -> Collaborators:
    """A session's collaborators whose doorman has these limits, all on its clock."""
    gateway = Collaborators()
    gateway.doorman = doorman(**limits)
    gateway.clock = gateway.doorman._clock
    gateway.timers = LinkTimers(gateway.clock)
    return gateway


def said(door: Doorman) -> list[str]:
    return door.lines._log.lines


def test_strangers_are_limited_per_address_and_in_total_and_refusals_are_counted_and_logged():
    door = doorman(max_strangers=5, max_strangers_per_source=2)
    assert door.arrive("10.0.0.1") and door.arrive("10.0.0.1")
    assert not door.arrive("10.0.0.1")
    assert door.arrive("10.0.0.2") and door.arrive("10.0.0.3") and door.arrive("10.0.0.4")
    assert not door.arrive("10.0.0.5")
    metrics = door._metrics
    assert metrics.value(metrics.links_refused, reason="too_many_strangers_from_source") == 1
    assert metrics.value(metrics.links_refused, reason="too_many_strangers") == 1
    assert metrics.value(metrics.strangers) == 5
    assert any("10.0.0.1" in line for line in said(door))
    door.leave("10.0.0.1")
    assert door.arrive("10.0.0.1")


def test_failed_proofs_are_slowed_then_the_address_is_locked_out_for_a_while():
    door = doorman(slow_after=3, lockout_after=6, lockout_s=100, max_delay_s=8)
    delays = [door.proof_failed(7, "10.0.0.9") for _ in range(5)]
    assert delays == [0, 0, 0, 1, 2]
    assert door.arrive("10.0.0.9")
    door.leave("10.0.0.9")
    door.proof_failed(7, "10.0.0.9")
    assert not door.arrive("10.0.0.9")
    assert door._metrics.value(door._metrics.lockouts, kind="source") == 1
    door._clock.advance(101)
    assert door.arrive("10.0.0.9")


def test_a_terminal_id_under_attack_locks_each_guessing_address_at_once_but_takes_the_right_proof():
    door = doorman(slow_after=2, lockout_after=4, lockout_s=100)
    for n in range(4):  # a distributed guess: four addresses, one try each
        door.proof_failed(7, f"10.0.1.{n}")
    assert door._metrics.value(door._metrics.lockouts, kind="terminal") == 1
    assert door.proof_failed(7, "10.0.2.1") == door.limits.max_delay_s
    assert not door.arrive("10.0.2.1")  # one strike
    assert door.arrive("10.0.3.1")  # an address that did not guess may still try


def test_a_lockout_never_pushes_the_real_terminal_off_nor_keeps_it_out_from_another_address():
    gateway = guarded(slow_after=1, lockout_after=3, lockout_s=600)
    real = Peer(gateway)
    real.establish()
    for _ in range(3):  # an attacker at another address guesses the real terminal's secret
        thief = Peer(gateway, "203.0.113.9")
        thief.handshake(secret=b"guess")
        gateway.clock.advance(10)
    assert not gateway.doorman.arrive("203.0.113.9")
    assert not real.transport.disconnecting and gateway.ended == []
    again = Peer(gateway, "192.0.2.50")  # the real terminal, rebooted, from a new address
    again.establish()
    assert again.session.established


def test_a_refusal_held_back_is_sent_late_and_the_stranger_keeps_its_place_meanwhile():
    gateway = guarded(slow_after=0, max_delay_s=8)
    peer = Peer(gateway, "198.51.100.4")
    peer.handshake(secret=b"guess")
    assert peer.frames() == [] and not peer.transport.disconnecting
    assert gateway.doorman._metrics.value(gateway.doorman._metrics.strangers) == 1
    gateway.clock.advance(1)
    (refusal,) = peer.frames()
    assert refusal.is_error and peer.transport.disconnecting


def test_a_link_leaves_the_strangers_once_authenticated_or_gone():
    gateway = Collaborators()
    gateway.doorman = doorman()
    metrics = gateway.doorman._metrics
    peer = Peer(gateway, "192.0.2.1")
    assert metrics.value(metrics.strangers) == 1
    peer.establish()
    assert metrics.value(metrics.strangers) == 0
    gone = Peer(gateway, "192.0.2.2")
    gone.link.connectionLost()
    assert metrics.value(metrics.strangers) == 0



class Waiting:
    """A connection waiting for a stranger's place, as the doorman sees one."""

    def __init__(self, name: str):
        self.name = name
        self.waiting = False
        self.happened = []

    def let_in(self):
        self.happened.append("let in")

    def turn_away(self):
        self.happened.append("turned away")


def test_a_connection_finding_every_place_taken_waits_and_is_let_in_oldest_first():
    door = doorman(max_strangers=10, max_strangers_per_source=1)
    assert door.arrive("192.0.2.1")
    first, second = Waiting("first"), Waiting("second")
    assert door.arrive("192.0.2.1", first) and door.arrive("192.0.2.1", second)
    assert first.waiting and second.waiting and first.happened == []
    metrics = door._metrics
    assert metrics.value(metrics.links_waiting) == 2 and metrics.value(metrics.links_refused, reason="too_many_strangers_from_source") == 0
    door.leave("192.0.2.1")
    assert first.happened == ["let in"] and not first.waiting and second.happened == []
    assert metrics.value(metrics.strangers) == 1 and metrics.value(metrics.links_waiting) == 1
    door.leave("192.0.2.1")
    assert second.happened == ["let in"]


def test_a_connection_that_waits_too_long_is_turned_away_counted_and_said():
    door = doorman(max_strangers_per_source=1, wait_s=20)
    door.arrive("192.0.2.1")
    late = Waiting("late")
    door.arrive("192.0.2.1", late)
    door._clock.advance(20)
    assert late.happened == ["turned away"] and not late.waiting
    assert door._metrics.value(door._metrics.links_refused, reason="waited_too_long") == 1
    assert said(door) == ["refused connection from 192.0.2.1: no place to shake hands for 20 s"]
    door.leave("192.0.2.1")  # nobody is waiting any more
    assert door._metrics.value(door._metrics.strangers) == 0


def test_when_the_waiting_room_is_full_a_connection_is_refused_at_once():
    door = doorman(max_strangers_per_source=1, max_waiting=1)
    door.arrive("192.0.2.1")
    assert door.arrive("192.0.2.1", Waiting("a"))
    refused = Waiting("b")
    assert not door.arrive("192.0.2.1", refused) and not refused.waiting
    assert door._metrics.value(door._metrics.links_refused, reason="too_many_strangers_from_source") == 1


def test_a_waiter_gone_gives_its_turn_to_the_next():
    door = doorman(max_strangers_per_source=1)
    door.arrive("192.0.2.1")
    gone, next_one = Waiting("gone"), Waiting("next")
    door.arrive("192.0.2.1", gone)
    door.arrive("192.0.2.1", next_one)
    door.stop_waiting(gone)
    door.leave("192.0.2.1")
    assert gone.happened == [] and next_one.happened == ["let in"]
    door._clock.advance(60)
    assert gone.happened == []  # its time-out went with it


def test_a_place_freed_under_the_total_limit_goes_to_the_oldest_waiter_whose_address_has_room():
    door = doorman(max_strangers=2, max_strangers_per_source=1)
    door.arrive("192.0.2.1")
    door.arrive("192.0.2.2")
    from_1, from_3 = Waiting("from 1"), Waiting("from 3")
    door.arrive("192.0.2.1", from_1)  # its address is full, and so is the total
    door._clock.advance(1)
    door.arrive("192.0.2.3", from_3)
    door.leave("192.0.2.2")
    assert from_1.happened == [] and from_3.happened == ["let in"]  # 192.0.2.1 still has its one place
    door.leave("192.0.2.1")
    assert from_1.happened == ["let in"]


def test_a_waiting_link_hears_no_hello_until_let_in():
    gateway = guarded(max_strangers_per_source=1)
    first = Peer(gateway, "192.0.2.1")
    waiting = Peer(gateway, "192.0.2.1")
    assert waiting.link.waiting and waiting.session is None and waiting.frames() == []
    first.establish()
    assert not waiting.link.waiting
    (hello,) = waiting.frames()
    assert hello.command == Command.HELLO


def test_a_waiting_link_that_speaks_first_is_refused_and_holds_nothing():
    gateway = guarded(max_strangers_per_source=1)
    Peer(gateway, "192.0.2.1")
    talker = Peer(gateway, "192.0.2.1")
    talker.send(b"\x00" * 4096)
    assert talker.transport.disconnecting and talker.session is None and not talker.link.waiting
    metrics = gateway.doorman._metrics
    assert metrics.value(metrics.links_refused, reason="spoke_while_waiting") == 1
    assert metrics.value(metrics.links_waiting) == 0
    talker.link.connectionLost()
    assert metrics.value(metrics.strangers) == 1  # the first one's place only
    other = Peer(gateway, "192.0.2.9")
    assert other.session is not None  # another address: a place at once


# -- the proof budget (issue 25 point 2, issue 23's lockout trap) ------------------------------

def test_the_budget_counts_proofs_checked_not_connections_however_many_guess_at_once():
    gateway = guarded(slow_after=3, lockout_after=10, max_strangers_per_source=1000, max_delay_s=8)
    metrics = gateway.doorman._metrics
    for _ in range(900):  # an impatient guesser: ten new connections every 0.1 s, never waiting for a refusal
        for _ in range(10):
            peer = Peer(gateway, "203.0.113.7")
            if peer.session is not None:
                peer.handshake(secret=b"guess")
        gateway.clock.advance(0.1)
    assert metrics.value(metrics.wrong_proofs) == 10  # of 9,000 tries, in one 900 s lockout
    unchecked = [metrics.value(metrics.links_refused, reason=reason) for reason in ("guessing_too_fast", "locked_out")]
    assert all(unchecked) and sum(unchecked) == 9000 - 10
    assert not gateway.doorman.arrive("203.0.113.7")


def test_an_unknown_terminal_id_is_not_a_guessed_secret_and_never_locks_its_address_out():
    gateway = guarded(slow_after=1, lockout_after=3)  # knows terminal 7 only
    for _ in range(20):  # a terminal started before it is admitted, trying again and again
        Peer(gateway, "127.0.0.1").handshake(terminal_id=8)
        gateway.clock.advance(1)
    metrics = gateway.doorman._metrics
    assert metrics.value(metrics.wrong_proofs) == 0 and gateway.doorman.lockouts() == []
    real = Peer(gateway, "127.0.0.1")
    real.establish()
    assert real.session.established


def test_admitting_a_terminal_forgets_its_wrong_proofs_and_lifts_the_lockout_they_caused():
    door = doorman(lockout_after=4, lockout_s=900)
    for _ in range(4):  # a terminal set up with the wrong secret
        door.proof_failed(7, "127.0.0.1")
    for _ in range(4):
        door.proof_failed(9, "192.0.2.1")
    assert {entry["address"] for entry in door.lockouts() if entry["kind"] == "address"} == {"127.0.0.1", "192.0.2.1"}
    door.forgive(7)
    assert door.arrive("127.0.0.1") and door.may_check(7, "127.0.0.1") is None
    assert not door.arrive("192.0.2.1")  # its wrong proofs were for another terminal


def test_an_operator_sees_each_lockout_and_lifts_one():
    door = doorman(lockout_after=2, lockout_s=900)
    door.proof_failed(7, "192.0.2.1")
    door.proof_failed(7, "192.0.2.1")
    door._clock.advance(100)
    address, terminal = sorted(door.lockouts(), key=lambda entry: entry["kind"])
    assert address == dict(kind="address", address="192.0.2.1", terminal_id=None, remaining_s=800.0,
                           why="a wrong proof for terminal 7, which is under attack")
    assert terminal["kind"] == "terminal" and terminal["terminal_id"] == 7
    assert door.clear("192.0.2.1") and door.arrive("192.0.2.1")
    assert not door.clear("192.0.2.99")
    assert [entry["kind"] for entry in door.lockouts()] == ["terminal"]


def test_a_locked_out_address_has_its_waiting_connections_turned_away():
    door = doorman(max_strangers_per_source=1, lockout_after=1)
    door.arrive("192.0.2.1")
    waiting = Waiting("w")
    door.arrive("192.0.2.1", waiting)
    door.proof_failed(7, "192.0.2.1")
    assert waiting.happened == ["turned away"]
    assert door._metrics.value(door._metrics.links_refused, reason="locked_out") == 1


# -- fair places (issue 25 point 3) -----------------------------------------------------------

def test_while_others_wait_a_stranger_that_does_not_answer_hello_in_time_is_closed():
    gateway = guarded(max_strangers_per_source=1, busy_handshake_s=3)
    staller = Peer(gateway, "192.0.2.1")
    gateway.clock.advance(5)  # nobody waits: it may take its 10 s
    assert not staller.transport.disconnecting
    waiting = Peer(gateway, "192.0.2.1")
    assert waiting.link.waiting
    gateway.clock.advance(0)
    assert staller.transport.disconnecting and not waiting.link.waiting and waiting.session is not None
    metrics = gateway.doorman._metrics
    assert metrics.value(metrics.links_refused, reason="slow_while_others_wait") == 1
    gateway.clock.advance(2.9)
    waiting.establish()  # answered in time
    assert waiting.session.established


def test_a_stranger_that_answered_hello_is_not_hurried_while_its_handshake_ends():
    gateway = guarded(max_strangers_per_source=1, busy_handshake_s=3)
    slow_database = Peer(gateway, "192.0.2.1")
    slow_database.handshake()  # WELCOME sent; its answer is late
    Peer(gateway, "192.0.2.1")
    gateway.clock.advance(5)
    assert not slow_database.transport.disconnecting


def test_freed_places_go_to_addresses_in_turn_those_where_terminals_authenticated_first():
    door = doorman(max_strangers=1)
    door.arrive("192.0.2.9")
    door.leave("192.0.2.9", authenticated=True)  # a terminal authenticated from 192.0.2.9 before
    door.arrive("198.51.100.1")
    crowd = [Waiting(f"crowd {n}") for n in range(3)]
    for waiter in crowd:
        door.arrive("198.51.100.1", waiter)
    other, terminal = Waiting("other"), Waiting("terminal")
    door.arrive("198.51.100.2", other)
    door.arrive("192.0.2.9", terminal)
    served = []
    for source in ["198.51.100.1", "192.0.2.9", "198.51.100.1", "198.51.100.2", "198.51.100.1"]:
        door.leave(source)
        served.append(next(w.name for w in [*crowd, other, terminal] if w.happened == ["let in"] and w.name not in served))
    assert served == ["terminal", "crowd 0", "other", "crowd 1", "crowd 2"]


def test_a_full_waiting_room_takes_a_newcomer_in_place_of_the_newest_of_the_longest_queue():
    door = doorman(max_strangers=1, max_waiting=3)
    door.arrive("198.51.100.1")
    crowd = [Waiting(f"crowd {n}") for n in range(3)]
    for waiter in crowd:
        assert door.arrive("198.51.100.1", waiter)
    newcomer = Waiting("newcomer")
    assert door.arrive("192.0.2.9", newcomer) and newcomer.waiting
    assert crowd[2].happened == ["turned away"] and crowd[0].waiting and crowd[1].waiting
    assert door._metrics.value(door._metrics.links_refused, reason="waiting_room_share") == 1
    assert not door.arrive("198.51.100.1", Waiting("more of the same"))


class SilentPeerTransport(StringTransport):
    """A peer that never lets a polite close finish (it does not read; its TLS never shook hands)."""

    aborted = False

    def loseConnection(self):
        self.disconnecting = True  # and nothing more: connectionLost never comes by itself

    def abortConnection(self):
        self.aborted = True


def test_a_closed_link_gives_its_place_back_at_once_and_is_cut_off_if_its_peer_does_not_let_it_go():
    gateway = guarded()
    metrics = gateway.doorman._metrics
    transport = SilentPeerTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    link = TcpLink(gateway.new_session, gateway.clock, doorman=gateway.doorman)
    link.makeConnection(transport)
    gateway.clock.advance(10)  # the handshake deadline: the session closes the link
    assert transport.disconnecting and metrics.value(metrics.strangers) == 0
    assert not transport.aborted
    gateway.clock.advance(CLOSE_GRACE_S)
    assert transport.aborted


def two_processes(**limits) -> tuple[Doorman, Doorman]:
    """Two gateway processes' doormen, each hearing what the other tells (as peers.py delivers it)."""
    first, second = doorman(**limits), doorman(**limits)
    first.tell_others, second.tell_others = second.heard, first.heard
    return first, second


def test_wrong_proofs_spread_over_processes_lock_the_address_out_of_every_one_after_as_many_as_on_one():
    first, second = two_processes(slow_after=10, lockout_after=4, lockout_s=900)
    for door in (first, second, first):
        door.proof_failed(7, "192.0.2.1")
    assert first.arrive("192.0.2.1") and second.arrive("192.0.2.1")
    second.proof_failed(7, "192.0.2.1")  # the fourth, in all
    assert not first.arrive("192.0.2.1") and not second.arrive("192.0.2.1")
    assert [entry["address"] for entry in first.lockouts() if entry["kind"] == "address"] == ["192.0.2.1"]
    # Each process counts the proofs it checked itself: the metric is per process.
    assert first._metrics.value(first._metrics.wrong_proofs) == 2


def test_an_address_an_operator_clears_in_one_process_is_cleared_in_the_others():
    first, second = two_processes(lockout_after=2, lockout_s=900)
    first.proof_failed(7, "192.0.2.1")
    first.proof_failed(8, "192.0.2.1")
    assert not second.arrive("192.0.2.1")
    assert first.clear("192.0.2.1")
    assert second.arrive("192.0.2.1") and second.may_check(9, "192.0.2.1") is None


def test_what_another_process_says_of_proofs_that_this_one_does_not_understand_is_logged_and_ignored():
    door = doorman(lockout_after=1)
    nonsense = ("wrong 192.0.2.1", "wrong 192.0.2.1 seven", "lock 192.0.2.1", "clear")
    with capturedLogs() as logged:
        for said in nonsense:
            door.heard(said)
    assert door.lockouts() == [] and door.arrive("192.0.2.1")
    assert [event["said"] for event in logged] == list(nonsense)
