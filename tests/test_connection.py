"""protocol.connection: both sides of a link as sans-I/O objects. Frames and a fake ``now`` in,
events and frames out: no sockets, no clock, no Twisted."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.connection import Connection, Phase, Role
from protocol.connection_events import (
    Answer,
    Corrupt,
    Established,
    Greeted,
    HelloAnswered,
    KeepaliveDue,
    Rejected,
    Replied,
    Request,
    Stray,
    TimedOut,
)
from protocol.conversation import answers
from protocol.errors import ErrorCode, FrameError, LocalProtocolError, RemoteProtocolError
from protocol.events import Event, EventCode
from protocol.frame import Flags, Frame, encode_frame
from protocol.messages import Command, build_body, error_frame, parse_body, response_frame

SECRET = b"s3cret"
TERMINAL = 7
EVENT = Event(1, 1, EventCode.DOOR_OPENED)


def gateway(now: float = 0.0) -> Connection:
    return Connection(Role.GATEWAY, handshake_s=10, frame_errors_per_minute=10, now=now)


def terminal(now: float = 0.0) -> Connection:
    return Connection(Role.TERMINAL, terminal_id=TERMINAL, request_timeout_s=None, handshake_s=30, now=now)


def greet(side: Connection, event: Greeted, now: float = 0.0, secret: bytes = SECRET) -> Frame:
    return side.answer_hello(event, secret=secret, model="M", firmware="F", max_users=10, max_events=10, log_epoch=5, now=now)


def hello_answered(secret: bytes = SECRET) -> tuple[Connection, Connection, HelloAnswered]:
    """A gateway that said HELLO and a terminal that answered it."""
    gw, term = gateway(), terminal()
    greeted = term.receive_frame(gw.start(now=0), now=0)
    assert isinstance(greeted, Greeted) and term.phase is Phase.HELLO
    answered = gw.receive_frame(greet(term, greeted, secret=secret), now=1)
    assert isinstance(answered, HelloAnswered) and term.phase is Phase.WELCOME
    return gw, term, answered


def established() -> tuple[Connection, Connection]:
    gw, term, _ = hello_answered()
    assert gw.authenticate(SECRET) is None
    welcomed = term.receive_frame(gw.welcome(ack_through=0, server_time_ms=5, now=2), now=2)
    assert isinstance(welcomed, Established) and welcomed.welcome.keepalive_s == 30
    done = gw.receive_frame(welcomed.reply, now=3)
    assert isinstance(done, Established)
    assert gw.established and term.established and gw.terminal_id == TERMINAL
    return gw, term


def events_request(side: Connection, now: float = 4) -> Frame:
    frame, _ = side.request(Command.EVENTS, dict(events=[EVENT]), now=now)
    return frame


# -- the handshake ----------------------------------------------------------------------------

def test_both_sides_shake_hands_then_an_events_request_is_answered_and_matched():
    gw, term = established()
    request = gw.receive_frame(events_request(term), now=4)
    assert isinstance(request, Request) and list(request.body.events) == [EVENT]
    ack = gw.reply(request.frame, dict(ack_through=1), now=5)
    answer = term.receive_frame(ack, now=5)
    assert isinstance(answer, Answer) and answer.request.command == Command.EVENTS
    assert parse_body(answer.frame).ack_through == 1


def test_the_hello_answer_names_the_terminal_and_carries_its_epoch():
    _, _, answered = hello_answered()
    assert answered.frame.terminal_id == TERMINAL and answered.hello.log_epoch == 5


def test_a_wrong_proof_is_refused_with_auth_failed_echoing_the_hello_answer():
    gw, _, answered = hello_answered(secret=b"wrong")
    assert gw.authenticate(SECRET) == (ErrorCode.AUTH_FAILED, "wrong proof: the terminal does not hold the configured secret")
    refusal = gw.refuse_terminal(ErrorCode.AUTH_FAILED, "wrong proof", now=2)
    assert refusal.is_error and (refusal.command, refusal.seq, refusal.terminal_id) == (Command.HELLO, answered.frame.seq, TERMINAL)
    assert gw.phase is Phase.CLOSED


def test_a_gateway_without_the_secret_is_refused_by_the_terminal():
    gw, term, _ = hello_answered()
    assert gw.authenticate(SECRET) is None
    welcome = gw.welcome(ack_through=0, server_time_ms=0, now=2)
    tampered = Frame(welcome.command, bytes(32) + welcome.payload[32:], welcome.flags, welcome.terminal_id, welcome.seq)
    refused = term.receive_frame(tampered, now=2)
    assert isinstance(refused, Rejected) and refused.code == ErrorCode.AUTH_FAILED and not term.established


def test_an_error_reply_to_hello_ends_the_link_as_the_peers_fault():
    gw = gateway()
    hello = gw.start(now=0)
    with pytest.raises(RemoteProtocolError, match="UNSUPPORTED_VERSION"):
        gw.receive_frame(error_frame(hello, ErrorCode.UNSUPPORTED_VERSION, "version 2 only"), now=1)
    assert gw.phase is Phase.CLOSED


def test_a_second_hello_makes_the_terminal_start_over():
    gw, term = established()
    again = Connection(Role.GATEWAY).start(now=10)  # names terminal 0, as every HELLO does
    assert isinstance(term.receive_frame(again, now=10), Greeted)
    assert not term.established
    refused = term.receive_frame(Frame(Command.LIST_USERS, build_body(Command.LIST_USERS, False, dict(after_user_id="", limit=1)),
                                       terminal_id=TERMINAL, seq=50), now=11)
    assert isinstance(refused, Rejected) and refused.code == ErrorCode.NOT_AUTHENTICATED


# -- authenticate first -----------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: hello_answered()[0], lambda: terminal()])
def test_before_welcome_only_keepalive_is_answered(make):
    side = make()
    keepalive = side.receive_frame(Frame(Command.KEEPALIVE, terminal_id=TERMINAL, seq=9), now=1)
    assert isinstance(keepalive, Replied) and keepalive.reply.is_response and not keepalive.reply.is_error
    events = side.receive_frame(Frame(Command.EVENTS, build_body(Command.EVENTS, False, dict(events=[])), terminal_id=TERMINAL, seq=10), now=1)
    assert isinstance(events, Rejected) and events.code == ErrorCode.NOT_AUTHENTICATED
    assert parse_body(events.reply).code == ErrorCode.NOT_AUTHENTICATED and events.reply.seq == 10


def test_requests_before_the_handshake_ended_are_the_callers_fault():
    gw = gateway()
    with pytest.raises(LocalProtocolError):
        gw.request(Command.GET_USERS, dict(user_ids=["a"]), now=0)
    with pytest.raises(LocalProtocolError):
        gw.welcome(ack_through=0, server_time_ms=0, now=0)
    gw.start(now=0)
    with pytest.raises(LocalProtocolError):
        gw.start(now=0)
    with pytest.raises(LocalProtocolError):
        terminal().start(now=0)
    gw.close()
    with pytest.raises(LocalProtocolError):
        gw.receive_frame(Frame(Command.KEEPALIVE), now=0)


# -- one terminal per link --------------------------------------------------------------------

def test_a_request_naming_another_terminal_is_refused_under_the_links_own_id():
    gw, term = established()
    foreign = Frame(Command.EVENTS, build_body(Command.EVENTS, False, dict(events=[EVENT])), terminal_id=8, seq=5)
    rejected = gw.receive_frame(foreign, now=4)
    assert isinstance(rejected, Rejected) and rejected.code == ErrorCode.UNKNOWN_TERMINAL
    assert rejected.reply.terminal_id == TERMINAL and rejected.reply.seq == foreign.seq
    assert parse_body(rejected.reply).text == f"this link is terminal {TERMINAL}'s; the frame names terminal 8"


def test_an_answer_naming_another_terminal_answers_nothing_and_the_request_stays_outstanding():
    gw, _ = established()
    asked, pending = gw.request(Command.TIME_SYNC, dict(server_time_ms=1), now=4)
    body = dict(terminal_time_ms=5)
    rejected = gw.receive_frame(response_frame(Frame(Command.TIME_SYNC, terminal_id=8, seq=asked.seq), body), now=5)
    assert isinstance(rejected, Rejected) and rejected.reply is None
    answer = gw.receive_frame(response_frame(asked, body), now=6)
    assert isinstance(answer, Answer) and answer.request == pending


def test_the_terminal_applies_the_same_rule_to_the_gateways_requests():
    gw, term = established()
    frame = Frame(Command.GET_USERS, build_body(Command.GET_USERS, False, dict(user_ids=["a"])), terminal_id=9, seq=20)
    rejected = term.receive_frame(frame, now=4)
    assert isinstance(rejected, Rejected) and rejected.code == ErrorCode.UNKNOWN_TERMINAL and rejected.reply.terminal_id == TERMINAL


# -- what each side takes ---------------------------------------------------------------------

def test_a_command_a_side_does_not_take_is_unknown_and_a_bad_body_is_a_bad_message():
    gw, term = established()
    put = Frame(Command.PUT_USERS, b"", terminal_id=TERMINAL, seq=3)
    unknown = gw.receive_frame(put, now=4)
    assert isinstance(unknown, Rejected) and unknown.code == ErrorCode.UNKNOWN_COMMAND
    bad = term.receive_frame(Frame(Command.GET_USERS, b"\x05", terminal_id=TERMINAL, seq=4), now=4)
    assert isinstance(bad, Rejected) and bad.code == ErrorCode.BAD_MESSAGE


def test_a_request_with_the_error_flag_alone_is_a_bad_message_not_an_error_body():
    """Read as a request, EVENTS with flags 0x02 used to be parsed as an error reply's body."""
    gw, term = established()
    frame = events_request(term)
    flagged = Frame(frame.command, frame.payload, Flags.ERROR, frame.terminal_id, frame.seq)
    rejected = gw.receive_frame(flagged, now=4)
    assert isinstance(rejected, Rejected) and rejected.code == ErrorCode.BAD_MESSAGE and "0x02" in rejected.reason


def test_an_answer_to_no_request_is_stray():
    gw, _ = established()
    stray = gw.receive_frame(Frame(Command.GET_USERS, b"", Flags.RESPONSE, TERMINAL, 999), now=4)
    assert isinstance(stray, Stray)


# -- corrupt frames ---------------------------------------------------------------------------

def test_corrupt_data_before_authentication_ends_the_link_on_the_gateways_side_only():
    with pytest.raises(RemoteProtocolError, match="corrupt data before authentication"):
        gateway().frame_error(FrameError(0, "CRC mismatch", 1), now=0)
    assert isinstance(terminal().frame_error(FrameError(0, "CRC mismatch", 1), now=0), Corrupt)


def test_the_corrupt_frame_budget_counts_a_minute_back_and_the_rest_of_a_frame_once():
    gw, _ = established()
    for n in range(10):
        assert gw.frame_error(FrameError(n, "CRC mismatch", 1), now=10).counted
    assert not gw.frame_error(FrameError(0, "skipped", 5, continues=True), now=10).counted
    assert gw.frame_error(FrameError(0, "CRC mismatch", 1), now=71).counted  # the first ten are a minute old
    for _ in range(9):
        gw.frame_error(FrameError(0, "CRC mismatch", 1), now=72)
    with pytest.raises(RemoteProtocolError, match="more than 10 corrupt frames in a minute"):
        gw.frame_error(FrameError(0, "CRC mismatch", 1), now=72)
    assert gw.phase is Phase.CLOSED


def test_bytes_in_a_stream_come_out_as_events_with_garbage_between_them():
    gw, term = established()
    data = encode_frame(events_request(term)) + b"\x00noise" + encode_frame(events_request(term))
    kinds = [type(event) for event in gw.receive_data(data, now=4)]
    assert kinds == [Request, Corrupt, Request]


# -- time ---------------------------------------------------------------------------------------

def test_a_handshake_not_ended_in_time_ends_the_link():
    gw = gateway(now=100)
    gw.start(now=100)
    assert gw.next_deadline() == 110
    assert gw.tick(now=109.9) == []
    with pytest.raises(RemoteProtocolError, match="no handshake within 10 s"):
        gw.tick(now=110)


def test_requests_time_out_and_a_late_answer_is_stray():
    gw, _ = established()
    asked, pending = gw.request(Command.LIST_USERS, dict(after_user_id="", limit=5), now=10)
    assert gw.next_deadline() == 25
    assert gw.tick(now=24) == []
    assert gw.tick(now=25) == [TimedOut(pending)]
    late = gw.receive_frame(response_frame(asked, dict(entries=[], more=False)), now=26)
    assert isinstance(late, Stray)


def test_keepalive_due_after_a_quiet_period_and_the_peer_gone_after_three():
    gw, _ = established()  # last sent at 2, last received at 3
    assert gw.tick(now=31) == []
    assert gw.tick(now=32) == [KeepaliveDue()]
    _, keepalive = gw.request(Command.KEEPALIVE, now=32)
    assert gw.tick(now=60) == [TimedOut(keepalive)]  # unanswered: silence is judged by what comes in
    with pytest.raises(RemoteProtocolError, match="nothing received for 90 s: terminal gone"):
        gw.tick(now=93)


def test_a_terminals_events_wait_for_their_answer_however_long():
    _, term = established()
    events_request(term, now=4)
    assert term.next_deadline() is None
    assert not any(isinstance(e, TimedOut) for e in term.tick(now=80))


def test_the_bus_line_and_the_connection_match_answers_by_one_rule():
    request = Frame(Command.POLL, seq=4)
    assert answers(Frame(Command.POLL, flags=Flags.RESPONSE, seq=4), request)
    assert not answers(Frame(Command.POLL, seq=4), request)  # a request (our own echo) answers nothing
    assert not answers(Frame(Command.KEEPALIVE, flags=Flags.RESPONSE, seq=4), request)


# -- whatever a peer sends ----------------------------------------------------------------------

def _in_phase(role: Role, phase: str) -> Connection:
    if role is Role.GATEWAY:
        if phase == "hello":
            side = gateway()
            side.start(now=0)
            return side
        if phase == "welcome":
            side = hello_answered()[0]
            assert side.authenticate(SECRET) is None
            side.welcome(ack_through=0, server_time_ms=0, now=1)
            return side
        return established()[0]
    if phase == "hello":
        return terminal()
    if phase == "welcome":
        return hello_answered()[1]
    return established()[1]


SIDES = {(role, phase): None for role in Role for phase in ("hello", "welcome", "established")}
EVENT_TYPES = (Request, Answer, Stray, Rejected, Replied, Corrupt, HelloAnswered, Greeted, Established)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    side=st.sampled_from(sorted(SIDES, key=str)),
    command=st.one_of(st.sampled_from(list(Command)), st.integers(0, 0xFFFF)),
    flags=st.integers(0, 0xFF),
    terminal_id=st.sampled_from([0, TERMINAL, 8, 0xFFFFFFFF]),
    seq=st.integers(0, 3),
    payload=st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x00\x00", b"\x00\x01\x00\x00", b"\x00\x01" + bytes(40)])),
)
def test_any_command_and_flags_yield_an_event_or_a_remote_error(side, command, flags, terminal_id, seq, payload):
    connection = _in_phase(*side)
    frame = Frame(command, payload, Flags(flags), terminal_id, seq)
    try:
        event = connection.receive_frame(frame, now=5)
    except RemoteProtocolError:
        assert connection.phase is Phase.CLOSED
        return
    assert isinstance(event, EVENT_TYPES)
    if isinstance(event, Request):  # what the owner acts on is a request's body, whatever the flags said
        assert event.body == parse_body(Frame(command, payload))
    reply = getattr(event, "reply", None)
    if reply is not None:
        encode_frame(reply)  # whatever the rules answer can go on the wire
