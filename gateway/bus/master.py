"""BusMaster: the gateway as master of one RS-485 bus.

A terminal on a bus never talks unless addressed, and only one may talk at a time. The master
sends one frame, waits for the addressed answer or its deadline (LineTiming), and only then gives
the line to the next turn the PollScheduler picks. Every address has its own TerminalSession
talking through a BusLink, with the same handshake, pushes and pulls as on TCP; events are
pulled with POLL, and the ack_through a POLL carries is only ever one the event log has
committed. An exchange that gets no answer is tried again; a terminal silent through every try
is marked offline (its session closes) and greeted again less and less often until it answers.
"""

import math
from collections import deque

from serial import SerialException
from twisted.internet import defer, protocol, task
from twisted.logger import Logger, LogLevel

from gateway.bus.link import BusLink
from gateway.bus.scheduler import POLL, Drop, PollScheduler, Turn
from gateway.bus.timing import LineTiming
from gateway.serial_port import open_serial
from gateway.session import TerminalSession
from protocol import Flags, Frame, RemoteError, StreamDecoder
from protocol.frame import HEADER_SIZE, FrameHeaderCompiled
from protocol.messages import Command

log = Logger(namespace="gateway.bus")


def _is_request(data: bytes) -> bool:
    return not FrameHeaderCompiled.parse(data[:HEADER_SIZE]).flags & Flags.RESPONSE


class _Exchange:
    """One frame on the line and, unless it is itself an answer, the answer it waits for."""

    def __init__(self, drop: Drop, data: bytes):
        header = FrameHeaderCompiled.parse(data[:HEADER_SIZE])
        self.drop = drop
        self.link = drop.link  # the answer is for this session, not one that replaced it meanwhile
        self.data = data
        self.seq = header.seq
        self.command = header.command
        self.wants_answer = not header.flags & Flags.RESPONSE
        self.tries = 0
        self.timer = None

    def answered_by(self, frame: Frame) -> bool:
        return (
            frame.is_response
            and frame.address == self.drop.address
            and frame.seq == self.seq
            and frame.command == self.command
        )


class BusMaster(protocol.Protocol):
    retries = 2  # tries after the first, for a terminal that was answering
    poll_interval_s = 0.1  # an idle terminal is polled about this often, if the line allows:
    poll_share = 0.5  # polling every terminal never takes more than this share of the line
    events_per_poll = 32  # about 1 KB: a second of a 9,600-baud line
    regreet_delays = (0.5, 1, 2, 5, 10, 30)  # after a terminal went offline, greet it again after...
    reopen_s = 5.0  # a port that could not be opened (an unplugged adapter) is tried again after
    figures_s = 5.0  # utilisation and polls per second are averaged over this

    def __init__(self, gateway, bus, open_port=open_serial):
        self.gateway = gateway
        self.bus = bus
        self.name = bus.device
        self.clock = gateway.clock
        self.timing = LineTiming(bus.baud, answer_within_s=bus.answer_within_ms / 1000)
        self.drops = [Drop(address, terminal_id) for address, terminal_id in bus.addresses]
        interval = max(self.poll_interval_s, len(self.drops) * self.timing.poll_s() / self.poll_share)
        self.scheduler = PollScheduler(self.drops, interval)
        # Sessions leave timing to the master, which closes a silent terminal's session itself.
        # Their own timers would count the time a request waits for the line, so they only back
        # the master up, set to the slowest wait this bus allows: every address with a TCP
        # session's window of largest exchanges queued, each tried every time.
        self._session_patience_s = (
            len(self.drops) * TerminalSession.window * (1 + self.retries) * self.timing.longest_exchange_s()
        )
        self._open_port = open_port
        self._decoder = StreamDecoder()
        self._exchange: _Exchange | None = None
        self._turn_call = None
        self._taking_turns = False
        self._quiet_until = 0.0
        self._echo_left = 0
        self._stopping = False
        self._stopped = None
        self._timers: dict = {}  # drop or "reopen" -> DelayedCall
        self._bytes = self._polls = 0  # since the last figures
        self._figures = task.LoopingCall(self._update_figures)
        self._figures.clock = self.clock
        m = gateway.metrics
        self._sent = m.bus_bytes.labels(self.name, "tx")
        self._received = m.bus_bytes.labels(self.name, "rx")
        self._polls_metric = m.bus_polls.labels(self.name)
        self._timeouts = m.bus_timeouts.labels(self.name)
        self._retries_metric = m.bus_retries.labels(self.name)
        self._crc_errors = m.bus_crc_errors.labels(self.name)
        self._utilisation = m.bus_utilisation.labels(self.name)
        self._polls_per_s = m.bus_polls_per_second.labels(self.name)

    # -- the port ----------------------------------------------------------------------------

    def start(self) -> None:
        self._figures.start(self.figures_s, now=False)
        self._open()

    def stop(self):
        """Close every session and the port; a Deferred that fires once the port is closed."""
        self._stopping = True
        if self._figures.running:
            self._figures.stop()
        for timer in [self._turn_call, *self._timers.values()]:
            if timer is not None and timer.active():
                timer.cancel()
        self._end_exchange()
        for drop in self.drops:
            if drop.session is not None:
                drop.session.close("gateway stopping")
        if self.transport is None:
            return defer.succeed(None)
        self._stopped = defer.Deferred()
        self.transport.loseConnection()
        return self._stopped

    def _open(self) -> None:
        self._timers.pop("reopen", None)
        try:
            self._open_port(self, self.bus, self.gateway.reactor)
        except (SerialException, OSError, ValueError) as exc:
            log.warn("bus {bus}: cannot open the port ({e}); trying again in {s:g} s", bus=self.name, e=exc, s=self.reopen_s)
            self._timers["reopen"] = self.clock.callLater(self.reopen_s, self._open)

    def connectionMade(self) -> None:
        log.info("bus {bus} open at {baud} baud, polling addresses {addresses}",
                 bus=self.name, baud=self.bus.baud, addresses=", ".join(str(d.address) for d in self.drops))
        for drop in self.drops:
            self._greet(drop)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.transport = None
        self._end_exchange()
        for drop in self.drops:  # every address is greeted afresh when the port reopens
            self._cancel_greeting(drop)
        for drop in self.drops:
            if drop.session is not None:
                drop.session.close(f"serial port closed ({reason.getErrorMessage()})")
        if self._stopping:
            if self._stopped is not None:
                self._stopped.callback(None)
            return
        log.warn("bus {bus}: port lost ({e}); reopening in {s:g} s", bus=self.name, e=reason.getErrorMessage(), s=self.reopen_s)
        self._timers["reopen"] = self.clock.callLater(self.reopen_s, self._open)

    # -- addresses ---------------------------------------------------------------------------

    def _greet(self, drop: Drop) -> None:
        """A new session at this address; like every session, it starts with the gateway's HELLO."""
        self._cancel_greeting(drop)
        if drop.session is not None:
            drop.session.close("greeted again")
        link = BusLink(self, drop)
        session = TerminalSession(link, self.gateway, self.clock, drop.terminal_id)
        # The master queues every request itself and puts one on the whole line at a time; a
        # window as deep as the session's queue hands it all, so a poll can overtake a push.
        session.window = session.max_waiting
        session.request_timeout = session.handshake_timeout = self._session_patience_s
        # The polls keep the session alive: the terminal hears one every poll interval, or after
        # the longest exchange another address may hold the line for. Told this, it notices a
        # gateway that is gone within minutes, not after the session's whole patience (hours).
        heard_within_s = max(10 * self.scheduler.poll_interval_s, self.timing.longest_exchange_s() / 2, 30)
        session.keepalive_s = min(0xFFFF, math.ceil(heard_within_s))
        drop.link, drop.session = link, session
        drop.online = drop.committing = drop.paused = False
        drop.ack_through = 0  # the WELCOME tells the terminal what is stored; 0 adds nothing to it
        session.start()

    def _cancel_greeting(self, drop: Drop) -> None:
        timer = self._timers.pop(drop, None)
        if timer is not None and timer.active():
            timer.cancel()

    def queue(self, link: BusLink, drop: Drop, data: bytes) -> None:
        """A session wrote a frame: it waits for its turn on the line."""
        if drop.link is link:
            drop.frames.append(data)
            self.wake()

    def link_closed(self, link: BusLink, drop: Drop, reason: str) -> None:
        if drop.link is link:
            self._offline(drop, reason)

    def _offline(self, drop: Drop, reason: str) -> None:
        drop.link = drop.session = None
        drop.online = False
        # An error reply (a refusal) still goes out; requests would have nobody to read their answer.
        drop.frames = deque(f for f in drop.frames if not _is_request(f))
        if self._stopping or self.transport is None:
            return
        delay = self.regreet_delays[min(drop.failures, len(self.regreet_delays) - 1)]
        # Said once when a terminal goes; an empty address probed every 30 s is not news.
        log.emit(LogLevel.debug if drop.failures else LogLevel.info,
                 "bus {bus}: address {address} offline ({reason}); greeting it again in {delay:g} s",
                 bus=self.name, address=drop.address, reason=reason, delay=delay)
        drop.failures += 1
        self._timers[drop] = self.clock.callLater(delay, self._greet, drop)

    def _online(self, drop: Drop) -> None:
        drop.online = True
        drop.failures = 0
        drop.next_poll_at = self.clock.seconds()

    # -- turns on the line -------------------------------------------------------------------

    def wake(self) -> None:
        """Something may be ready to go: make sure a turn is taken as soon as the line is free."""
        if self._exchange is not None or self._taking_turns or self.transport is None:
            return
        self._take_turn_at(max(self.clock.seconds(), self._quiet_until))

    def _take_turn_at(self, when: float) -> None:
        call = self._turn_call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._turn_call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._take_turns)

    def _take_turns(self) -> None:
        self._turn_call = None
        self._taking_turns = True
        try:
            while self._exchange is None and self.transport is not None:
                now = self.clock.seconds()
                if now < self._quiet_until:
                    self._take_turn_at(self._quiet_until)
                    return
                turn = self.scheduler.next_turn(now)
                if not isinstance(turn, Turn):
                    if turn is not None:
                        self._take_turn_at(turn)
                    return
                frames = turn.drop.frames
                if turn.kind == POLL:
                    queued = len(frames)
                    self._poll(turn.drop)
                    if len(frames) > queued:  # the poll goes before the requests queued earlier
                        self._transmit(_Exchange(turn.drop, frames.pop()))
                else:
                    self._transmit(_Exchange(turn.drop, frames.popleft()))
        finally:
            self._taking_turns = False

    def _transmit(self, exchange: _Exchange) -> None:
        exchange.tries += 1
        self._decoder = StreamDecoder()  # what is left of a broken answer must not swallow the next
        self.transport.write(exchange.data)
        self._sent.inc(len(exchange.data))
        self._bytes += len(exchange.data)
        if self.bus.echo:
            self._echo_left += len(exchange.data)
        if exchange.wants_answer:
            self._exchange = exchange
            exchange.timer = self.clock.callLater(self.timing.answer_deadline_s(len(exchange.data)), self._no_answer)
        else:
            self._quiet_until = self.clock.seconds() + self.timing.tx_s(len(exchange.data)) + self.timing.turnaround_s

    def _end_exchange(self) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None and exchange.timer.active():
            exchange.timer.cancel()

    def _no_answer(self) -> None:
        exchange = self._exchange
        self._timeouts.inc()
        drop = exchange.drop
        # A terminal that was answering gets retries; greeting one already offline is one try.
        if exchange.tries < (1 if drop.failures else 1 + self.retries):
            self._retries_metric.inc()
            self._transmit(exchange)
            return
        self._exchange = None
        session = drop.session
        if session is not None and drop.link is exchange.link:
            # For the session this is its link going away, as when a TCP connection drops.
            reason = f"silent on the bus: {Command(exchange.command).name} sent {exchange.tries}x without an answer"
            self._offline(drop, reason)
            session.connection_lost(reason)
        self.wake()

    # -- what comes back ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._echo_left:
            echoed = min(self._echo_left, len(data))
            self._echo_left -= echoed
            data = data[echoed:]
            if not data:
                return
        self._received.inc(len(data))
        self._bytes += len(data)
        exchange = self._exchange
        if exchange is not None:  # an answer is arriving: let it finish unless it stalls
            now = self.clock.seconds()
            exchange.timer.reset(max(exchange.timer.getTime(), now + self.timing.silence_s) - now)
        for item in self._decoder.feed(data):
            if isinstance(item, Frame):
                self._frame_received(item)
            else:
                self._crc_errors.inc()
                self.gateway.metrics.frame_errors.inc()
                log.debug("bus {bus}: corrupt data skipped: {e}", bus=self.name, e=item)

    def _frame_received(self, frame: Frame) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.answered_by(frame):
            # A late answer to an earlier try, or our own echo: the exchange it belonged to is over.
            log.debug("bus {bus}: frame from address {a} ignored (seq {seq}): not the answer awaited",
                      bus=self.name, a=frame.address, seq=frame.seq)
            return
        self._end_exchange()
        self._quiet_until = self.clock.seconds() + self.timing.turnaround_s
        drop = exchange.drop
        session = drop.session
        if session is not None and drop.link is exchange.link:
            session.frame_received(frame)
            if session.established and not drop.online and drop.session is session:
                self._online(drop)
        self.wake()

    # -- events ------------------------------------------------------------------------------

    def _poll(self, drop: Drop) -> None:
        session = drop.session
        self._polls_metric.inc()
        self._polls += 1
        d = session.request(Command.POLL, dict(ack_through=drop.ack_through, max_events=self.events_per_poll))
        d.addCallbacks(self._polled, self._poll_failed, callbackArgs=(drop, session), errbackArgs=(drop, session))

    def _polled(self, body, drop: Drop, session) -> None:
        if drop.session is not session or not body.events:
            return
        drop.committing = True  # no poll until the commit: only a committed id may be acknowledged
        drop.next_poll_at = self.clock.seconds()  # a terminal with events may well have more
        d = self.gateway.events_received(session, list(body.events))
        d.addCallback(self._committed, drop, session)

    def _committed(self, ack_through: int, drop: Drop, session) -> None:
        if drop.session is session:
            drop.ack_through = max(drop.ack_through, ack_through)
            drop.committing = False
            self.wake()

    def _poll_failed(self, failure, drop: Drop, session) -> None:
        # Silence is the master's business (it closes the session); an error reply means the
        # terminal lost its session, a reboot say: greet it again.
        if failure.check(RemoteError) and drop.session is session:
            session.close(f"POLL refused: {failure.getErrorMessage()}")

    # -- figures -----------------------------------------------------------------------------

    def _update_figures(self) -> None:
        self._utilisation.set(self.timing.tx_s(self._bytes) / self.figures_s)
        self._polls_per_s.set(self._polls / self.figures_s)
        self._bytes = self._polls = 0

