"""TerminalSession: the gateway's side of one native-protocol terminal over one link.

It is the ``TerminalConnection`` the sync core talks to for terminals speaking our protocol. It
does the handshake (challenge-response, admission), keeps a bounded window of outstanding
requests, hands the terminal's events to the event sink and acknowledges them once stored,
answers keepalives and closes a link whose peer went silent. The rules of the conversation
(sequence numbers, answers matched to requests, deadlines, the keepalive rule, the proofs) are
``protocol.conversation`` and ``protocol.auth``; this class adds Deferreds, timers and the
gateway's collaborators, all given at construction. It does not know whether its link is a TCP
connection or an address on an RS-485 bus.
"""

from collections import deque
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from gateway.sync.connection import Admission, DigestPage, EventSink, FetchedUsers, Presence, Refused, TerminalInfo, UserResult
from gateway.native.doorman import Doorman
from protocol.auth import GatewayHandshake
from protocol.conversation import Conversation, Liveness
from protocol.errors import ErrorCode, FrameError, MessageError, ProtocolError, RemoteError
from protocol.events import MAX_EVENT_ID
from protocol.frame import MAX_PAYLOAD, PROTOCOL_VERSION, Flags, Frame
from protocol.messages import PUT_USERS_HEAD, Command, error_frame, parse_body, put_users_payload, replaced_notice, response_frame

log = Logger(namespace="gateway.session")


class SessionClosed(ProtocolError):
    """The link went away before the terminal answered."""


class RequestTimeout(ProtocolError):
    pass


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
                 doorman: Doorman, timing: SessionTiming = SessionTiming(), expected_terminal_id: int | None = None):
        self.link = link
        self._doorman = doorman
        self.clock = clock
        self.timing = timing
        self._admission = admission
        self._events = events
        self._presence = presence
        self._metrics = metrics
        self.expected_terminal_id = expected_terminal_id
        self.terminal_id: int | None = None
        self.info = TerminalInfo()
        self.established = False
        self.closed = False
        self._conversation = Conversation(address=link.address, request_timeout_s=timing.request_s,
                                          keepalive_s=timing.keepalive_s, now=clock.seconds())
        self._handshake = GatewayHandshake()
        self._pending: dict[int, defer.Deferred] = {}
        self._waiting: deque = deque()
        self._frame_errors: deque[float] = deque()
        self._deadline_timer = None
        self._handshake_timer = None
        self._liveness_timer = None
        self._refusal_timer = None
        self._polled_through = 0  # the highest polled event id stored: the next POLL acknowledges it
        self._stored_through = 0  # the highest of its event ids known stored (WELCOME's, acknowledged, polled)
        self.log_epoch: int | None = None  # the event log the terminal announced; None: a terminal that names none

    # -- TerminalConnection ------------------------------------------------------------------

    @property
    def description(self) -> str:
        return self.link.description

    @property
    def last_heard_s(self) -> float:
        return self._conversation.last_received

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
        self._handshake_timer = self.clock.callLater(self.timing.handshake_s, self._handshake_expired)
        d = self.request(Command.HELLO, self._handshake.hello(PROTOCOL_VERSION), raw=True)
        d.addCallback(self._on_hello).addErrback(self._handshake_failed)

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
        for timer in (self._deadline_timer, self._handshake_timer, self._liveness_timer, self._refusal_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._conversation.abandon()
        pending, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting, deque()
        for d in [*pending.values(), *(entry[-1] for entry in waiting)]:
            d.errback(SessionClosed(f"{self.name}: link closed ({reason})"))
        if self.established:
            self._presence.offline(self)

    @property
    def name(self) -> str:
        return f"terminal {self.terminal_id}" if self.terminal_id is not None else f"link {self.link.description}"

    # -- receiving ---------------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        if self.closed:
            return
        self._conversation.received(self.clock.seconds())
        if self.established and frame.terminal_id != self.terminal_id:
            self._foreign_frame(frame)
        elif frame.is_response:
            self._response_received(frame)
        else:
            self._request_received(frame)

    def _foreign_frame(self, frame: Frame) -> None:
        """A frame naming another terminal on this one's link: never stored under either."""
        text = f"this link is terminal {self.terminal_id}'s; the frame names terminal {frame.terminal_id}"
        self._doorman.lines.warn("frames naming another terminal", self.link.source, "{who}: {cmd} frame naming terminal {other} ignored",
                                 who=self.name, cmd=_command_name(frame.command), other=frame.terminal_id)
        if not frame.is_response:
            self._send(error_frame(replace(frame, terminal_id=self.terminal_id), ErrorCode.UNKNOWN_TERMINAL, text))

    def frame_error(self, error: FrameError) -> None:
        if error.continues:
            return  # the rest of a frame already counted
        self._metrics.frame_errors.inc()
        if not self.established:
            self.close(f"corrupt data before authentication ({error})")
            return
        now = self.clock.seconds()
        self._frame_errors.append(now)
        while self._frame_errors and self._frame_errors[0] < now - 60:
            self._frame_errors.popleft()
        self._doorman.lines.warn("corrupt frames", self.link.source, "{who}: corrupt frame skipped: {error}", who=self.name, error=error)
        if len(self._frame_errors) > self.timing.frame_errors_per_minute:
            self.close(f"more than {self.timing.frame_errors_per_minute} corrupt frames in a minute")

    def _response_received(self, frame: Frame) -> None:
        answered = self._conversation.answer(frame)
        if answered is None:
            self._doorman.lines.warn("answers to no request", self.link.source,
                                     "{who}: answer to no outstanding request ({cmd}, seq {seq}) ignored",
                                     who=self.name, cmd=frame.command, seq=frame.seq)
            return
        d = self._pending.pop(answered.seq)
        self._send_waiting()
        if frame.is_error:
            try:
                err = parse_body(frame)
                d.errback(RemoteError(err.code, err.text))
            except MessageError as exc:
                d.errback(exc)
        else:
            d.callback(frame)

    def _request_received(self, frame: Frame) -> None:
        if frame.is_error:  # ERROR without RESPONSE: no request carries it (docs/protocol.md, "Frame")
            self._send(error_frame(frame, ErrorCode.BAD_MESSAGE, f"flags 0x{frame.flags:02X}: ERROR is set only with RESPONSE"))
        elif frame.command == Command.KEEPALIVE:
            self._send(response_frame(frame))
        elif not self.established:
            self._send(error_frame(frame, ErrorCode.NOT_AUTHENTICATED, "handshake not finished"))
        elif frame.command == Command.EVENTS:
            try:
                batch = parse_body(frame).events
            except MessageError as exc:
                self._send(error_frame(frame, ErrorCode.BAD_MESSAGE, str(exc)))
                return
            self._events.submit(self.terminal_id, list(batch), self.log_epoch).addCallback(self._ack_events, frame)
        else:
            self._send(error_frame(frame, ErrorCode.UNKNOWN_COMMAND, f"command 0x{frame.command:02X} is not accepted from a terminal"))

    def _ack_events(self, ack_through: int, frame: Frame) -> None:
        self._stored_through = max(self._stored_through, ack_through)
        if not self.closed:
            self._send(response_frame(frame, dict(ack_through=ack_through)))

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
            frame, pending = self._conversation.request(command, body, payload=payload, now=self.clock.seconds())
        except MessageError as exc:
            d.errback(exc)
            return
        self._pending[pending.seq] = d
        self._arm_deadline(pending.deadline)
        self._send(frame)

    def _arm_deadline(self, deadline: float) -> None:
        """One timer for every outstanding request: it runs to the earliest deadline."""
        timer = self._deadline_timer
        if timer is not None and timer.active() and timer.getTime() <= deadline:
            return
        if timer is not None and timer.active():
            timer.cancel()
        self._deadline_timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._deadlines_passed)

    def _deadlines_passed(self) -> None:
        self._deadline_timer = None
        for late in self._conversation.expire(self.clock.seconds()):
            d = self._pending.pop(late.seq, None)
            if d is None:
                continue  # an earlier errback closed the session, which failed every request already
            self._send_waiting()
            d.errback(RequestTimeout(f"{self.name}: {_command_name(late.command)} unanswered after {self.timing.request_s:g} s"))
        following = self._conversation.next_deadline()
        if following is not None and not self.closed:
            self._arm_deadline(following)

    def _send(self, frame: Frame) -> None:
        self._conversation.sent(self.clock.seconds())
        self.link.send(frame)

    # -- handshake ---------------------------------------------------------------------------

    def _on_hello(self, frame: Frame):
        hello = parse_body(frame)
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
            if not self._handshake.terminal_proved(secret, terminal_id, hello):
                raise Refused(ErrorCode.AUTH_FAILED, "wrong proof: the terminal does not hold the configured secret")
            if hello.log_epoch is not None and not 0 < hello.log_epoch <= MAX_EVENT_ID:
                raise Refused(ErrorCode.BAD_MESSAGE, f"log_epoch must be 1 to 2**63-1, not {hello.log_epoch}")
        except Refused as refusal:
            self._refuse(frame, refusal, wrong_proof=checked and refusal.code == ErrorCode.AUTH_FAILED)
            return
        self.terminal_id = self._conversation.terminal_id = terminal_id
        self.info = info
        self.log_epoch = hello.log_epoch
        d = self._events.begin_log(terminal_id, self.log_epoch)
        d.addCallback(self._send_welcome, secret, hello)
        d.addErrback(self._handshake_failed)

    def _refuse(self, frame: Frame, refusal: Refused, wrong_proof: bool) -> None:
        """Log, count and answer a refusal; a wrong proof (a guess at a secret: not an unknown or
        pending id) is answered late when the doorman says so, the link still holding its
        stranger's place meanwhile."""
        self._metrics.refused.labels(refusal.code.name.lower()).inc()
        self._doorman.lines.warn("refused terminals", self.link.source, "refused terminal {tid} on {link}: {reason}",
                                 tid=frame.terminal_id, link=self.link.description, reason=refusal.reason)
        delay = self._doorman.proof_failed(frame.terminal_id, self.link.source) if wrong_proof else 0.0
        if delay:
            self._handshake_timer.cancel()
            self._refusal_timer = self.clock.callLater(delay, self._send_refusal, frame, refusal)
        else:
            self._send_refusal(frame, refusal)

    def _send_refusal(self, frame: Frame, refusal: Refused) -> None:
        if self.closed:
            return
        self._send(error_frame(frame, refusal.code, refusal.reason))
        self._end(f"refused: {refusal.reason}")

    def _send_welcome(self, ack_through: int, secret: bytes, hello):
        self._stored_through = ack_through
        body = self._handshake.welcome(secret, self.terminal_id, hello, server_time_ms=int(self.clock.seconds() * 1000),
                                       keepalive_s=self.timing.keepalive_s, ack_through=ack_through)
        return self.request(Command.WELCOME, body).addCallback(self._on_welcome)

    def _on_welcome(self, _):
        if self._handshake_timer.active():
            self._handshake_timer.cancel()
        if not self._presence.online(self):
            self.close("refused or removed by an administrator during the handshake")
            return
        self.established = True
        self._liveness_timer = self.clock.callLater(self._conversation.liveness_check_s, self._check_liveness)
        log.info("terminal {tid} connected on {link} ({model}, firmware {fw})",
                 tid=self.terminal_id, link=self.link.description, model=self.info.model, fw=self.info.firmware)

    def _handshake_failed(self, failure):
        if not self.closed:
            self.close(f"handshake failed: {failure.getErrorMessage()}")

    def _handshake_expired(self):
        self.close(f"no handshake within {self.timing.handshake_s:g} s")

    # -- liveness ----------------------------------------------------------------------------

    def _check_liveness(self) -> None:
        now = self.clock.seconds()
        state = self._conversation.liveness(now)
        if state is Liveness.PEER_GONE:
            self.close(f"nothing received for {now - self._conversation.last_received:.0f} s: terminal gone")
            return
        if state is Liveness.KEEPALIVE_DUE:
            self.request(Command.KEEPALIVE).addErrback(lambda _: None)  # silence is judged by what we receive
        self._liveness_timer = self.clock.callLater(self._conversation.liveness_check_s, self._check_liveness)


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


def _command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command 0x{command:02X}"
