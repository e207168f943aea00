"""TerminalSession: the gateway's side of one terminal's conversation over one link.

It does the handshake (challenge-response, admission), numbers requests and matches their
answers with timeouts, keeps a bounded window of outstanding requests, answers keepalives and
closes a link whose peer went silent. It does not know whether its link is a TCP connection or
an address on an RS-485 bus: a link is anything with ``write``, ``close``, ``pause``,
``resume``, ``address``, ``description`` and ``request_bytes`` (how big a request to the
terminal may be).
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from protocol import auth
from protocol.errors import ErrorCode, FrameError, MessageError, ProtocolError, RemoteError
from protocol.frame import PROTOCOL_VERSION, Flags, Frame, encode_frame
from protocol.messages import Command, build_body, error_response, parse_body, response

log = Logger(namespace="gateway.session")


class SessionClosed(ProtocolError):
    """The link went away before the terminal answered."""


class RequestTimeout(ProtocolError):
    pass


class Refused(ProtocolError):
    """A terminal the gateway will not talk to; ``code`` goes back to it in an error reply."""

    def __init__(self, code: ErrorCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TerminalSession:
    handshake_timeout = 10.0
    request_timeout = 15.0
    window = 8  # requests the gateway may have outstanding on one link
    max_waiting = 1024  # requests queued behind a full window before new ones are refused
    keepalive_s = 30
    frame_errors_per_minute = 10

    def __init__(self, link, gateway, clock, expected_terminal_id: int | None = None):
        self.link = link
        self.gateway = gateway
        self.clock = clock
        self.expected_terminal_id = expected_terminal_id
        self.terminal_id: int | None = None
        self.established = False
        self.closed = False
        self.hello: dict = {}
        self._seq = 0
        self._pending: dict[int, tuple[defer.Deferred, object]] = {}
        self._waiting: deque = deque()
        self._frame_errors: deque[float] = deque()
        self._last_rx = self._last_tx = clock.seconds()
        self._timers: list = []
        self._nonce = b""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """The link is up: the gateway speaks first (docs/protocol.md, "Session")."""
        self._nonce = auth.new_nonce()
        self._timers.append(self.clock.callLater(self.handshake_timeout, self._handshake_expired))
        body = build_body(Command.HELLO, False, dict(gateway_nonce=self._nonce, protocol_version=PROTOCOL_VERSION))
        self._send_request(Command.HELLO, body).addCallback(self._on_hello).addErrback(self._handshake_failed)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        log.info("{who}: closing link {link}: {reason}", who=self.name, link=self.link.description, reason=reason)
        self.link.close(reason)
        self.connection_lost(reason)

    def connection_lost(self, reason: str = "link closed") -> None:
        if self.closed:
            return
        self.closed = True
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        pending, self._pending = self._pending, {}
        waiting, self._waiting = self._waiting, deque()
        for d, timer in pending.values():
            timer.cancel()
            d.errback(SessionClosed(f"{self.name}: link closed ({reason})"))
        for _, _, d in waiting:
            d.errback(SessionClosed(f"{self.name}: link closed ({reason})"))
        if self.established:
            self.gateway.session_ended(self)

    @property
    def name(self) -> str:
        return f"terminal {self.terminal_id}" if self.terminal_id is not None else f"link {self.link.description}"

    # -- receiving ---------------------------------------------------------------------------

    def frame_received(self, frame: Frame) -> None:
        if self.closed:
            return
        self._last_rx = self.clock.seconds()
        if frame.is_response:
            self._response_received(frame)
        else:
            self._request_received(frame)

    def frame_error(self, error: FrameError) -> None:
        self.gateway.metrics.frame_errors.inc()
        if not self.established:
            self.close(f"corrupt data before authentication ({error})")
            return
        now = self.clock.seconds()
        self._frame_errors.append(now)
        while self._frame_errors and self._frame_errors[0] < now - 60:
            self._frame_errors.popleft()
        log.warn("{who}: corrupt frame skipped: {error}", who=self.name, error=error)
        if len(self._frame_errors) > self.frame_errors_per_minute:
            self.close(f"more than {self.frame_errors_per_minute} corrupt frames in a minute")

    def _response_received(self, frame: Frame) -> None:
        entry = self._pending.pop(frame.seq, None)
        if entry is None:
            log.warn("{who}: answer to no outstanding request (seq {seq}) ignored", who=self.name, seq=frame.seq)
            return
        d, timer = entry
        timer.cancel()
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
        if frame.command == Command.KEEPALIVE:
            self._write(response(frame))
        elif not self.established:
            self._write(error_response(frame, ErrorCode.NOT_AUTHENTICATED, "handshake not finished"))
        elif frame.command == Command.EVENTS:
            try:
                batch = parse_body(frame).events
            except MessageError as exc:
                self._write(error_response(frame, ErrorCode.BAD_MESSAGE, str(exc)))
                return
            self.gateway.events_received(self, list(batch)).addCallback(self._ack_events, frame)
        else:
            self._write(error_response(frame, ErrorCode.UNKNOWN_COMMAND, f"command 0x{frame.command:02X} is not accepted from a terminal"))

    def _ack_events(self, ack_through: int, frame: Frame) -> None:
        if not self.closed:
            self._write(response(frame, dict(ack_through=ack_through)))

    # -- requesting --------------------------------------------------------------------------

    def request(self, command: Command, body: dict | None = None, payload: bytes | None = None) -> defer.Deferred:
        """Send a request; fires with the parsed answer, or fails with RemoteError/RequestTimeout/SessionClosed."""
        if payload is None:
            payload = build_body(command, False, body or {})
        return self._send_request(command, payload).addCallback(parse_body)

    def _send_request(self, command: Command, payload: bytes) -> defer.Deferred:
        d = defer.Deferred()
        if self.closed:
            d.errback(SessionClosed(f"{self.name}: link closed"))
        elif len(self._pending) < self.window:
            self._transmit(command, payload, d)
        elif len(self._waiting) < self.max_waiting:
            self._waiting.append((command, payload, d))
        else:
            d.errback(ProtocolError(f"{self.name}: {self.max_waiting} requests already waiting"))
        return d

    def _send_waiting(self) -> None:
        while self._waiting and len(self._pending) < self.window and not self.closed:
            self._transmit(*self._waiting.popleft())

    def _transmit(self, command: Command, payload: bytes, d: defer.Deferred) -> None:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        timer = self.clock.callLater(self.request_timeout, self._expire, seq, command)
        self._pending[seq] = (d, timer)
        frame = Frame(command, payload, Flags.REQUEST, self.terminal_id or 0, seq, self.link.address)
        self._write(encode_frame(frame))

    def _expire(self, seq: int, command: Command) -> None:
        entry = self._pending.pop(seq, None)
        if entry:
            self._send_waiting()
            entry[0].errback(RequestTimeout(f"{self.name}: {command.name} unanswered after {self.request_timeout:g} s"))

    def _write(self, data: bytes) -> None:
        self._last_tx = self.clock.seconds()
        self.link.write(data)

    # -- handshake ---------------------------------------------------------------------------

    def _on_hello(self, frame: Frame):
        hello = parse_body(frame)
        terminal_id = frame.terminal_id
        registry = self.gateway.registry
        try:
            if self.expected_terminal_id is not None and terminal_id != self.expected_terminal_id:
                raise Refused(ErrorCode.UNKNOWN_TERMINAL, f"expected terminal {self.expected_terminal_id} here, not {terminal_id}")
            secret = registry.admit(terminal_id, hello, self.link.description)
            expected = auth.terminal_proof(secret, terminal_id, self._nonce, hello.terminal_nonce)
            if not auth.proofs_match(expected, hello.proof):
                raise Refused(ErrorCode.AUTH_FAILED, "wrong proof: the terminal does not hold the configured secret")
        except Refused as refusal:
            self.gateway.metrics.refused.labels(refusal.code.name.lower()).inc()
            log.warn(
                "refused terminal {tid} on {link}: {reason}", tid=terminal_id, link=self.link.description, reason=refusal.reason
            )
            self._write(error_response(frame, refusal.code, refusal.reason))
            self.close(f"refused: {refusal.reason}")
            return
        self.terminal_id = terminal_id
        self.hello = dict(model=hello.model, firmware=hello.firmware, max_users=hello.max_users)
        d = self.gateway.last_stored_event_id(terminal_id)
        d.addCallback(self._send_welcome, secret, hello.terminal_nonce)
        d.addErrback(self._handshake_failed)

    def _send_welcome(self, ack_through: int, secret: bytes, terminal_nonce: bytes):
        body = dict(
            proof=auth.gateway_proof(secret, self.terminal_id, self._nonce, terminal_nonce),
            server_time_ms=int(self.clock.seconds() * 1000),
            keepalive_s=self.keepalive_s,
            ack_through=ack_through,
        )
        return self.request(Command.WELCOME, body).addCallback(self._on_welcome)

    def _on_welcome(self, _):
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = [self.clock.callLater(self.keepalive_s / 3, self._keepalive_tick)]
        self.established = True
        log.info(
            "terminal {tid} connected on {link} ({model}, firmware {fw})",
            tid=self.terminal_id, link=self.link.description, model=self.hello["model"], fw=self.hello["firmware"],
        )
        self.gateway.session_established(self)

    def _handshake_failed(self, failure):
        if not self.closed:
            self.close(f"handshake failed: {failure.getErrorMessage()}")

    def _handshake_expired(self):
        self.close(f"no handshake within {self.handshake_timeout:g} s")

    # -- liveness ----------------------------------------------------------------------------

    def _keepalive_tick(self) -> None:
        now = self.clock.seconds()
        if now - self._last_rx >= 3 * self.keepalive_s:
            self.close(f"nothing received for {now - self._last_rx:.0f} s: terminal gone")
            return
        if now - self._last_tx >= self.keepalive_s:
            self.request(Command.KEEPALIVE).addErrback(lambda _: None)  # silence is judged by _last_rx
        self._timers = [self.clock.callLater(self.keepalive_s / 3, self._keepalive_tick)]
