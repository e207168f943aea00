"""TerminalSession: the gateway's side of one native-protocol terminal over one link.

It is the ``TerminalConnection`` the sync core talks to for terminals speaking our protocol. It
does the handshake (challenge-response, admission), keeps a bounded window of outstanding
requests, hands the terminal's events to the event sink and acknowledges them once stored,
answers keepalives and closes a link whose peer went silent. A request past its deadline fails
(RequestTimeout) and the link stays up: the terminal may still be working through it, and its
answer, if it comes, is counted as late (``gateway_late_answers``). Time the gateway did not read
is not the terminal's: while its bytes wait unread (a saturated reactor, a link paused for the
writer) a request gets one more timeout and the terminal is not silent. The rules of the conversation
(phases, proofs, authenticate first, one terminal per link, sequence numbers, answers matched to
requests, deadlines, the keepalive rule, the corrupt-frame budget) are its
``protocol.connection.Connection``'s: this class is the I/O around it, adding Deferreds, timers
and the gateway's collaborators, all given at construction. It does not know whether its link
is a TCP connection or an address on an RS-485 bus.
"""

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from gateway.sync.connection import (
    Admission,
    DigestPage,
    EventSink,
    FetchedUsers,
    Presence,
    Refused,
    TerminalInfo,
    Unanswered,
    UserResult,
)
from gateway.native.doorman import Doorman
from gateway.native.link_timers import LinkTimers
from protocol.connection import Connection, Role
from protocol.connection_events import (
    Answer,
    Established,
    HelloAnswered,
    KeepaliveDue,
    Rejected,
    Replied,
    Request,
    Stray,
)
from protocol.errors import ErrorCode, FrameError, LocalProtocolError, MessageError, ProtocolError, RemoteError, RemoteProtocolError
from protocol.frame import MAX_PAYLOAD, Flags, Frame
from protocol.messages import PUT_USERS_HEAD, Command, command_name, parse_body, put_users_payload, replaced_notice
from protocol.records import UserRecord, record_digest

log = Logger(namespace="gateway.session")


class SessionClosed(ProtocolError):
    """The link went away before the terminal answered."""


class RequestTimeout(Unanswered):
    """No answer within ``SessionTiming.request_s``; the link stays up."""


# Requests given up on that a late answer is still recognised by: a few windows' worth.
GIVEN_UP_KEPT = 64
# While the terminal's bytes wait unread, a deadline past is looked at again this much later.
UNREAD_RECHECK_S = 1.0


class Link(Protocol):
    """What carries one terminal's frames: a TCP connection, or one address on an RS-485 bus."""

    address: int  # the bus address frames carry; 0 on TCP
    description: str
    source: str  # where the peer is, without a port: what per-address limits count by
    request_bytes: int  # how big one request to the terminal may be

    def send(self, frame: Frame) -> None: ...

    def close(self, reason: str) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def unread(self) -> bool:
        """Whether bytes from the terminal wait for the gateway to read them."""
        ...


@dataclass(frozen=True)
class SessionTiming:
    handshake_s: float = 10.0
    request_s: float = 15.0
    keepalive_s: int = 30  # told to the terminal in WELCOME
    window: int = 8  # requests the gateway may have outstanding on one link
    max_waiting: int = 1024  # requests queued behind a full window before new ones are refused
    frame_errors_per_minute: int = 10


class TerminalSession:
    def __init__(self, link: Link, *, clock, admission: Admission, events: EventSink, presence: Presence, metrics,
                 doorman: Doorman, timers: LinkTimers, timing: SessionTiming = SessionTiming(), expected_terminal_id: int | None = None):
        if timers.clock is not clock:  # deadlines would be looked at on a clock nobody advances: never
            raise ValueError("a session's link timers must run on its own clock")
        self.link = link
        self._timers = timers
        self._doorman = doorman
        self.clock = clock
        self.timing = timing
        self._admission = admission
        self._events = events
        self._presence = presence
        self._metrics = metrics
        self.expected_terminal_id = expected_terminal_id
        self._terminal_id: int | None = None  # known once it authenticated
        self.info = TerminalInfo()
        self.established = False
        self.closed = False
        self._connection = Connection(Role.GATEWAY, address=link.address, request_timeout_s=timing.request_s,
                                      keepalive_s=timing.keepalive_s, handshake_s=timing.handshake_s,
                                      frame_errors_per_minute=timing.frame_errors_per_minute, now=clock.seconds())
        self._pending: dict[int, defer.Deferred] = {}
        self._waiting: deque = deque()
        self._given_up: OrderedDict[int, int] = OrderedDict()  # seq -> command of requests past their deadline, the latest
        self._look_at: float | None = None  # when the link timers will call _time_passed
        self._liveness_due: float | None = None  # the keepalive rule's next look, once established
        self._refusal_timer = None
        self._polled_through = 0  # the highest polled event id stored: the next POLL acknowledges it
        self._stored_through = 0  # the highest of its event ids known stored (WELCOME's, acknowledged, polled)
        self.log_epoch: int | None = None  # the event log the terminal announced; None: a terminal that names none

    # -- TerminalConnection ------------------------------------------------------------------

    @property
    def terminal_id(self) -> int:
        """The terminal this link proved to be; the sync core sees a session only once it has."""
        if self._terminal_id is None:
            raise LocalProtocolError(f"link {self.link.description} has not authenticated: it is no terminal yet")
        return self._terminal_id

    @property
    def description(self) -> str:
        return self.link.description

    @property
    def last_heard_s(self) -> float:
        return self._connection.last_received

    @property
    def push_bytes(self) -> int:
        return min(self.link.request_bytes, MAX_PAYLOAD) - PUT_USERS_HEAD

    def fetch_users(self, user_ids: list[str]) -> defer.Deferred:
        d = self.request(Command.GET_USERS, dict(user_ids=user_ids))
        return d.addCallback(lambda body: FetchedUsers(list(body.users), list(body.missing)))

    def put_users(self, records: list[bytes], keep_local_changes: bool) -> defer.Deferred:
        d = self.request(Command.PUT_USERS, payload=_shared_put_payload(tuple(records), keep_local_changes), raw=True)
        return d.addCallback(_results)

    def delete_users(self, user_ids: list[str]) -> defer.Deferred:
        return self.request(Command.DELETE_USERS, dict(user_ids=user_ids), raw=True).addCallback(_results)

    def list_digests(self, after_user_id: str, limit: int) -> defer.Deferred:
        d = self.request(Command.LIST_USERS, dict(after_user_id=after_user_id, limit=limit))
        return d.addCallback(lambda body: DigestPage({e.user_id: e.digest for e in body.entries}, body.more))

    def holdable(self, record: UserRecord) -> UserRecord:
        return record  # a native terminal holds the whole record

    def digest_of(self, record: bytes) -> bytes:
        return record_digest(record)  # a native terminal holds the whole record

    def events_pending(self) -> defer.Deferred:
        d = self.request(Command.REQUEST_EVENTS, dict(after_event_id=self._stored_through))
        return d.addCallback(lambda body: body.pending)

    def pause_events(self) -> None:
        self.link.pause()

    def resume_events(self) -> None:
        self.link.resume()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """The link is up: the gateway speaks first (docs/protocol.md, "Session")."""
        self.link.send(self._connection.start(now=self.clock.seconds()))
        self._look_by(self._connection.next_deadline())

    def close(self, reason: str) -> None:
        if self.closed:
            return
        if self.established:
            log.info("{who}: closing link {link}: {reason}", who=self.name, link=self.link.description, reason=reason)
        else:  # a stranger can make us say this as often as it likes
            self._doorman.lines.warn("links closed before authentication", self.link.source,
                                     "closing link {link} before authentication: {reason}", link=self.link.description, reason=reason)
        self._end(reason)

    def replaced(self, by: str) -> None:
        """A newer authenticated link of this terminal took over: say so (REPLACED), then close."""
        if self.closed:
            return
        log.info("{who}: closing link {link}: replaced by a new authenticated connection on {by}",
                 who=self.name, link=self.link.description, by=by)
        self.link.send(replaced_notice(self.terminal_id, self.link.address, f"replaced by a newer link on {by}"))
        self._end("replaced")

    def _end(self, reason: str) -> None:
        self.link.close(reason)
        self.connection_lost(reason)

    def connection_lost(self, reason: str = "link closed") -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_looking()
        if self._refusal_timer is not None and self._refusal_timer.active():
            self._refusal_timer.cancel()
        self._connection.close()
        pending, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting, deque()
        for d in [*pending.values(), *(entry[-1] for entry in waiting)]:
            d.errback(SessionClosed(f"{self.name}: link closed ({reason})"))
        if self.established:
            self._presence.offline(self)

    @property
    def name(self) -> str:
        return f"terminal {self._terminal_id}" if self._terminal_id is not None else f"link {self.link.description}"

    # -- receiving ---------------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        if self.closed:
            return
        try:
            event = self._connection.receive_frame(frame, now=self.clock.seconds())
        except RemoteProtocolError as exc:  # only a handshake answer ends the link this way
            self.close(f"handshake failed: {exc}")
            return
        self._on_event[type(event)](self, event)

    def frame_error(self, error: FrameError) -> None:
        if self.closed:
            return
        try:
            corrupt = self._connection.frame_error(error, now=self.clock.seconds())
        except RemoteProtocolError as exc:
            self._metrics.frame_errors.inc()
            self.close(str(exc))
            return
        if corrupt.counted:
            self._metrics.frame_errors.inc()
            self._doorman.lines.warn("corrupt frames", self.link.source, "{who}: corrupt frame skipped: {error}", who=self.name, error=error)

    def _answered(self, answer: Answer) -> None:
        d = self._pending.pop(answer.request.seq, None)
        if d is None:
            return
        self._send_waiting()
        frame = answer.frame
        if frame.is_error:
            try:
                err = parse_body(frame)
                d.errback(RemoteError(err.code, err.text))
            except MessageError as exc:
                d.errback(exc)
        else:
            d.callback(frame)

    def _stray(self, stray: Stray) -> None:
        frame = stray.frame
        if self._given_up.get(frame.seq) == frame.command:
            del self._given_up[frame.seq]
            name = command_name(frame.command)
            self._metrics.late_answers.labels(name).inc()
            self._doorman.lines.warn("late answers", self.link.source,
                                     "{who}: {cmd} (seq {seq}) answered after its deadline: the terminal acted on a request given up on",
                                     who=self.name, cmd=name, seq=frame.seq)
            return
        self._doorman.lines.warn("answers to no request", self.link.source,
                                 "{who}: answer to no outstanding request ({cmd}, seq {seq}) ignored",
                                 who=self.name, cmd=frame.command, seq=frame.seq)

    def _rejected(self, rejected: Rejected) -> None:
        if rejected.code == ErrorCode.UNKNOWN_TERMINAL:  # a frame naming another terminal: never stored under either
            self._doorman.lines.warn("frames naming another terminal", self.link.source, "{who}: {cmd} frame naming terminal {other} ignored",
                                     who=self.name, cmd=command_name(rejected.frame.command), other=rejected.frame.terminal_id)
        if rejected.reply is not None:
            self.link.send(rejected.reply)

    def _replied(self, replied: Replied) -> None:
        self.link.send(replied.reply)

    def _request_received(self, request: Request) -> None:
        """EVENTS: the one request a terminal may make but KEEPALIVE, which the connection answers."""
        self._events.submit(self.terminal_id, list(request.body.events), self.log_epoch).addCallback(self._ack_events, request.frame)

    def _ack_events(self, ack_through: int, frame: Frame) -> None:
        self._stored_through = max(self._stored_through, ack_through)
        if not self.closed:
            self.link.send(self._connection.reply(frame, dict(ack_through=ack_through), now=self.clock.seconds()))

    # -- polling (RS-485: terminals speak only when asked) ------------------------------------

    def poll(self, max_events: int) -> defer.Deferred:
        """Ask for events, acknowledging those already stored; fires with how many came once they
        are stored too (only a stored id may be acknowledged by the next poll)."""
        d = self.request(Command.POLL, dict(ack_through=self._polled_through, max_events=max_events))
        return d.addCallback(self._polled)

    def _polled(self, body):
        if not body.events:
            return 0
        return self._events.submit(self.terminal_id, list(body.events), self.log_epoch).addCallback(self._stored_polled, len(body.events))

    def _stored_polled(self, ack_through: int, count: int) -> int:
        self._polled_through = self._stored_through = max(self._polled_through, ack_through)
        return count

    # -- requesting --------------------------------------------------------------------------

    def request(self, command: Command, body: dict | None = None, payload: bytes | None = None, *, raw: bool = False) -> defer.Deferred:
        """Send a request; fires with the parsed answer (the answering frame if ``raw``), or fails
        with RemoteError, RequestTimeout or SessionClosed."""
        d = defer.Deferred()
        if self.closed:
            d.errback(SessionClosed(f"{self.name}: link closed"))
        elif len(self._pending) < self.timing.window:
            self._transmit(command, body, payload, d)
        elif len(self._waiting) < self.timing.max_waiting:
            self._waiting.append((command, body, payload, d))
        else:
            d.errback(ProtocolError(f"{self.name}: {self.timing.max_waiting} requests already waiting"))
        return d if raw else d.addCallback(parse_body)

    def _send_waiting(self) -> None:
        while self._waiting and len(self._pending) < self.timing.window and not self.closed:
            self._transmit(*self._waiting.popleft())

    def _transmit(self, command: Command, body: dict | None, payload: bytes | None, d: defer.Deferred) -> None:
        try:
            frame, pending = self._connection.request(command, body, payload=payload, now=self.clock.seconds())
        except (MessageError, LocalProtocolError) as exc:
            d.errback(exc)
            return
        self._pending[pending.seq] = d
        self._look_by(pending.deadline)
        self.link.send(frame)

    # -- time --------------------------------------------------------------------------------

    def _look_by(self, deadline: float | None) -> None:
        """Have the time looked at by ``deadline`` (a request's, the handshake's, the keepalive
        rule's): one entry on the process's link timers runs to the earliest."""
        if deadline is None or (self._look_at is not None and self._look_at <= deadline):
            return
        self._look_at = deadline
        self._timers.set(self._time_passed, deadline)

    def _stop_looking(self) -> None:
        if self._look_at is not None:
            self._look_at = None
            self._timers.discard(self._time_passed)

    def _time_passed(self) -> None:
        """The link timers' call: look at the time, then ask to be called at the next deadline,
        the keepalive rule's next look (every ``liveness_check_s`` since the terminal was
        welcomed) or, for a deadline kept past because its answer may wait unread, a second later.
        The next look is asked for even if this one failed: a link never looked at again would
        never time out."""
        self._look_at = None
        try:
            self._tick()
        finally:
            if not self.closed:
                self._look_again()

    def _look_again(self) -> None:
        now = self.clock.seconds()
        deadline = self._connection.next_deadline()
        if deadline is not None and deadline <= now:  # kept past it, its answer perhaps unread: look again soon
            deadline = now + UNREAD_RECHECK_S
        liveness = self._liveness_due
        if liveness is not None and liveness <= now:  # in step with the welcome: the wheel's rounding does not add up
            period = self._connection.liveness_check_s
            liveness += (math.floor((now - liveness) / period) + 1) * period  # at once, however far the clock jumped
            if liveness <= now:  # a quotient rounded down
                liveness += period
            self._liveness_due = liveness
        if liveness is not None:
            deadline = liveness if deadline is None else min(deadline, liveness)
        self._look_by(deadline)

    def _tick(self) -> None:
        """What time says: requests past their deadline, a keepalive due, a handshake too slow
        or a terminal gone silent (these two close the link). While the terminal's bytes wait
        unread, the gateway, not the terminal, is late (a reactor busy with thousands of links
        reads each once a turn, after the timers; a link paused for the writer is not read at
        all): an answer past its deadline may be among them, and the terminal is not silent."""
        now = self.clock.seconds()
        try:
            events = self._connection.tick(now=now, unread=lambda: self.established and self.link.unread())
        except RemoteProtocolError as exc:
            self.close(str(exc))
            return
        for event in events:
            if isinstance(event, KeepaliveDue):
                self.request(Command.KEEPALIVE).addErrback(lambda _: None)  # silence is judged by what we receive
                continue
            d = self._pending.pop(event.request.seq, None)
            if d is None:
                continue  # an earlier errback closed the session, which failed every request already
            self._send_waiting()
            name = command_name(event.request.command)
            self._metrics.requests_unanswered.labels(name).inc()
            self._given_up[event.request.seq] = event.request.command
            if len(self._given_up) > GIVEN_UP_KEPT:
                self._given_up.popitem(last=False)
            waited_s = now - (event.request.deadline - self.timing.request_s)  # longer while its bytes waited unread
            d.errback(RequestTimeout(f"{self.name}: {name} unanswered after {waited_s:.0f} s"))

    # -- handshake ---------------------------------------------------------------------------

    def _on_hello(self, answered: HelloAnswered) -> None:
        frame, hello = answered.frame, answered.hello
        terminal_id = frame.terminal_id
        info = TerminalInfo(hello.model, hello.firmware, hello.max_users)
        self._doorman.answered(self.link)
        checked = False
        try:
            if self.expected_terminal_id is not None and terminal_id != self.expected_terminal_id:
                raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"expected terminal {self.expected_terminal_id} here, not {terminal_id}")
            secret = self._admission.secret_for(terminal_id, info, self.link.description)
            unchecked = self._doorman.may_check(terminal_id, self.link.source)
            if unchecked is not None:
                raise Refused(ErrorCode.AUTH_FAILED, unchecked)
            checked = True
            refusal = self._connection.authenticate(secret)
            if refusal is not None:
                raise Refused(*refusal)
        except Refused as refusal:
            self._refuse(frame, refusal, wrong_proof=checked and refusal.code == ErrorCode.AUTH_FAILED)
            return
        self._terminal_id = terminal_id
        self.info = info
        self.log_epoch = hello.log_epoch
        d = self._events.begin_log(terminal_id, self.log_epoch)
        d.addCallback(self._send_welcome)
        d.addErrback(self._handshake_failed)

    def _refuse(self, frame: Frame, refusal: Refused, wrong_proof: bool) -> None:
        """Log, count and answer a refusal; a wrong proof (a guess at a secret: not an unknown or
        pending id) is answered late when the doorman says so, the link still holding its
        stranger's place meanwhile."""
        self._metrics.refused.labels(refusal.code.name.lower()).inc()
        known = self._admission.refused(frame.terminal_id, self.link.description, refusal.reason)
        # A terminal the gateway knows is named in full whatever else its address sends; ids nobody
        # knows (a guesser's, as many as it likes) share their address's line.
        source = f"{self.link.source}, terminal {frame.terminal_id}" if known else self.link.source
        self._doorman.lines.warn("refused terminals", source, "refused terminal {tid} on {link}: {reason}",
                                 tid=frame.terminal_id, link=self.link.description, reason=refusal.reason)
        delay = self._doorman.proof_failed(frame.terminal_id, self.link.source) if wrong_proof else 0.0
        if delay:
            self._stop_looking()  # the refusal, not the handshake's deadline, ends this link
            self._refusal_timer = self.clock.callLater(delay, self._send_refusal, frame, refusal)
        else:
            self._send_refusal(frame, refusal)

    def _send_refusal(self, frame: Frame, refusal: Refused) -> None:
        if self.closed:
            return
        self.link.send(self._connection.refuse_terminal(refusal.code, refusal.reason, now=self.clock.seconds()))
        self._end(f"refused: {refusal.reason}")

    def _send_welcome(self, ack_through: int) -> None:
        if self.closed:
            return
        self._stored_through = ack_through
        now = self.clock.seconds()
        self.link.send(self._connection.welcome(ack_through=ack_through, server_time_ms=int(now * 1000), now=now))
        self._look_by(self._connection.next_deadline())

    def _on_welcome(self, _: Established) -> None:
        if not self._presence.online(self):
            self.close("refused or removed by an administrator during the handshake")
            return
        self.established = True
        self._liveness_due = self.clock.seconds() + self._connection.liveness_check_s
        self._look_by(self._liveness_due)
        log.info("terminal {tid} connected on {link} ({model}, firmware {fw})",
                 tid=self.terminal_id, link=self.link.description, model=self.info.model, fw=self.info.firmware)

    def _handshake_failed(self, failure):
        if not self.closed:
            self.close(f"handshake failed: {failure.getErrorMessage()}")

    _on_event = {
        Answer: _answered,
        Stray: _stray,
        Rejected: _rejected,
        Replied: _replied,
        Request: _request_received,
        HelloAnswered: _on_hello,
        Established: _on_welcome,
    }


@lru_cache(maxsize=16)
def _shared_put_payload(records: tuple[bytes, ...], keep_local_changes: bool) -> bytes:
    """One change pushed to every terminal on links of one size: its PUT_USERS payload is built
    once and shared. Records are the feed read's bytes, shared by every terminal woken by one
    change, so the key hashes cached hashes and compares by identity first."""
    return put_users_payload(list(records), keep_local_changes)


def _results(answer: Frame) -> list[UserResult]:
    return list(_parsed_results(answer.command, answer.payload))


@lru_cache(maxsize=256)
def _parsed_results(command: int, payload: bytes) -> tuple[UserResult, ...]:
    """The outcomes a PUT_USERS or DELETE_USERS answer carries. Every terminal applying one push
    answers the same bytes ("user 3-17: OK"), so each distinct answer is parsed once."""
    body = parse_body(Frame(command, payload, Flags.RESPONSE))
    # Item access: a Container's attribute access costs ten times as much.
    return tuple(UserResult(r["user_id"], r["status"]) for r in body["results"])
