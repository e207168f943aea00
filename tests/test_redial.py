"""A simulated terminal's redial: refused at the door again and again, it backs off (not twice a
second for ever); once it authenticated, a lost link is dialled again soon; and it can say why
it is not online. MemoryReactorClock, no sockets."""

from twisted.internet.error import ConnectionRefusedError, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from protocol.errors import ErrorCode
from simulator.tcp import ADMISSION_RETRY_S, DialingTerminal
from simulator.terminal import Terminal


def dialling():
    reactor = MemoryReactorClock()
    terminal = DialingTerminal(Terminal(7, "secret"), reactor, "127.0.0.1", 4370).start()
    return terminal, reactor


def accept_then_abort(reactor) -> None:
    """The gateway accepts the last dial and drops it at once (its doorman's refusal)."""
    factory = reactor.tcpClients[-1][2]
    link = factory.buildProtocol(None)
    link.makeConnection(StringTransport())
    link.connectionLost(Failure(ConnectionLost("Connection lost.")))


def next_dial_in(reactor) -> float:
    (retry,) = reactor.getDelayedCalls()
    return retry.getTime() - reactor.seconds()


def redial(reactor) -> None:
    reactor.advance(next_dial_in(reactor))


def test_a_terminal_refused_at_every_connect_backs_off_and_says_why():
    terminal, reactor = dialling()
    delays = []
    for _ in range(10):
        accept_then_abort(reactor)
        delays.append(next_dial_in(reactor))
        redial(reactor)
    # 0.2 s doubling per dial since the last authentication, at most 60 s, plus up to 1 s of jitter
    assert delays[3] >= 3.2 and delays[9] >= 60.0
    assert terminal.dials == 11
    assert terminal.trouble.startswith("link lost before the handshake ended: Connection to the other side was lost")


def test_once_authenticated_a_lost_link_is_dialled_again_soon():
    terminal, reactor = dialling()
    for _ in range(5):
        accept_then_abort(reactor)
        redial(reactor)
    terminal.authenticated()
    assert terminal.trouble is None
    accept_then_abort(reactor)
    assert next_dial_in(reactor) < 1.2  # 0.2 s and the jitter


def test_a_dial_that_fails_says_why():
    terminal, reactor = dialling()
    reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert terminal.trouble.startswith("cannot connect: Connection was refused")


def test_a_terminal_refused_as_unknown_or_pending_asks_again_within_seconds_and_a_wrong_proof_backs_off():
    terminal, reactor = dialling()
    for _ in range(10):
        accept_then_abort(reactor)
        backoff = next_dial_in(reactor)
        redial(reactor)
    assert backoff > 20  # refused at the door: its backoff has grown
    terminal.refused(ErrorCode.PENDING_ADMISSION)
    accept_then_abort(reactor)
    assert next_dial_in(reactor) <= ADMISSION_RETRY_S
    redial(reactor)
    terminal.refused(ErrorCode.AUTH_FAILED)
    accept_then_abort(reactor)
    assert next_dial_in(reactor) > 20, "a wrong proof is no reason to ask again soon"
