"""A simulated terminal on TCP, both directions: dialling in to a gateway, or listening for one.

``TerminalLink`` carries one connection. It answers the gateway's requests through the
terminal, and after the handshake streams the terminal's events in EVENTS batches (at most
``batch_size`` events, at most ``window`` batches unacknowledged), forgetting events only when
the gateway acknowledges them. What was not acknowledged is sent again on the next connection,
from where the WELCOME says the gateway's durable log ends. The rules (handshake and its
deadline, sequence numbers, answers, the keepalive rule) are the terminal's
``protocol.connection.Connection``'s, as on the gateway's side; this class is its I/O.

``Faults`` makes a link misbehave the way field terminals do (a slow reader, line noise between
frames); the load test's scenarios use it to show that one bad terminal does not hurt the others.
"""

import random
from dataclasses import dataclass

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol, task, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.logger import Logger

from protocol.connection import Phase
from protocol.connection_events import Answer, Corrupt, Established, KeepaliveDue, Rejected, Stray
from protocol.errors import ErrorCode, MessageError, RemoteProtocolError
from protocol.frame import Frame, encode_frame
from protocol.messages import MAX_BATCH_EVENTS, NOTICE_SEQ, Command, parse_body
from simulator.liveness import LivenessChecks, checks_for

log = Logger(namespace="simulator")

# A terminal refused as unknown or pending dials again after at most this long, not its full
# backoff: an administrator admitting it should see it online within seconds (docs/protocol.md).
ADMISSION_RETRY_S = 5.0


@dataclass(frozen=True)
class Faults:
    """How a link misbehaves. The defaults are a healthy link."""

    read_duty: float = 1.0  # share of each read period the link reads; the rest it leaves unread
    read_period_s: float = 1.0
    garbage_every_s: float = 0.0  # write a few random bytes between frames this often (0: never)
    seed: int = 0

    @property
    def slow(self) -> bool:
        return self.read_duty < 1.0


class TerminalLink(protocol.Protocol):
    batch_size = MAX_BATCH_EVENTS
    window = 4
    handshake_s = 30.0  # a link with no finished handshake by then is dropped and dialled again (docs/protocol.md)

    def __init__(self, terminal, on_established=None, faults: Faults | None = None):
        self.terminal = terminal
        self.on_established = on_established
        self.faults = faults or Faults()
        self.garbage_sent = 0
        self._rng = random.Random(f"{self.faults.seed}/{terminal.terminal_id}")
        self._fault_timers: list[task.LoopingCall] = []
        self.established = False
        self._connection = terminal.connection  # this link's: the terminal's own from connectionMade on
        self._batches_in_flight = 0
        self._sent_through = 0  # highest event id sent on this connection
        self._held: list[bytes] | None = None  # within dataReceived: frames (and events) wait for its end
        self._liveness: LivenessChecks | None = None  # what checks the keepalive rule, once established
        self._handshake_timer = None
        self._why_closed: str | None = None  # said by this side when it closes the link itself

    @property
    def clock(self):
        return self.factory.reactor

    def connectionMade(self):
        self.terminal.link_lost(now=self.clock.seconds(), handshake_s=self.handshake_s)
        self._connection = self.terminal.connection
        self.factory.link = self
        self._handshake_timer = self.clock.callLater(self.handshake_s, self._tick)
        if self.faults.slow:
            self._every(self.faults.read_period_s, self._read_slowly)

    def dataReceived(self, data: bytes):
        if not self._connection_open:
            return  # dropped for silence or a slow handshake; the transport is going
        now = self.clock.seconds()
        # Events the requests in this data log (a push of many users) are reported after the
        # answers, in as few batches as they fill, not one batch per event; the answers and the
        # batches go to the kernel together, in one write.
        self._held = []
        try:
            for event in self._connection.receive_data(data, now=now):
                kind = type(event)
                if kind is Answer or kind is Stray:
                    self._answer_received(event)
                elif kind is Corrupt:
                    if event.counted:
                        log.warn("terminal {tid}: corrupt frame from the gateway skipped: {e}", tid=self.terminal.terminal_id, e=event.error)
                elif kind is not Rejected or event.reply is not None:  # an answer naming another terminal answers nothing
                    reply = self.terminal.respond(event, now)
                    if reply is not None:
                        self._write(encode_frame(reply))
                    if kind is Established:
                        self._established()
            self.send_events()
        finally:
            self._send_held()

    def _write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            send_now(self.transport, data)

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held:
            send_now(self.transport, b"".join(held))

    @property
    def _connection_open(self) -> bool:
        return self._connection is self.terminal.connection and self._connection.phase is not Phase.CLOSED

    def _tick(self) -> None:
        """What time says: a handshake not ended in time, a silent gateway (the link is dropped
        and dialled again), a keepalive due."""
        if not self._connection_open:
            return
        try:
            events = self._connection.tick(now=self.clock.seconds())
        except RemoteProtocolError as exc:
            self._why_closed = str(exc)
            log.warn("terminal {tid}: {why}; dropping the link", tid=self.terminal.terminal_id, why=exc)
            self.transport.abortConnection()
            return
        if any(isinstance(event, KeepaliveDue) for event in events):
            self._request(Command.KEEPALIVE, {})

    def connectionLost(self, reason=protocol.connectionDone):
        why = self._why_closed or reason.getErrorMessage()
        if not self.established:
            why = f"link lost before the handshake ended: {why}"
        self.established = False
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        if self._liveness is not None:
            self._liveness.discard(self._tick)
        for timer in self._fault_timers:
            if timer.running:
                timer.stop()
        _forget(self.terminal.listeners, self._event_logged)
        _forget(self.terminal.rewind_listeners, self._rewind)
        if self._connection is self.terminal.connection:  # not when a newer link of this terminal took over
            self.terminal.link_lost()
        if self.factory.link is self:
            self.factory.link = None
            self.factory.link_dropped(why)

    # -- after the handshake -----------------------------------------------------------------

    def _established(self) -> None:
        if self.established:
            return  # a WELCOME replayed on a live link changes nothing (and must not double the timers)
        self.established = True
        self.factory.authenticated()
        if self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._sent_through = self.terminal.acked_through
        self.terminal.listeners.append(self._event_logged)
        self.terminal.rewind_listeners.append(self._rewind)
        self._liveness = checks_for(self.clock, max(self._connection.liveness_check_s, 0.1))
        self._liveness.add(self._tick)
        if self.faults.garbage_every_s:
            # Only after the handshake: before it, the gateway rightly drops a link that sends garbage.
            self._every(self.faults.garbage_every_s, self._write_garbage)
        self.send_events()
        if self.on_established is not None:
            self.on_established(self)

    def _event_logged(self, _event) -> None:
        if self._held is None:
            self.send_events()

    def _rewind(self, after_event_id: int) -> None:
        self._sent_through = min(self._sent_through, max(after_event_id, self.terminal.acked_through))
        self.send_events()

    def send_events(self) -> None:
        """Fill the window with batches of events the gateway has not been sent on this link."""
        while self.established and self._batches_in_flight < self.window:
            batch = self.terminal.events_after(self._sent_through, self.batch_size)
            if not batch:
                return
            self._sent_through = batch[-1].event_id
            self._batches_in_flight += 1
            self._request(Command.EVENTS, dict(events=batch))

    def _answer_received(self, event: Answer | Stray) -> None:
        frame = event.frame
        answered = event.request if type(event) is Answer else None
        if frame.is_error:
            text = _error_text(frame)
            self._why_closed = f"the gateway answered an error: {text}"
            if answered is None and frame.seq == NOTICE_SEQ and _error_code(frame) == ErrorCode.REPLACED:
                log.info("terminal {tid}: this link was replaced by a newer one: {text}", tid=self.terminal.terminal_id, text=text)
            elif answered is None and frame.command == Command.HELLO:
                log.warn("terminal {tid}: refused by the gateway: {text}", tid=self.terminal.terminal_id, text=text)
                self.factory.refused(_error_code(frame))
            else:
                log.warn("terminal {tid}: gateway answered an error: {text}; reconnecting", tid=self.terminal.terminal_id, text=text)
            self._send_held()  # what was answered before it still goes, ahead of the close
            self.transport.loseConnection()
            return
        if answered is not None and answered.command == Command.EVENTS:
            self._batches_in_flight -= 1
            self.terminal.acknowledge(parse_body(frame).ack_through)
            self.send_events()

    def _request(self, command: Command, body: dict) -> None:
        # Requests have no deadline of their own here: an acknowledgement waits for the gateway's
        # commit (a database outage), and a gateway that is gone is told by its silence.
        frame, _ = self._connection.request(command, body, now=self.clock.seconds())
        self._write(encode_frame(frame))

    # -- faults ------------------------------------------------------------------------------

    def _every(self, period_s: float, action) -> None:
        timer = task.LoopingCall(action)
        timer.clock = self.clock
        timer.start(period_s, now=False)
        self._fault_timers.append(timer)

    def _read_slowly(self) -> None:
        """Stop reading for the idle part of each period, so the gateway's sends back up."""
        self.transport.pauseProducing()
        idle_s = self.faults.read_period_s * (1 - self.faults.read_duty)
        self.clock.callLater(idle_s, self._resume_reading)

    def _resume_reading(self) -> None:
        if self.transport.connected:
            self.transport.resumeProducing()

    def _write_garbage(self) -> None:
        """Line noise: a few random bytes, written between two whole frames."""
        noise = self._rng.randbytes(self._rng.randint(1, 64))
        self.garbage_sent += 1
        self.transport.write(noise)


def send_now(transport, data: bytes) -> None:
    """Hand ``data`` to the kernel at once when nothing waits in the transport's buffer; what it
    does not take, and any write on another kind of transport (TLS, a test's), goes through
    ``transport.write`` behind it, in order.

    Twisted's ``write`` buffers, registers the socket for writing (a system call), sends on the
    reactor's next turn and unregisters it (another): for a fleet answering a push that was a
    tenth of its CPU (docs/loadtest.md, "The fleet's own cost"). The gateway does the same
    (gateway/native/tcp.py); the simulator is an independent peer and imports none of it.
    """
    # An aborted connection stays connected, and not disconnecting, until the reactor's next turn.
    if isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected and not transport.disconnecting \
            and not getattr(transport, "_aborting", False) and not transport.dataBuffer \
            and getattr(transport, "_tempDataBuffer", None) == []:
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):
            sent = 0  # the link failed: write() buffers it and the next turn finds the failure
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _forget(listeners: list, listener) -> None:
    if listener in listeners:
        listeners.remove(listener)


def _error_code(frame: Frame) -> int | None:
    try:
        return parse_body(frame).code
    except MessageError:
        return None


def _error_text(frame: Frame) -> str:
    try:
        body = parse_body(frame)
        return f"{body.text} (code {body.code})"
    except MessageError as exc:
        return str(exc)


class DialingTerminal(protocol.Factory):
    """A terminal that dials in to the gateway and keeps dialling back when the link drops.

    Twisted's ClientService redials with backoff and jitter, so a fleet that lost its gateway
    does not come back in step. The backoff restarts only once the terminal authenticated, not
    at every TCP connect (as ClientService would): a gateway that accepts and refuses at once
    (its doorman's limit on links still shaking hands) is not redialled twice a second by a
    thousand terminals. ``trouble`` says why a terminal that is not online is not.
    """

    noisy = False

    def __init__(self, terminal, reactor, host: str, port: int, on_established=None, faults: Faults | None = None, tls=None):
        """``tls``: client TLS options (simulator/tls.py) to dial with, or None for plain TCP."""
        self.terminal = terminal
        self.reactor = reactor
        self.on_established = on_established
        self.faults = faults
        self.link: TerminalLink | None = None
        self.dials = 0  # connections tried since the terminal last authenticated: the backoff grows with them
        self.trouble: str | None = None  # why the last dial did not end authenticated; None once one did
        self._redial = True
        self._policy = backoffPolicy(initialDelay=0.2, maxDelay=60.0, factor=2.0)  # a terminal's, docs/protocol.md
        self._awaiting_admission = False  # refused as unknown or pending: an administrator is expected to admit it
        endpoint = TCP4ClientEndpoint(reactor, host, port)
        self._endpoint = wrapClientTLS(tls, endpoint) if tls else endpoint
        self._service = ClientService(self, self, retryPolicy=self._retry_after, clock=reactor)

    def start(self) -> "DialingTerminal":
        self._service.startService()
        return self

    def buildProtocol(self, addr):
        link = TerminalLink(self.terminal, self.on_established, self.faults)
        link.factory = self
        return link

    def go_offline(self) -> defer.Deferred:
        """Unplug the network cable: drop the link and stop dialling; fires once it is dropped."""
        return self._service.stopService()

    def come_back(self) -> None:
        self._redial = True
        self._service.startService()

    def stop_redialling(self) -> None:
        """Keep the link that is up, but do not dial again once it drops (a terminal whose
        rebooted self is about to take its place)."""
        self._redial = False

    def connect(self, factory):
        """The endpoint ClientService dials through: the gateway's, counting dials and saying why one failed."""
        self.dials += 1
        return self._endpoint.connect(factory).addErrback(self._unreachable)

    def _unreachable(self, failure):
        self.trouble = f"cannot connect: {failure.getErrorMessage()}"
        return failure

    def _retry_after(self, _failed_in_a_row: int) -> float:
        wait = self._policy(self.dials)
        return min(wait, ADMISSION_RETRY_S) if self._awaiting_admission else wait

    def refused(self, code: int | None) -> None:
        """The gateway refused this terminal's HELLO: unknown or pending, it asks again soon, so
        that an administrator's admit lets it in within seconds (docs/protocol.md, "Handshake")."""
        self._awaiting_admission = code in (ErrorCode.UNKNOWN_TERMINAL, ErrorCode.PENDING_ADMISSION)

    def authenticated(self) -> None:
        self.dials = 0
        self.trouble = None
        self._awaiting_admission = False

    def link_dropped(self, why: str) -> None:
        self.trouble = why
        if not self._redial:
            self._service.stopService()


class ListeningTerminal(protocol.Factory):
    """A terminal the gateway dials out to. A new connection replaces the one before it."""

    def __init__(self, terminal, reactor, on_established=None, faults: Faults | None = None):
        self.terminal = terminal
        self.reactor = reactor
        self.on_established = on_established
        self.faults = faults
        self.link: TerminalLink | None = None
        self.port_number: int | None = None
        self._listening = None
        self._closed = None  # fires once the port is released after go_offline

    def listen(self, port: int, interface: str = "", tls=None) -> "ListeningTerminal":
        """``tls``: server TLS options (simulator/tls.py), or None for plain TCP."""
        if tls is None:
            self._listening = self.reactor.listenTCP(port, self, interface=interface)
        else:
            self._listening = self.reactor.listenSSL(port, self, tls, interface=interface)
        self.port_number, self._interface, self._tls = self._listening.getHost().port, interface, tls
        return self

    def buildProtocol(self, addr):
        if self.link is not None:
            self.link.transport.loseConnection()
        link = TerminalLink(self.terminal, self.on_established, self.faults)
        link.factory = self
        return link

    def authenticated(self) -> None:
        """Nothing to reset: the gateway dials."""

    def link_dropped(self, why: str) -> None:
        """The gateway's call ended; the next one is answered as it comes."""

    def refused(self, code: int | None) -> None:
        """The gateway dials this terminal: after a refusal it is the gateway that calls again."""

    def go_offline(self) -> None:
        """Unplug the network cable: drop the link and stop answering the gateway's calls."""
        if self._listening is not None:
            self._closed = self._listening.stopListening()
            self._listening = None
        if self.link is not None:
            self.link.transport.abortConnection()

    def stopped(self) -> defer.Deferred:
        """Fires once the port is released after ``go_offline``."""
        return self._closed if self._closed is not None else defer.succeed(None)

    def come_back(self) -> None:
        d = self._closed.addCallback(lambda _: self.listen(self.port_number, self._interface, self._tls))
        d.addErrback(lambda f: log.failure("terminal {tid} cannot listen again", f, tid=self.terminal.terminal_id))
