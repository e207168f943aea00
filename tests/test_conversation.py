"""The sans-I/O conversation and handshake in protocol/: given frames and times, no clock, no I/O."""

from protocol.auth import GatewayHandshake, TerminalHandshake
from protocol.conversation import SEQ_MODULUS, Conversation, Liveness
from protocol.frame import Flags, Frame
from protocol.messages import NONCE_SIZE, Command, parse_body, response_frame


def answer_to(frame: Frame, command=None) -> Frame:
    return Frame(command if command is not None else frame.command, b"", Flags.RESPONSE, frame.terminal_id, frame.seq)


def test_an_answer_is_matched_by_sequence_number_and_command():
    talk = Conversation(terminal_id=7)
    frame, pending = talk.request(Command.GET_USERS, dict(user_ids=["u1"]), now=0)
    assert (frame.terminal_id, frame.command, frame.is_response) == (7, Command.GET_USERS, False)
    assert talk.answer(answer_to(frame, Command.PUT_USERS)) is None  # right number, wrong command
    assert talk.next_deadline() == pending.deadline  # still waited for
    assert talk.answer(answer_to(frame)) == pending
    assert talk.answer(answer_to(frame)) is None  # answered once only
    assert talk.next_deadline() is None


def test_sequence_numbers_wrap_skipping_zero_and_numbers_still_outstanding():
    talk = Conversation()
    talk._seq = SEQ_MODULUS - 2
    first, _ = talk.request(Command.KEEPALIVE, now=0)
    second, _ = talk.request(Command.KEEPALIVE, now=0)
    assert (first.seq, second.seq) == (SEQ_MODULUS - 1, 1)
    talk._seq = 0  # the next candidates, 1 and then 2: 1 is still outstanding
    third, _ = talk.request(Command.KEEPALIVE, now=0)
    assert third.seq == 2


def test_requests_expire_at_their_deadline_and_not_before():
    talk = Conversation(request_timeout_s=15)
    _, early = talk.request(Command.KEEPALIVE, now=0)
    _, late = talk.request(Command.KEEPALIVE, now=10)
    assert talk.next_deadline() == 15
    assert talk.expire(14.9) == []
    assert talk.expire(15) == [early]
    assert talk.next_deadline() == 25
    assert talk.expire(30) == [late] and talk.next_deadline() is None


def test_keepalive_rule_speak_after_one_period_peer_gone_after_three():
    talk = Conversation(keepalive_s=30, now=0)
    assert talk.liveness(29) is Liveness.OK
    assert talk.liveness(30) is Liveness.KEEPALIVE_DUE
    talk.sent(30)
    talk.received(60)
    assert talk.liveness(59) is Liveness.OK
    assert talk.liveness(149) is Liveness.KEEPALIVE_DUE  # we said nothing since 30
    assert talk.liveness(150) is Liveness.PEER_GONE  # heard nothing since 60


def test_abandon_returns_every_outstanding_request():
    talk = Conversation()
    pendings = [talk.request(Command.KEEPALIVE, now=0)[1] for _ in range(3)]
    assert talk.abandon() == pendings and talk.next_deadline() is None


def test_handshake_both_halves_prove_the_same_secret_and_refuse_another():
    gateway, terminal = GatewayHandshake(), TerminalHandshake(9, b"s3cret")
    hello_frame = Frame(Command.HELLO, b"", Flags.REQUEST, 9, 1)
    hello = type("Hello", (), gateway.hello(1))
    answer = dict(model="M", firmware="F", protocol_version=1, max_users=1, max_events=1, **terminal.answer_hello(hello))
    parsed = parse_body(response_frame(hello_frame, answer))
    assert len(parsed.terminal_nonce) == NONCE_SIZE
    assert gateway.terminal_proved(b"s3cret", 9, parsed)
    assert not gateway.terminal_proved(b"other", 9, parsed)
    assert not gateway.terminal_proved(b"s3cret", 10, parsed)  # a proof is for one terminal id
    welcome = type("Welcome", (), gateway.welcome(b"s3cret", 9, parsed, server_time_ms=0, keepalive_s=30, ack_through=0))
    assert terminal.gateway_proved(welcome)
    forged = type("Welcome", (), gateway.welcome(b"other", 9, parsed, server_time_ms=0, keepalive_s=30, ack_through=0))
    assert not terminal.gateway_proved(forged)


def test_a_welcome_before_any_hello_proves_nothing():
    welcome = type("Welcome", (), dict(proof=b"\x00" * 32))
    assert not TerminalHandshake(9, b"s3cret").gateway_proved(welcome)


def test_while_the_peer_s_bytes_wait_unread_a_request_has_a_second_timeout_and_the_peer_is_not_silent():
    talk = Conversation(request_timeout_s=15, keepalive_s=30, now=0)
    _, pending = talk.request(Command.GET_USERS, dict(user_ids=["u1"]), now=0)
    assert talk.expire(29.9, unread=lambda: True) == []  # its answer may be among those bytes
    assert talk.liveness(100, unread=lambda: True) is Liveness.KEEPALIVE_DUE  # we still speak; it is not gone
    assert [p.seq for p in talk.expire(30, unread=lambda: True)] == [pending.seq]  # but it cannot be held for ever
    _, other = talk.request(Command.GET_USERS, dict(user_ids=["u2"]), now=100)
    assert [p.seq for p in talk.expire(115)] == [other.seq]  # read, and not answered: late as ever
    assert talk.liveness(100) is Liveness.PEER_GONE


def test_the_peer_s_unread_bytes_are_asked_about_only_when_something_would_be_judged():
    talk = Conversation(request_timeout_s=15, keepalive_s=30, now=0)
    talk.request(Command.KEEPALIVE, now=0)
    asked = []

    def unread():
        asked.append(True)
        return True

    assert talk.expire(10, unread=unread) == [] and talk.liveness(10, unread=unread) is Liveness.OK
    assert asked == []  # nothing past its deadline, the peer heard from lately: no question to the kernel
    talk.expire(20, unread=unread)
    assert asked == [True]
