"""Doorman: strangers limited in total and per address, guessed secrets slowed then locked out,
and the real terminal never pushed off. task.Clock and StringTransport, no sockets."""

from twisted.internet import task

from gateway.doorman import DoorLimits, Doorman
from gateway.metrics import Metrics
from gateway.quietlog import RepeatedLines
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
    gateway = Collaborators()
    gateway.doorman = doorman(slow_after=1, lockout_after=3, lockout_s=600)
    gateway.clock = gateway.doorman._clock
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
    gateway = Collaborators()
    gateway.doorman = doorman(slow_after=0, max_delay_s=8)
    gateway.clock = gateway.doorman._clock
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

