"""The simulated terminal answers the gateway as docs/protocol.md says a terminal must (no I/O)."""

from dataclasses import replace

from twisted.internet import task
from twisted.internet.testing import StringTransport

from protocol import auth
from protocol.decoder import StreamDecoder
from protocol.errors import ErrorCode
from protocol.events import EventCode, Origin
from protocol.frame import MAX_PAYLOAD, encode_frame
from protocol.messages import Command, UserStatus, parse_body, replaced_notice, request
from protocol.records import Face, UserRecord
from simulator.people import People
from simulator.tcp import TerminalLink
from simulator.terminal import Terminal

SECRET = "s3cret"


def ask(terminal: Terminal, command: Command, body: dict | None = None):
    """The terminal's answer to one request, decoded: (frame, body)."""
    (frame,) = StreamDecoder().feed(request(command, body, seq=9, terminal_id=terminal.terminal_id))
    (reply,) = StreamDecoder().feed(terminal.answer(frame))
    return reply, parse_body(reply)


def authenticated(terminal_id: int = 5) -> Terminal:
    terminal = Terminal(terminal_id, SECRET, clock=lambda: 1_000)
    nonce = auth.new_nonce()
    _, hello = ask(terminal, Command.HELLO, dict(gateway_nonce=nonce, protocol_version=1))
    proof = auth.gateway_proof(SECRET.encode(), terminal_id, nonce, hello.terminal_nonce)
    ask(terminal, Command.WELCOME, dict(proof=proof, server_time_ms=5_000, keepalive_s=30, ack_through=0))
    assert terminal.authenticated
    return terminal


def test_requests_before_the_handshake_get_not_authenticated():
    reply, body = ask(Terminal(5, SECRET), Command.GET_USERS, dict(user_ids=["a"]))
    assert reply.is_error and body.code == ErrorCode.NOT_AUTHENTICATED


def test_a_gateway_without_the_secret_is_refused():
    terminal = Terminal(5, SECRET)
    ask(terminal, Command.HELLO, dict(gateway_nonce=bytes(16), protocol_version=1))
    reply, body = ask(terminal, Command.WELCOME, dict(proof=bytes(32), server_time_ms=0, keepalive_s=30, ack_through=0))
    assert reply.is_error and body.code == ErrorCode.AUTH_FAILED
    assert not terminal.authenticated


def test_welcome_sets_the_clock_and_forgets_acknowledged_events():
    terminal = Terminal(5, SECRET, clock=lambda: 1_000)
    for n in range(3):
        terminal.verify(f"u{n}")
    nonce = auth.new_nonce()
    _, hello = ask(terminal, Command.HELLO, dict(gateway_nonce=nonce, protocol_version=1))
    proof = auth.gateway_proof(SECRET.encode(), 5, nonce, hello.terminal_nonce)
    ask(terminal, Command.WELCOME, dict(proof=proof, server_time_ms=9_000, keepalive_s=30, ack_through=2))
    assert [e.event_id for e in terminal.log] == [3]
    assert terminal.now_ms() == 9_000


def test_put_users_applies_records_and_logs_server_origin_events():
    terminal = authenticated()
    person = People(seed=1).person("p1")
    _, body = ask(terminal, Command.PUT_USERS, dict(keep_local_changes=True, users=[person]))
    assert [(r.user_id, r.status) for r in body.results] == [("p1", UserStatus.OK)]
    assert terminal.users["p1"] == person
    event = terminal.log[-1]
    assert (event.code, event.sub_code, event.user_id) == (EventCode.ENROLL_SUCCESS, Origin.SERVER, "p1")
    assert not event.is_device_user_change  # the gateway must never pull it back


def test_a_keypad_change_not_fetched_yet_is_kept_until_the_gateway_gets_it():
    terminal = authenticated()
    local = UserRecord("u1", name="Typed at the keypad")
    terminal.enroll(local)
    newer = UserRecord("u1", name="From the server")
    _, body = ask(terminal, Command.PUT_USERS, dict(keep_local_changes=True, users=[newer]))
    assert [r.status for r in body.results] == [UserStatus.LOCAL_CHANGE_PENDING]
    assert terminal.users["u1"] == local
    _, fetched = ask(terminal, Command.GET_USERS, dict(user_ids=["u1"]))
    assert list(fetched.users) == [local]
    _, body = ask(terminal, Command.PUT_USERS, dict(keep_local_changes=True, users=[newer]))
    assert [r.status for r in body.results] == [UserStatus.OK]
    assert terminal.users["u1"] == newer


def test_without_keep_local_changes_the_server_record_replaces_a_keypad_change():
    terminal = authenticated()
    terminal.enroll(UserRecord("u1", name="Typed at the keypad"))
    newer = UserRecord("u1", name="From the server")
    _, body = ask(terminal, Command.PUT_USERS, dict(keep_local_changes=False, users=[newer]))
    assert [r.status for r in body.results] == [UserStatus.OK]
    assert terminal.users["u1"] == newer


def test_delete_of_an_unknown_user_reports_not_found():
    _, body = ask(authenticated(), Command.DELETE_USERS, dict(user_ids=["ghost"]))
    assert [r.status for r in body.results] == [UserStatus.NOT_FOUND]


def test_get_users_answers_what_fits_in_one_frame_and_leaves_the_rest_for_another_ask():
    terminal = authenticated()
    people = People(seed=2)
    big = [replace(people.person(f"big{n:02d}"), faces=tuple(Face(i, bytes(8 * 1024)) for i in range(5)), photo=bytes(16 * 1024))
           for n in range(8)]
    for record in big:
        terminal.enroll(record)
    ids = [r.user_id for r in big] + ["nobody"]
    reply, body = ask(terminal, Command.GET_USERS, dict(user_ids=ids))
    assert len(reply.payload) <= MAX_PAYLOAD
    assert list(body.missing) == ["nobody"]
    answered = [r.user_id for r in body.users]
    assert 0 < len(answered) < len(big)
    assert answered == ids[: len(answered)]


def test_poll_acknowledges_then_offers_the_next_events():
    terminal = authenticated()
    for n in range(5):
        terminal.enroll(UserRecord(f"u{n}", name="N"))
    _, first = ask(terminal, Command.POLL, dict(ack_through=0, max_events=2))
    assert [e.event_id for e in first.events] == [1, 2]
    _, again = ask(terminal, Command.POLL, dict(ack_through=0, max_events=2))
    assert [e.event_id for e in again.events] == [1, 2]  # a lost answer is simply asked again
    _, second = ask(terminal, Command.POLL, dict(ack_through=2, max_events=10))
    assert [e.event_id for e in second.events] == [3, 4, 5]
    assert [e.event_id for e in terminal.log] == [3, 4, 5]


def test_list_users_pages_in_ascending_order():
    terminal = authenticated()
    for user_id in ("c", "a", "b"):
        terminal.enroll(UserRecord(user_id, name=user_id))
    _, page = ask(terminal, Command.LIST_USERS, dict(after_user_id="", limit=2))
    assert ([e.user_id for e in page.entries], page.more) == (["a", "b"], True)
    _, rest = ask(terminal, Command.LIST_USERS, dict(after_user_id="b", limit=2))
    assert ([e.user_id for e in rest.entries], rest.more) == (["c"], False)
    assert rest.entries[0].digest == terminal.users["c"].digest()


def test_a_full_log_overwrites_its_oldest_events_and_counts_them():
    terminal = Terminal(5, SECRET, max_events=3)
    for n in range(5):
        terminal.verify(f"u{n}")
    assert [e.event_id for e in terminal.log] == [3, 4, 5]
    assert terminal.overwritten == 2


def test_events_after_finds_the_next_events_in_a_log_that_lost_its_oldest():
    terminal = Terminal(5, SECRET, max_events=4)
    for n in range(6):
        terminal.verify(f"u{n}")  # ids 1..6; 1 and 2 overwritten
    assert [e.event_id for e in terminal.events_after(0, 2)] == [3, 4]
    assert [e.event_id for e in terminal.events_after(4, 10)] == [5, 6]
    assert terminal.events_after(6, 10) == []
    assert (terminal.pending_after(0), terminal.pending_after(4), terminal.pending_after(9)) == (4, 2, 0)


def test_after_the_handshake_a_request_naming_another_terminal_is_refused():
    terminal = authenticated(5)
    (frame,) = StreamDecoder().feed(request(Command.GET_USERS, dict(user_ids=["a"]), seq=3, terminal_id=6))
    (reply,) = StreamDecoder().feed(terminal.answer(frame))
    assert reply.is_error and parse_body(reply).code == ErrorCode.UNKNOWN_TERMINAL and reply.terminal_id == 5


class _Factory:
    """What a TerminalLink asks of its factory: a clock, and to hear that its link authenticated or dropped."""

    def __init__(self):
        self.reactor = task.Clock()
        self.link = None

    def authenticated(self):
        pass

    def link_dropped(self, why):
        pass


def _link() -> tuple[TerminalLink, StringTransport, task.Clock]:
    link = TerminalLink(Terminal(5, SECRET))
    link.factory = _Factory()
    transport = StringTransport()
    link.makeConnection(transport)
    return link, transport, link.factory.reactor


def test_a_link_whose_handshake_never_comes_is_dropped_to_dial_again():
    link, transport, clock = _link()
    clock.advance(TerminalLink.handshake_s - 1)
    assert not transport.disconnected
    clock.advance(1)
    assert transport.disconnected  # abortConnection


def test_a_replaced_notice_closes_the_link_quietly():
    link, transport, clock = _link()
    link.dataReceived(encode_frame(replaced_notice(5, 0, "replaced by a newer link on tcp 192.0.2.7:1")))
    assert transport.disconnecting


class _CountingTransport(StringTransport):
    """A transport that remembers each write: how many system calls a real socket would make."""

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


def _established_link(keepalive_s: int = 30) -> tuple[TerminalLink, _CountingTransport, task.Clock]:
    """A link over a counting transport, through the handshake with the gateway's side played here."""
    link = TerminalLink(Terminal(5, SECRET, clock=lambda: 1_000))
    link.factory = _Factory()
    transport = _CountingTransport()
    link.makeConnection(transport)
    nonce = auth.new_nonce()
    link.dataReceived(request(Command.HELLO, dict(gateway_nonce=nonce, protocol_version=1), seq=1))
    (hello,) = StreamDecoder().feed(transport.value())
    proof = auth.gateway_proof(SECRET.encode(), 5, nonce, parse_body(hello).terminal_nonce)
    link.dataReceived(request(Command.WELCOME, dict(proof=proof, server_time_ms=5_000, keepalive_s=keepalive_s, ack_through=0),
                              seq=2, terminal_id=5))
    assert link.established
    transport.clear()
    transport.writes.clear()
    return link, transport, link.factory.reactor


def test_a_push_is_answered_and_its_events_reported_in_one_write():
    link, transport, _ = _established_link()
    people = People(seed=1)
    push = request(Command.PUT_USERS, dict(keep_local_changes=True, users=[people.person("p1"), people.person("p2")]),
                   seq=3, terminal_id=5)
    link.dataReceived(push)
    answer, events = StreamDecoder().feed(transport.value())
    assert (answer.command, answer.is_response, events.command) == (Command.PUT_USERS, True, Command.EVENTS)
    assert [(e.code, e.user_id) for e in parse_body(events).events] == [(EventCode.ENROLL_SUCCESS, "p1"), (EventCode.ENROLL_SUCCESS, "p2")]
    assert len(transport.writes) == 1  # one system call for both, not one a frame


def test_a_quiet_link_says_keepalive_each_period_and_drops_a_gateway_silent_for_three():
    link, transport, clock = _established_link(keepalive_s=3)
    clock.advance(2.9)
    assert transport.value() == b""
    clock.advance(0.2)  # the rule is checked every second (keepalive_s / 3), so it is due by 4 s
    clock.advance(1)
    (keepalive,) = StreamDecoder().feed(transport.value())
    assert (keepalive.command, keepalive.is_response) == (Command.KEEPALIVE, False)
    clock.advance(4.5)
    assert not transport.disconnected
    clock.advance(0.5)  # nine seconds with nothing from the gateway
    assert transport.disconnected
    link.connectionLost()
    assert clock.getDelayedCalls() == []  # nothing left ticking for a link that is gone
