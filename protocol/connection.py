"""Connection: one link's conversation in our terminal protocol, for either side, with no I/O.

In the shape of h11's ``Connection`` and of ``protocol.zk.client``: frames (or bytes) and
``now`` go in, events come out (protocol.connection_events); what this side must send comes out
as frames, which the owner writes as they are (encoded on a stream, queued for their turn on a
bus); ``next_deadline`` says when to call ``tick`` again. The gateway's session, the simulated
terminal and ``gateway-check`` each own one per link, so they cannot disagree about the rules::

    link = Connection(Role.GATEWAY, handshake_s=10, now=clock())
    send(link.start(now=clock()))                          # HELLO
    for event in link.receive_data(data, now=clock()):     # HelloAnswered, Answer, Request, ...
        ...

It owns what docs/protocol.md ("Session") makes a rule: the phases (HELLO, WELCOME,
ESTABLISHED, CLOSED) and the proofs between them (protocol.auth); that before WELCOME only
KEEPALIVE is answered; that after it every frame names the link's terminal; which requests each
side takes; sequence numbers and answers matched to requests (protocol.conversation); the
handshake deadline, request deadlines and the keepalive rule; and, on the gateway's side, the
corrupt-frame budget. Errors say whose fault they are: ``LocalProtocolError`` (the caller broke
a rule: a bug here), ``RemoteProtocolError`` (the peer did, and the link must close; the
connection is CLOSED when it is raised). Each method's docstring names what it raises.
"""

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from functools import cache, lru_cache
from typing import Any, NoReturn

from protocol.auth import GatewayHandshake, TerminalHandshake
from protocol.connection_events import (
    Answer,
    Corrupt,
    Established,
    Event,
    Greeted,
    HelloAnswered,
    KeepaliveDue,
    Rejected,
    Replied,
    Request,
    Stray,
    TimedOut,
)
from protocol.conversation import Conversation, Liveness, Outstanding
from protocol.decoder import StreamDecoder
from protocol.errors import ErrorCode, FrameError, LocalProtocolError, MessageError, RemoteError, RemoteProtocolError
from protocol.events import MAX_EVENT_ID
from protocol.frame import PROTOCOL_VERSION, Flags, Frame
from protocol.messages import Command, command_name, error_frame, parse_body, response_frame

CORRUPT_WINDOW_S = 60.0  # the corrupt-frame budget counts this far back


class Role(Enum):
    GATEWAY = "gateway"
    TERMINAL = "terminal"


class Phase(Enum):
    HELLO = "hello"  # gateway: HELLO sent, its answer awaited or being judged; terminal: HELLO awaited
    WELCOME = "welcome"  # gateway: the terminal proved itself, WELCOME to go or on its way; terminal: HELLO answered
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True)
class _Rules:
    """What one side takes from its peer."""

    peer: str
    accepts: frozenset[int]  # requests this side answers
    before_welcome: frozenset[int]  # of those, the ones answered before the handshake ended
    starts_over: frozenset[int]  # requests taken whatever terminal they name: they begin a new handshake
    strangers_may_garble: bool  # whether corrupt data before the handshake ended is only counted


_RULES = {
    Role.GATEWAY: _Rules("terminal", frozenset({Command.KEEPALIVE, Command.EVENTS}), frozenset({Command.KEEPALIVE}),
                         frozenset(), strangers_may_garble=False),
    Role.TERMINAL: _Rules("gateway", frozenset(Command) - {Command.EVENTS},
                          frozenset({Command.HELLO, Command.WELCOME, Command.KEEPALIVE}), frozenset({Command.HELLO}),
                          strangers_may_garble=True),
}
_RESPONSE, _ERROR = int(Flags.RESPONSE), int(Flags.ERROR)


class Connection:
    """One side of one link. ``terminal_id`` is the terminal's own id on its side, 0 on the
    gateway's until the terminal proved it; ``address`` goes into every frame built here.
    ``request_timeout_s`` None: requests wait for ever (a terminal's EVENTS wait for a commit).
    ``frame_errors_per_minute`` None: corrupt frames are skipped, never fatal."""

    def __init__(self, role: Role, *, terminal_id: int = 0, address: int = 0, request_timeout_s: float | None = 15.0,
                 keepalive_s: float = 30.0, handshake_s: float | None = None, frame_errors_per_minute: int | None = None,
                 now: float = 0.0):
        self.role = role
        self._rules = _RULES[role]
        self.phase = Phase.HELLO
        self._conversation = Conversation(terminal_id=terminal_id, address=address, keepalive_s=keepalive_s, now=now,
                                          request_timeout_s=math.inf if request_timeout_s is None else request_timeout_s)
        self.handshake_s = handshake_s
        self._handshake_deadline = None if handshake_s is None else now + handshake_s
        self.frame_errors_per_minute = frame_errors_per_minute
        self._frame_errors: deque[float] = deque()
        self._decoder: StreamDecoder | None = None  # made by the first receive_data
        self._gateway_handshake: GatewayHandshake | None = None
        self._terminal_handshake: TerminalHandshake | None = None
        self._hello: tuple[Frame, Any] | None = None  # the terminal's HELLO answer, on the gateway's side
        self._secret: bytes | None = None  # the secret the terminal proved, until WELCOME is built

    # -- what the owner reads ----------------------------------------------------------------

    @property
    def terminal_id(self) -> int:
        return self._conversation.terminal_id

    @property
    def established(self) -> bool:
        return self.phase is Phase.ESTABLISHED

    @property
    def last_received(self) -> float:
        return self._conversation.last_received

    @property
    def keepalive_s(self) -> float:
        return self._conversation.keepalive_s

    @property
    def liveness_check_s(self) -> float:
        """How often to ``tick`` for the keepalive rule alone."""
        return self._conversation.liveness_check_s

    @property
    def request_timeout_s(self) -> float:
        return self._conversation.request_timeout_s

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to say next (a request's deadline, the handshake's); the
        keepalive rule asks for a tick every ``liveness_check_s`` besides."""
        deadlines = [d for d in (self._conversation.next_deadline(), self._handshake_deadline) if d is not None and d < math.inf]
        return min(deadlines, default=None)

    # -- what comes in -----------------------------------------------------------------------

    def receive_data(self, data: bytes, *, now: float) -> list[Event]:
        """Bytes from a stream: the events of every frame and corrupt stretch they complete.
        RemoteProtocolError as ``receive_frame`` and ``frame_error``."""
        if self._decoder is None:
            self._decoder = StreamDecoder()
        events = []
        for item in self._decoder.read(data):
            if self.phase is Phase.CLOSED:
                break
            events.append(self.receive_frame(item, now=now) if isinstance(item, Frame) else self.frame_error(item, now=now))
        return events

    def receive_frame(self, frame: Frame, *, now: float) -> Event:
        """One whole frame from the peer: its event. RemoteProtocolError when it ends the link (a
        failed handshake); LocalProtocolError once the connection is closed."""
        phase = self.phase
        if phase is Phase.CLOSED:
            raise LocalProtocolError("a frame fed to a closed connection")
        conversation = self._conversation
        conversation.last_received = now
        is_response = int(frame.flags) & _RESPONSE
        if phase is Phase.ESTABLISHED and frame.terminal_id != conversation.terminal_id:
            if is_response or frame.command not in self._rules.starts_over:
                return self._foreign(frame, now)
        if is_response:
            pending = conversation.answer(frame)
            if pending is None:
                return Stray(frame)
            if phase is not Phase.ESTABLISHED and self.role is Role.GATEWAY:
                if pending.command == Command.HELLO:
                    return self._hello_answered(frame)
                if pending.command == Command.WELCOME:
                    return self._welcome_answered(frame)
            return Answer(pending, frame)
        return self._request(frame, now)

    def frame_error(self, error: FrameError, *, now: float) -> Corrupt:
        """Corrupt bytes the decoder skipped. RemoteProtocolError on the gateway's side when they
        come before the terminal authenticated, or once more than ``frame_errors_per_minute``
        came in a minute; LocalProtocolError once the connection is closed."""
        if self.phase is Phase.CLOSED:
            raise LocalProtocolError("corrupt data fed to a closed connection")
        if error.continues:
            return Corrupt(error, False)
        if self.phase is not Phase.ESTABLISHED and not self._rules.strangers_may_garble:
            self._fail(f"corrupt data before authentication ({error})")
        budget = self.frame_errors_per_minute
        if budget is not None:
            errors = self._frame_errors
            errors.append(now)
            while errors and errors[0] < now - CORRUPT_WINDOW_S:
                errors.popleft()
            if len(errors) > budget:
                self._fail(f"more than {budget} corrupt frames in a minute")
        return Corrupt(error, True)

    def tick(self, *, now: float, unread: Callable[[], bool] = lambda: False) -> list[Event]:
        """What time says: requests past their deadline (TimedOut), a keepalive due.
        RemoteProtocolError when the handshake did not end in time or the peer fell silent for
        three keepalive periods. ``unread()``: whether bytes from the peer wait for us to read
        them, asked once and only when a deadline has passed or the peer seems silent: then a
        request is late only a second timeout past its deadline and the peer is not silent."""
        if self.phase is Phase.CLOSED:
            return []
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._fail(f"no handshake within {self.handshake_s:g} s")
        conversation = self._conversation
        unread = cache(unread)  # one question to the kernel a tick at most
        events: list[Event] = []
        for late in conversation.expire(now, unread=unread):
            if late.command in (Command.HELLO, Command.WELCOME) and self.role is Role.GATEWAY:
                self._fail(f"{command_name(late.command)} unanswered after {conversation.request_timeout_s:g} s")
            events.append(TimedOut(late))
        if self.phase is Phase.ESTABLISHED:
            state = conversation.liveness(now, unread=unread)
            if state is Liveness.PEER_GONE:
                self._fail(f"nothing received for {now - conversation.last_received:.0f} s: {self._rules.peer} gone")
            if state is Liveness.KEEPALIVE_DUE:
                events.append(KeepaliveDue())
        return events

    # -- what goes out -----------------------------------------------------------------------

    def request(self, command: int, body: dict[str, Any] | None = None, *, payload: bytes | None = None,
                now: float) -> tuple[Frame, Outstanding]:
        """A request to send and its entry among the outstanding ones. ``payload``: a body
        already encoded; otherwise ``body`` is (MessageError if it cannot be).
        LocalProtocolError before the handshake ended (but for KEEPALIVE) or after close."""
        phase = self.phase
        if phase is not Phase.ESTABLISHED and (phase is Phase.CLOSED or command != Command.KEEPALIVE):
            raise LocalProtocolError(f"{command_name(command)} on a connection in phase {phase.value}")
        sent = self._conversation.request(command, body, payload=payload, now=now)
        self._conversation.last_sent = now
        return sent

    def reply(self, to: Frame, body: dict[str, Any] | None = None, *, now: float) -> Frame:
        """The answer to the peer's request ``to``. MessageError if ``body`` cannot be built;
        LocalProtocolError after close."""
        self._check_open()
        self._conversation.last_sent = now
        return response_frame(self._header(to), body)

    def refuse(self, to: Frame, code: ErrorCode, text: str, *, now: float) -> Frame:
        """An error reply to the peer's request ``to``. LocalProtocolError after close."""
        self._check_open()
        self._conversation.last_sent = now
        return error_frame(self._header(to), code, text)

    def close(self) -> list[Outstanding]:
        """The link is gone or going: every request still outstanding, never to be answered."""
        self.phase = Phase.CLOSED
        self._handshake_deadline = None
        return self._conversation.abandon()

    # -- the handshake, gateway's side ---------------------------------------------------------

    def start(self, *, now: float) -> Frame:
        """HELLO, the first frame on every link (the gateway speaks first). LocalProtocolError
        on a terminal's side or when already started."""
        if self.role is not Role.GATEWAY or self._gateway_handshake is not None or self.phase is not Phase.HELLO:
            raise LocalProtocolError("HELLO is said once per link, by the gateway")
        self._gateway_handshake = GatewayHandshake()
        frame, _ = self._conversation.request(Command.HELLO, self._gateway_handshake.hello(PROTOCOL_VERSION), now=now)
        self._conversation.last_sent = now
        return frame

    def authenticate(self, secret: bytes) -> tuple[ErrorCode, str] | None:
        """Whether the HELLO answer proves ``secret`` (and names a log the gateway can hold):
        None, and the link is the terminal's from now on; or why not, as the code and text of
        ``refuse_terminal``. LocalProtocolError before a HelloAnswered or after a decision."""
        handshake = self._gateway_handshake
        if self._hello is None or handshake is None or self.phase is not Phase.HELLO:
            raise LocalProtocolError("authenticate() needs a HELLO answer still undecided")
        frame, hello = self._hello
        if not handshake.terminal_proved(secret, frame.terminal_id, hello):
            return ErrorCode.AUTH_FAILED, "wrong proof: the terminal does not hold the configured secret"
        if hello.log_epoch is not None and not 0 < hello.log_epoch <= MAX_EVENT_ID:
            return ErrorCode.BAD_MESSAGE, f"log_epoch must be 1 to 2**63-1, not {hello.log_epoch}"
        self._conversation.terminal_id = frame.terminal_id
        self._secret = secret
        self.phase = Phase.WELCOME
        return None

    def welcome(self, *, ack_through: int, server_time_ms: int, now: float) -> Frame:
        """WELCOME, with the gateway's proof and the keepalive period of this connection.
        LocalProtocolError unless the terminal was authenticated and no WELCOME went yet."""
        handshake = self._gateway_handshake
        if self.phase is not Phase.WELCOME or self._secret is None or self._hello is None or handshake is None:
            raise LocalProtocolError("WELCOME goes once, after the terminal proved itself")
        frame, hello = self._hello
        body = handshake.welcome(self._secret, frame.terminal_id, hello, server_time_ms=server_time_ms,
                                               keepalive_s=int(self.keepalive_s), ack_through=ack_through)
        self._secret = None
        welcome, _ = self._conversation.request(Command.WELCOME, body, now=now)
        self._conversation.last_sent = now
        return welcome

    def refuse_terminal(self, code: ErrorCode, text: str, *, now: float) -> Frame:
        """The error reply that refuses the terminal (echoing its HELLO answer); the connection
        is closed and the owner closes the link once it is sent. LocalProtocolError before a
        HelloAnswered."""
        if self._hello is None or self.phase is Phase.CLOSED:
            raise LocalProtocolError("a terminal is refused once, after it answered HELLO")
        self._conversation.last_sent = now
        refusal = error_frame(self._hello[0], code, text)
        self.close()
        return refusal

    def _hello_answered(self, frame: Frame) -> HelloAnswered:
        hello = self._handshake_body(frame)
        self._hello = (frame, hello)
        return HelloAnswered(frame, hello)

    def _welcome_answered(self, frame: Frame) -> Established:
        self._handshake_body(frame)
        self.phase = Phase.ESTABLISHED
        self._handshake_deadline = None
        return Established(frame, None, None)

    def _handshake_body(self, frame: Frame) -> Any:
        """The body of an answer the handshake waits for; RemoteProtocolError for an error reply
        or a body that does not parse: the handshake failed."""
        try:
            body = parse_body(frame)
        except MessageError as exc:
            self._fail(str(exc))
        if int(frame.flags) & _ERROR:
            self._fail(str(RemoteError(body.code, body.text)))
        return body

    # -- the handshake, terminal's side ----------------------------------------------------------

    def answer_hello(self, greeting: Greeted, *, secret: bytes, model: str, firmware: str, max_users: int,
                     max_events: int, log_epoch: int | None, now: float) -> Frame:
        """HELLO's answer: what the terminal says of itself, and its proof of ``secret``.
        LocalProtocolError on the gateway's side."""
        if self.role is not Role.TERMINAL:
            raise LocalProtocolError("only a terminal answers HELLO")
        self._check_open()
        handshake = TerminalHandshake(self.terminal_id, secret)
        body = dict(model=model, firmware=firmware, protocol_version=PROTOCOL_VERSION, max_users=max_users,
                    max_events=max_events, log_epoch=log_epoch, **handshake.answer_hello(greeting.hello))
        self._terminal_handshake = handshake
        self.phase = Phase.WELCOME
        self._conversation.last_sent = now
        return response_frame(self._header(greeting.frame), body)

    def _greeted(self, frame: Frame, hello: Any) -> Greeted:
        """A HELLO, first or again: whatever handshake there was on this link is forgotten."""
        self.phase = Phase.HELLO
        self._terminal_handshake = None
        return Greeted(frame, hello)

    def _welcomed(self, frame: Frame, welcome: Any, now: float) -> Established | Rejected:
        handshake = self._terminal_handshake
        if handshake is None or not handshake.gateway_proved(welcome):
            return self._reject(frame, ErrorCode.AUTH_FAILED, "the gateway does not hold this terminal's secret", now)
        self.phase = Phase.ESTABLISHED
        self._handshake_deadline = None
        self._conversation.keepalive_s = welcome.keepalive_s
        return Established(frame, welcome, self.reply(frame, now=now))

    # -- the rules a request passes ------------------------------------------------------------

    def _request(self, frame: Frame, now: float) -> Event:
        command = frame.command
        rules = self._rules
        if self.phase is not Phase.ESTABLISHED and command not in rules.before_welcome:
            return self._reject(frame, ErrorCode.NOT_AUTHENTICATED, "handshake not finished", now)
        if command not in rules.accepts:
            return self._reject(frame, ErrorCode.UNKNOWN_COMMAND, f"command 0x{command:02X} is not accepted from a {rules.peer}", now)
        if int(frame.flags) & _ERROR:  # read as a request, it would be parsed as an error body
            return self._reject(frame, ErrorCode.BAD_MESSAGE, f"flags 0x{int(frame.flags):02X}: an error reply is a response", now)
        try:
            body = _parsed_put_users(frame.payload) if command == Command.PUT_USERS else parse_body(frame)
        except MessageError as exc:
            return self._reject(frame, ErrorCode.BAD_MESSAGE, str(exc), now)
        if command == Command.KEEPALIVE:
            return Replied(frame, self.reply(frame, now=now))
        if self.role is Role.TERMINAL:
            if command == Command.HELLO:
                return self._greeted(frame, body)
            if command == Command.WELCOME:
                return self._welcomed(frame, body, now)
        return Request(frame, body)

    def _foreign(self, frame: Frame, now: float) -> Rejected:
        """A frame naming another terminal on this one's link: answered (if a request) under the
        link's own id, and never acted on, under either terminal."""
        text = f"this link is terminal {self.terminal_id}'s; the frame names terminal {frame.terminal_id}"
        if int(frame.flags) & _RESPONSE:
            return Rejected(frame, ErrorCode.UNKNOWN_TERMINAL, text, None)
        return self._reject(frame, ErrorCode.UNKNOWN_TERMINAL, text, now)

    def _reject(self, frame: Frame, code: ErrorCode, text: str, now: float) -> Rejected:
        return Rejected(frame, code, text, self.refuse(frame, code, text, now=now))

    def _header(self, to: Frame) -> Frame:
        """Replies carry the link's terminal id once it is known: a terminal's answer to HELLO is
        how the gateway learns it, and a refusal of another terminal's frame names this one."""
        own = self._conversation.terminal_id
        return to if not own or to.terminal_id == own else replace(to, terminal_id=own)

    def _check_open(self) -> None:
        if self.phase is Phase.CLOSED:
            raise LocalProtocolError("nothing is sent on a closed connection")

    def _fail(self, reason: str) -> NoReturn:
        """The peer broke a rule that ends the link."""
        self.close()
        raise RemoteProtocolError(reason)


@lru_cache(maxsize=64)
def _parsed_put_users(payload: bytes) -> Any:
    """The body of a PUT_USERS request (only ever read, never changed). A fleet's terminals live
    by the hundred in one process and receive the same pushes: each is parsed once."""
    return parse_body(Frame(Command.PUT_USERS, payload))
