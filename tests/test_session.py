"""TerminalSession unit tests: StringTransport and task.Clock, no sockets, no sleeps."""

from construct import Int16ub, PrefixedArray
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway.native.doorman import Doorman
from gateway.native.link_timers import GRANULARITY_S, LinkTimers
from gateway.metrics import Metrics
from gateway.sync.connection import Refused, Unanswered
from gateway.native.session import RequestTimeout, SessionClosed, TerminalSession
from gateway.native.tcp import TcpLink
from protocol import auth
from protocol.errors import ErrorCode
from protocol.events import Event, EventCode, EventWire, Origin
from protocol.frame import Frame, encode_frame
from protocol.messages import MAX_HANDSHAKE_PAYLOAD, Command, error_response, parse_body, put_users_payload, request, response
from protocol.records import UserRecord, UserRecordWire
from protocol.decoder import StreamDecoder

SECRET = b"s3cret"


class Collaborators:
    """What a session is given: admission, an event sink and presence, recorded for the test."""

    def __init__(self, known=(7,)):
        self.clock = task.Clock()
        self.metrics = Metrics()
        self.known = known
        self.established = []
        self.ended = []
        self.submitted = []
        self.logs_begun = []
        self.doorman = Doorman(self.clock, self.metrics)
        self.timers = LinkTimers(self.clock)

    def secret_for(self, terminal_id, info, description):
        if terminal_id not in self.known:
            raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"terminal {terminal_id} is not known")
        return SECRET

    def refused(self, terminal_id, description, reason):
        return terminal_id in self.known

    def begin_log(self, terminal_id, log_epoch):
        self.logs_begun.append((terminal_id, log_epoch))
        return defer.succeed(41)

    def submit(self, terminal_id, events, log_epoch=None):
        d = defer.Deferred()
        self.submitted.append((events, d))
        self.submitted_epochs = getattr(self, "submitted_epochs", []) + [log_epoch]
        return d

    def online(self, connection):
        self.established.append(connection)
        return True

    def offline(self, connection):
        self.ended.append(connection)

    def new_session(self, link, expected_terminal_id=None):
        return TerminalSession(link, clock=self.clock, admission=self, events=self, presence=self, doorman=self.doorman,
                               timers=self.timers, metrics=self.metrics, expected_terminal_id=expected_terminal_id)


class Peer:
    """The terminal's end of a StringTransport: reads what the gateway wrote."""

    def __init__(self, gateway=None, host: str | None = None):
        """``host``: the link came in through the listener from there, and holds a stranger's place."""
        self.gateway = gateway or Collaborators()
        if host is None:
            self.transport = StringTransport()
            self.link = TcpLink(self.gateway.new_session, self.gateway.clock)
        else:
            self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
            self.link = TcpLink(self.gateway.new_session, self.gateway.clock, doorman=self.gateway.doorman)
        self.link.makeConnection(self.transport)
        self.decoder = StreamDecoder()

    @property
    def session(self):
        return self.link.session

    def frames(self) -> list[Frame]:
        data = self.transport.value()
        self.transport.clear()
        return [f for f in self.decoder.feed(data) if isinstance(f, Frame)]

    def send(self, data: bytes):
        self.link.dataReceived(data)

    def handshake(self, terminal_id=7, secret=SECRET, log_epoch=None):
        (hello,) = self.frames()
        nonce = parse_body(hello).gateway_nonce
        tnonce = b"t" * 16
        proof = auth.terminal_proof(secret, terminal_id, nonce, tnonce)
        body = dict(model="FP-1", firmware="1.0", protocol_version=1, max_users=1000, max_events=1000,
                    terminal_nonce=tnonce, proof=proof, log_epoch=log_epoch)
        self.send(response(Frame(Command.HELLO, terminal_id=terminal_id, seq=hello.seq), body))
        return nonce, tnonce

    def establish(self, log_epoch=None):
        nonce, tnonce = self.handshake(log_epoch=log_epoch)
        (welcome,) = self.frames()
        self.send(response(welcome))
        return welcome, nonce, tnonce


def test_handshake_proves_both_sides_and_resumes_after_the_last_stored_event():
    peer = Peer()
    welcome, nonce, tnonce = peer.establish()
    body = parse_body(welcome)
    assert welcome.command == Command.WELCOME
    assert body.proof == auth.gateway_proof(SECRET, 7, nonce, tnonce)
    assert body.ack_through == 41
    assert peer.gateway.established == [peer.session]
    assert peer.session.terminal_id == 7


def test_the_log_a_terminal_names_in_hello_is_where_its_events_count():
    peer = Peer()
    peer.establish(log_epoch=5)
    assert peer.gateway.logs_begun == [(7, 5)]
    peer.send(request(Command.EVENTS, dict(events=[Event(1, 1, EventCode.DOOR_OPENED)]), terminal_id=7, seq=1))
    assert peer.gateway.submitted_epochs == [5]


def test_a_terminal_that_names_no_log_begins_one_without_an_epoch():
    peer = Peer()
    peer.establish()
    assert peer.gateway.logs_begun == [(7, None)]


def test_a_log_epoch_a_database_cannot_hold_is_refused():
    peer = Peer()
    peer.handshake(log_epoch=2**63)
    (reply,) = peer.frames()
    assert reply.is_error and parse_body(reply).code == ErrorCode.BAD_MESSAGE
    assert peer.transport.disconnecting and not peer.gateway.established


def test_wrong_secret_is_refused_with_auth_failed_and_the_link_closed():
    peer = Peer()
    peer.handshake(secret=b"wrong")
    (reply,) = peer.frames()
    assert reply.is_error and parse_body(reply).code == ErrorCode.AUTH_FAILED
    assert peer.transport.disconnecting
    assert peer.gateway.metrics.value(peer.gateway.metrics.refused, reason="auth_failed") == 1


def test_unknown_terminal_is_refused_and_never_established():
    peer = Peer()
    peer.handshake(terminal_id=99)
    (reply,) = peer.frames()
    assert parse_body(reply).code == ErrorCode.UNKNOWN_TERMINAL
    assert peer.transport.disconnecting and not peer.gateway.established


def test_no_handshake_within_the_timeout_closes_the_link():
    peer = Peer()
    peer.gateway.clock.advance(10)
    assert peer.transport.disconnecting


def test_events_before_authentication_get_not_authenticated():
    peer = Peer()
    peer.frames()
    peer.send(request(Command.EVENTS, dict(events=[]), terminal_id=7, seq=1))
    (reply,) = peer.frames()
    assert parse_body(reply).code == ErrorCode.NOT_AUTHENTICATED


def test_events_are_acknowledged_only_once_committed():
    peer = Peer()
    peer.establish()
    ev = Event(42, 1, EventCode.ENROLL_SUCCESS, Origin.DEVICE, "u1")
    peer.send(request(Command.EVENTS, dict(events=[ev]), terminal_id=7, seq=5))
    assert peer.frames() == []
    (events, d), = peer.gateway.submitted
    assert events == [ev]
    d.callback(42)
    (ack,) = peer.frames()
    assert ack.seq == 5 and parse_body(ack).ack_through == 42


def test_bad_payload_gets_bad_message_and_the_link_stays():
    peer = Peer()
    peer.establish()
    peer.send(encode_frame(Frame(Command.EVENTS, b"\x00\x09junk", terminal_id=7, seq=2)))
    (reply,) = peer.frames()
    assert parse_body(reply).code == ErrorCode.BAD_MESSAGE
    assert not peer.transport.disconnecting


def test_requests_time_out():
    peer = Peer()
    peer.establish()
    d = peer.session.request(Command.GET_USERS, dict(user_ids=["u1"]))
    failures = []
    d.addErrback(failures.append)
    peer.gateway.clock.advance(15)
    assert failures and failures[0].check(RequestTimeout)


def test_a_request_past_its_deadline_leaves_the_link_up_and_its_late_answer_is_counted():
    peer = Peer()
    peer.establish()
    metrics = peer.gateway.metrics
    failures = []
    peer.session.put_users([UserRecordWire.build(UserRecord("u1", name="A"))], False).addErrback(failures.append)
    (put,) = peer.frames()
    peer.gateway.clock.advance(15)
    assert failures and failures[0].check(Unanswered)  # what the pusher backs off after
    assert not peer.transport.disconnecting  # a slow answer is no reason to drop the link
    assert metrics.value(metrics.requests_unanswered, command="PUT_USERS") == 1
    peer.send(response(put, dict(results=[dict(user_id="u1", status=0)])))  # the terminal did apply it
    assert metrics.value(metrics.late_answers, command="PUT_USERS") == 1
    peer.send(response(put, dict(results=[dict(user_id="u1", status=0)])))  # the same answer again answers nothing
    peer.send(response(Frame(Command.PUT_USERS, terminal_id=7, seq=999), dict(results=[])))  # nor one to no request
    assert metrics.value(metrics.late_answers, command="PUT_USERS") == 1
    assert not peer.transport.disconnecting


def test_window_bounds_outstanding_requests():
    peer = Peer()
    peer.establish()
    window = peer.session.timing.window
    for _ in range(window + 2):
        peer.session.request(Command.KEEPALIVE).addErrback(lambda f: None)
    sent = peer.frames()
    assert len(sent) == window
    peer.send(response(sent[0]))
    assert len(peer.frames()) == 1


def test_remote_error_reply_fails_the_request_with_its_code():
    peer = Peer()
    peer.establish()
    failures = []
    peer.session.request(Command.GET_USERS, dict(user_ids=["u1"])).addErrback(failures.append)
    (req,) = peer.frames()
    peer.send(error_response(req, ErrorCode.BUSY, "try later"))
    assert failures[0].value.code == ErrorCode.BUSY


def test_keepalive_after_idle_and_close_after_three_silent_periods():
    peer = Peer()
    peer.establish()
    clock = peer.gateway.clock
    clock.advance(30)
    assert [f.command for f in peer.frames()] == [Command.KEEPALIVE]
    clock.pump([10] * 5)  # 80 s without a frame from the terminal
    assert not peer.transport.disconnecting
    clock.advance(10)  # 90 s: three keepalive periods
    assert peer.transport.disconnecting
    assert peer.gateway.ended == [peer.session]


def test_an_answer_waiting_unread_is_not_late_and_its_terminal_not_silent():
    """A reactor saturated by thousands of links runs its timers before it reads: a push whose
    answer already waits in the socket is not given up on, nor the terminal judged gone."""
    peer = Peer()
    peer.establish()
    clock = peer.gateway.clock
    answered, failures = [], []
    peer.session.put_users([UserRecordWire.build(UserRecord("u1", name="A"))], False).addCallbacks(answered.append, failures.append)
    (put,) = peer.frames()
    peer.link.unread = lambda: True  # the answer is in the kernel's buffer; the reactor has not read it
    clock.pump([1] * 29)  # past its 15 s deadline
    assert not failures and not peer.transport.disconnecting
    peer.link.unread = lambda: False
    peer.send(response(put, dict(results=[dict(user_id="u1", status=0)])))  # the reactor reads it
    assert [[r.user_id for r in results] for results in answered] == [["u1"]] and not failures
    peer.link.unread = lambda: True
    clock.pump([1] * 200)  # three keepalive periods without a frame read, bytes waiting all along
    assert not peer.transport.disconnecting
    assert Command.KEEPALIVE in {f.command for f in peer.frames()}  # the gateway still speaks


def test_a_link_paused_for_the_writer_stays_up_and_keeps_speaking_for_ten_minutes():
    """The event log's backpressure stops reading every link for as long as the writer is behind
    (a database outage: minutes). What the terminal sends waits unread: it is not silent, its
    push gets a second timeout, and the gateway's own keepalives never fill the window."""
    peer = Peer()
    peer.establish()
    clock = peer.gateway.clock
    failures = []
    peer.session.put_users([UserRecordWire.build(UserRecord("u1", name="A"))], False).addErrback(failures.append)
    peer.frames()
    peer.session.pause_events()
    assert peer.transport.producerState == "paused"
    peer.link.unread = lambda: True  # the terminal's events, answers and keepalives pile up unread
    clock.pump([1] * 29)
    assert not failures
    clock.pump([1] * 571)  # ten minutes
    assert failures and failures[0].check(RequestTimeout)  # given up a second timeout late: no round held for ever
    assert not peer.transport.disconnecting
    peer.frames()
    clock.pump([10] * 3)
    assert [f.command for f in peer.frames()] == [Command.KEEPALIVE]  # still speaking after ten minutes


def test_bytes_kept_unread_hold_a_request_for_one_more_timeout_at_most():
    peer = Peer()
    peer.establish()
    failures = []
    peer.session.request(Command.GET_USERS, dict(user_ids=["u1"])).addErrback(failures.append)
    peer.link.unread = lambda: True  # a terminal that keeps the gateway's buffer full, or a gateway that never catches up
    peer.gateway.clock.pump([1] * 29)
    assert not failures
    peer.gateway.clock.pump([1] * 2)
    assert failures and failures[0].check(RequestTimeout)
    assert "GET_USERS unanswered after 30 s" in failures[0].getErrorMessage()


def test_once_nothing_waits_unread_a_request_past_its_deadline_fails_at_the_next_look():
    peer = Peer()
    peer.establish()
    clock = peer.gateway.clock
    failures = []
    peer.session.request(Command.GET_USERS, dict(user_ids=["u1"])).addErrback(failures.append)
    peer.link.unread = lambda: True
    clock.advance(15)
    assert not failures
    peer.link.unread = lambda: False  # read, and its answer was not there
    clock.advance(1)
    assert failures and failures[0].check(RequestTimeout)


# -- the link timers: one wheel and one reactor timer for every session's deadlines -------------

def test_the_deadlines_of_many_links_share_one_reactor_timer_and_a_closed_link_leaves_it():
    """A callLater a link for liveness and one for its requests was a reactor wake-up each:
    thousands of them a second at 10,000 terminals."""
    gateway = Collaborators()
    clock = gateway.clock
    peers = []
    for _ in range(20):
        clock.advance(0.07)  # links come up at different instants
        peer = Peer(gateway)
        peer.establish()
        peers.append(peer)
    for peer in peers[::2]:
        peer.session.request(Command.GET_USERS, dict(user_ids=["u1"])).addErrback(lambda f: None)
    assert len(clock.getDelayedCalls()) == 1
    timers = gateway.timers
    assert len(timers) == 20  # one entry a session: its next deadline or liveness check, whichever comes first
    for peer in peers[1:]:
        peer.link.connectionLost()
    assert len(timers) == 1 and len(clock.getDelayedCalls()) == 1
    peers[0].transport.clear()
    peers[0].link.connectionLost()
    assert clock.getDelayedCalls() == [] and len(timers) == 0  # nothing looked at for a closed link
    clock.advance(200)
    assert peers[0].transport.value() == b""  # no keepalive on a link that is gone


def test_requests_sent_a_moment_apart_fail_together_within_the_granularity_never_before_their_deadline():
    gateway = Collaborators()
    clock = gateway.clock
    failed: dict[int, float] = {}
    peers = [Peer(gateway) for _ in range(3)]
    for peer in peers:
        peer.establish()
    for n, peer in enumerate(peers):
        clock.advance(1 / 16)  # sent at 0.0625, 0.125 and 0.1875 (sums exact in binary)
        peer.session.request(Command.GET_USERS, dict(user_ids=["u1"])).addErrback(lambda f, n=n: failed.setdefault(n, clock.seconds()))
    while clock.seconds() < 16:
        clock.advance(1 / 64)
    assert failed == {0: 15.25, 1: 15.25, 2: 15.25}  # in one wake-up, at most GRANULARITY_S after 15.0625
    assert 15.25 - 15.0625 <= GRANULARITY_S


def test_a_silent_terminal_is_judged_gone_within_the_granularity_however_many_checks_it_took():
    """The keepalive rule's looks keep in step with the welcome: rounding each up to the wheel's
    granularity must not add up over the nine looks of three silent periods."""
    peer = Peer()
    peer.gateway.clock.advance(0.1)
    peer.establish()  # welcomed at 0.1: looks at 10.1, 20.1, ... each rounded up to 10.25, 20.25, ...
    clock = peer.gateway.clock
    clock.advance(30.0)  # 30.1: a keepalive period of our silence; looked at by 30.25
    assert [f.command for f in peer.frames()] == [Command.KEEPALIVE]
    clock.advance(90.0 - 30.0 - 0.01)
    assert not peer.transport.disconnecting  # 90.09: not yet three periods of its silence
    clock.advance(0.01 + GRANULARITY_S)
    assert peer.transport.disconnecting  # 90.35: gone, at most a granularity after 90.1


def test_a_clock_stepped_forward_by_years_costs_one_look_not_one_a_keepalive_period():
    """The wall clock set forward before the timers ran (a box that booted in 1970, then NTP): the
    keepalive rule's next look is one period on from now at once. A step a period through the gap
    (10^11 of them here) would hold the reactor for hours."""
    peer = Peer()
    peer.establish()
    clock = peer.gateway.clock
    clock.rightNow += 10**12
    peer.send(request(Command.EVENTS, dict(events=[Event(1, 1, EventCode.DOOR_OPENED)]), terminal_id=7, seq=1))
    clock.advance(0)  # the link timers, overdue by the step, run now
    assert not peer.transport.disconnecting  # heard a moment ago: not silent
    clock.advance(90 - 0.01)
    assert not peer.transport.disconnecting
    clock.advance(0.01 + GRANULARITY_S)
    assert peer.transport.disconnecting  # three periods of silence after the step, as any other


def test_a_look_at_the_time_that_fails_still_asks_for_the_next():
    """A bug in one look must not leave the link unwatched: it would never time out."""
    peer = Peer()
    peer.establish()
    clock, session = peer.gateway.clock, peer.session
    looks, tick = [], session._tick

    def failing_once():
        looks.append(clock.seconds())
        if len(looks) == 1:
            raise RuntimeError("a bug in one look")
        tick()

    session._tick = failing_once
    clock.pump([GRANULARITY_S] * 41)  # past the first look, at 10 s: it fails
    assert len(looks) == 1 and not peer.transport.disconnecting
    clock.pump([10] * 9)
    assert peer.transport.disconnecting  # looked at again, and judged gone after 90 s of silence


def test_garbage_before_authentication_closes_the_link():
    peer = Peer()
    peer.send(b"\x00garbage")
    assert peer.transport.disconnecting


def test_garbage_after_authentication_is_counted_then_closes_when_persistent():
    peer = Peer()
    peer.establish()
    peer.send(b"\x00garbage")
    assert not peer.transport.disconnecting
    assert peer.gateway.metrics.value(peer.gateway.metrics.frame_errors) == 1
    for _ in range(peer.session.timing.frame_errors_per_minute):
        peer.send(b"\x00garbage")
    assert peer.transport.disconnecting


def test_link_loss_fails_outstanding_requests():
    peer = Peer()
    peer.establish()
    failures = []
    peer.session.request(Command.KEEPALIVE).addErrback(failures.append)
    peer.link.connectionLost()
    assert failures and "closed" in failures[0].getErrorMessage()


def test_a_timeout_errback_that_closes_the_session_leaves_the_other_requests_failed_cleanly():
    peer = Peer()
    peer.establish()
    outcomes = []
    first = peer.session.request(Command.GET_USERS, dict(user_ids=["u1"]))
    first.addErrback(lambda f: (outcomes.append(f.type), peer.session.close("gave up")))
    second = peer.session.request(Command.GET_USERS, dict(user_ids=["u2"]))
    second.addErrback(lambda f: outcomes.append(f.type))
    peer.gateway.clock.advance(15)  # both pass their deadline in the same turn
    assert outcomes == [RequestTimeout, SessionClosed]


# -- protocol gaps a vendor would trip on (issue 13, item 6) ----------------------------------

def test_a_frame_naming_another_terminal_after_the_handshake_is_refused_and_never_stored():
    peer = Peer(Collaborators(known=(7, 8)))
    peer.establish()
    ev = Event(42, 1, EventCode.ENROLL_SUCCESS, Origin.DEVICE, "u1")
    peer.send(request(Command.EVENTS, dict(events=[ev]), terminal_id=8, seq=5))
    (reply,) = peer.frames()
    assert reply.is_error and parse_body(reply).code == ErrorCode.UNKNOWN_TERMINAL
    assert reply.terminal_id == 7 and reply.seq == 5
    assert peer.gateway.submitted == []
    assert not peer.transport.disconnecting


def test_an_answer_naming_another_terminal_answers_nothing():
    peer = Peer()
    peer.establish()
    answers = []
    peer.session.request(Command.TIME_SYNC, dict(server_time_ms=1)).addBoth(answers.append)
    (asked,) = peer.frames()
    peer.send(response(Frame(Command.TIME_SYNC, terminal_id=8, seq=asked.seq), dict(terminal_time_ms=5)))
    assert answers == []
    peer.send(response(asked, dict(terminal_time_ms=5)))
    assert answers[0].terminal_time_ms == 5


def test_a_replaced_link_is_told_replaced_then_closed():
    peer = Peer()
    peer.establish()
    peer.session.replaced("tcp 192.0.2.7:5000")
    (notice,) = peer.frames()
    body = parse_body(notice)
    assert notice.is_error and body.code == ErrorCode.REPLACED and notice.seq == 0 and notice.terminal_id == 7
    assert "192.0.2.7" in body.text
    assert peer.transport.disconnecting and peer.gateway.ended == [peer.session]


def test_one_frame_with_a_bad_crc_counts_once_toward_the_corrupt_limit():
    peer = Peer()
    peer.establish()
    bad = bytearray(request(Command.KEEPALIVE, terminal_id=7, seq=9))
    bad[-1] ^= 0xFF
    for _ in range(peer.session.timing.frame_errors_per_minute):
        peer.send(bytes(bad))
    assert peer.gateway.metrics.value(peer.gateway.metrics.frame_errors) == 10
    assert not peer.transport.disconnecting
    peer.send(bytes(bad))
    assert peer.transport.disconnecting


def test_a_batch_over_256_events_is_refused_with_bad_message():
    peer = Peer()
    peer.establish()
    events = [Event(n, 1, EventCode.VERIFY_SUCCESS, 1, "u") for n in range(1, 258)]
    payload = PrefixedArray(Int16ub, EventWire).build(events)  # what a careless terminal would send
    peer.send(encode_frame(Frame(Command.EVENTS, payload, terminal_id=7, seq=3)))
    (reply,) = peer.frames()
    assert reply.is_error and parse_body(reply).code == ErrorCode.BAD_MESSAGE
    assert "257 events" in parse_body(reply).text
    assert peer.gateway.submitted == []


# -- memory before authentication (issue 13, item 1) ------------------------------------------

def test_before_the_handshake_a_frame_larger_than_a_handshake_closes_the_link_unbuffered():
    peer = Peer()
    peer.frames()
    big = request(Command.GET_USERS, dict(user_ids=[f"user-{n:026}" for n in range(150)]), terminal_id=7, seq=1)
    assert len(big) > MAX_HANDSHAKE_PAYLOAD + 25
    peer.send(big[:100])
    assert peer.transport.disconnecting
    assert peer.link.decoder.buffered < 100


def test_frames_right_after_welcome_may_be_large_even_in_the_same_chunk():
    peer = Peer()
    peer.handshake()
    (welcome,) = peer.frames()
    events = [Event(n, 1, EventCode.VERIFY_SUCCESS, 1, "someone-with-a-long-user-id") for n in range(42, 298)]
    batch = request(Command.EVENTS, dict(events=events), terminal_id=7, seq=1)
    assert len(batch) > 2 * MAX_HANDSHAKE_PAYLOAD
    peer.send(response(welcome) + batch)
    (submitted, _), = peer.gateway.submitted
    assert len(submitted) == 256
    assert not peer.transport.disconnecting


def test_one_push_to_many_terminals_builds_its_put_users_payload_once():
    records = [UserRecordWire.build(UserRecord(f"u{n}", name="Ana")) for n in range(3)]
    sent = []
    for _ in range(2):
        peer = Peer()
        peer.establish()
        peer.session.link.send = sent.append
        peer.session.put_users(list(records), True)
    first, second = sent
    assert first.command == second.command == Command.PUT_USERS
    assert first.payload == put_users_payload(records, True)
    assert first.payload is second.payload  # shared, not built again
