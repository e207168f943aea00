"""Quiet logs (task.Clock): a flood of one kind of line becomes one line and a summary
(RepeatedLines); work counted per delivery becomes one line a second (Tally)."""

from twisted.internet import task

from gateway.quietlog import OTHER_SOURCES, RepeatedLines, Tally
from test_doorman import Said
from test_session import Collaborators, Peer


def test_repeated_lines_of_one_kind_from_one_source_are_summarised_per_period():
    clock, said = task.Clock(), Said()
    lines = RepeatedLines(said, clock, period_s=10)
    for n in range(313):
        lines.warn("refused connections", "127.0.0.1", "refused connection {n} from 127.0.0.1", n=n)
    lines.warn("refused connections", "10.0.0.1", "refused connection from 10.0.0.1")
    assert said.lines == ["refused connection 0 from 127.0.0.1", "refused connection from 10.0.0.1"]
    clock.advance(10)
    assert said.lines[2:] == ["312 more refused connections from 127.0.0.1 in the last 10 s"]
    clock.pump([10, 10])  # both quiet for a whole span: forgotten, and said in full when they come again
    lines.warn("refused connections", "127.0.0.1", "refused connection again")
    assert said.lines[-1] == "refused connection again" and len(said.lines) == 4
    assert len(clock.getDelayedCalls()) == 1  # one timer for all sources


def test_a_source_that_keeps_on_is_summarised_ever_less_often_up_to_a_cap():
    """A terminal redialling with a wrong secret every 2 s for an hour: a handful of lines, not 720."""
    clock, said = task.Clock(), Said()
    lines = RepeatedLines(said, clock, period_s=10, max_span_s=80)
    for _ in range(1800):
        lines.warn("refused connections", "10.0.0.9", "refused connection from 10.0.0.9")
        clock.advance(2)
    assert said.lines[:5] == ["refused connection from 10.0.0.9",
                              "4 more refused connections from 10.0.0.9 in the last 10 s",
                              "10 more refused connections from 10.0.0.9 in the last 20 s",
                              "20 more refused connections from 10.0.0.9 in the last 40 s",
                              "40 more refused connections from 10.0.0.9 in the last 80 s"]
    assert set(said.lines[5:]) == {"40 more refused connections from 10.0.0.9 in the last 80 s"}  # capped
    assert len(said.lines) == 5 + (3600 - 150) // 80


def test_the_sources_remembered_in_one_period_are_bounded():
    clock, said = task.Clock(), Said()
    lines = RepeatedLines(said, clock, period_s=10, max_sources=3)
    for n in range(1000):
        lines.warn("refused connections", f"10.0.{n // 256}.{n % 256}", "refused {n}", n=n)
    assert len(said.lines) == 4  # three sources, then the rest as one
    assert len(lines._counts) == 4
    clock.advance(10)
    assert said.lines[-1] == f"996 more refused connections from {OTHER_SOURCES} in the last 10 s"


def test_a_stranger_sending_garbage_costs_one_log_line_however_often_it_comes():
    gateway = Collaborators()
    said = Said()
    gateway.doorman.lines = RepeatedLines(said, gateway.clock)
    for _ in range(500):
        peer = Peer(gateway, host="198.51.100.7")
        peer.send(b"\x00garbage")
        assert peer.transport.disconnecting
        peer.link.connectionLost()
    assert len(said.lines) == 1
    gateway.clock.advance(10)
    assert said.lines[1] == "499 more links closed before authentication from 198.51.100.7 in the last 10 s"


def test_a_known_terminal_refused_is_named_even_when_its_address_was_refused_for_another_first():
    """A site's NAT: a stranger's unknown id refused first must not hide a real terminal's wrong secret."""
    gateway = Collaborators()
    said = Said()
    gateway.doorman.lines = RepeatedLines(said, gateway.clock)
    for terminal_id, secret in [(66, b"x"), (66, b"x"), (7, b"wrong"), (7, b"wrong"), (67, b"x")]:
        peer = Peer(gateway, host="192.0.2.4")
        peer.handshake(terminal_id=terminal_id, secret=secret)
        gateway.clock.advance(1)  # the doorman may answer a wrong proof late
    assert [line.split(" on ")[0] for line in said.lines] == ["refused terminal 66", "refused terminal 7"]
    assert said.lines[1].endswith("wrong proof: the terminal does not hold the configured secret"), said.lines[1]


class SaidInfo:
    def __init__(self):
        self.lines = []

    def info(self, format, **fields):
        self.lines.append(format.format(**fields))


def test_a_tally_says_once_a_period_what_was_counted_and_nothing_when_idle():
    clock, said = task.Clock(), SaidInfo()
    tally = Tally(said, clock, "{changes} changes at {terminals} terminals in {period:g} s")
    for terminal_id in (1, 2, 2, 3):
        tally.add(terminal_id, changes=5)
    assert said.lines == []
    clock.advance(1)
    assert said.lines == ["20 changes at 3 terminals in 1 s"]
    clock.advance(5)
    assert len(said.lines) == 1 and not clock.getDelayedCalls()  # idle: no line, no timer
    tally.add(7, changes=1)
    tally.stop()  # the gateway stops: what is counted is said, and no timer is left
    assert said.lines[-1] == "1 changes at 1 terminals in 1 s" and not clock.getDelayedCalls()
    tally.add(8, changes=2)  # an answer still in flight
    assert said.lines[-1] == "2 changes at 1 terminals in 1 s" and not clock.getDelayedCalls()
