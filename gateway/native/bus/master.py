"""BusMaster: the gateway as master of one RS-485 bus: a session per address, greeted and polled.

A terminal on a bus never talks unless addressed. Every address has its own TerminalSession
talking through a BusLink, with the same handshake, pushes and pulls as on TCP; what a session
sends waits for its turn on the ``ExchangeLine``, which the ``BusPort`` carries. Events come in
through the session too: on a poll turn the master asks the session to POLL, and the session
stores what comes back and acknowledges it with the next POLL, as a TCP session acknowledges an
EVENTS batch. A terminal silent through every try is marked offline (its session closes) and
greeted again, less and less often, until it answers.
"""

import math
from collections import deque

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel

from gateway.native.bus.exchanges import Exchange, ExchangeLine
from gateway.native.bus.link import BusLink
from gateway.native.bus.port import BusPort
from gateway.native.bus.scheduler import Drop, PollScheduler
from gateway.native.bus.timing import LineTiming
from gateway.native.serial_port import open_serial
from gateway.native.session import SessionTiming
from protocol import RemoteError
from protocol.messages import Command

log = Logger(namespace="gateway.bus")


class BusMaster:
    poll_interval_s = 0.1  # an idle terminal is polled about this often, if the line allows:
    poll_share = 0.5  # polling every terminal never takes more than this share of the line
    events_per_poll = 32  # about 1 KB: a second of a 9,600-baud line
    # After a terminal went offline, greet it again after this many seconds, by sessions lost in a row.
    regreet_after = staticmethod(backoffPolicy(initialDelay=0.5, maxDelay=30, factor=2, jitter=lambda: 0))
    figures_s = 5.0  # utilisation and polls per second are averaged over this

    def __init__(self, bus, reactor, metrics, new_session, *, clock=None, open_port=open_serial):
        self.bus = bus
        self.name = bus.device
        self.clock = clock or reactor
        self._new_session = new_session
        self.timing = LineTiming(bus.baud, answer_within_s=bus.answer_within_ms / 1000)
        self.drops = [Drop(address, terminal_id) for address, terminal_id in bus.addresses]
        interval = max(self.poll_interval_s, len(self.drops) * self.timing.poll_s() / self.poll_share)
        self.scheduler = PollScheduler(self.drops, interval)
        self.port = BusPort(bus, reactor, self.clock, metrics, receiver=self, open_port=open_port)
        self.line = ExchangeLine(self.port, self.timing, self.scheduler, self.clock, metrics, master=self)
        self._session_timing = self._timing_for_sessions()
        self._stopping = False
        self._greetings: dict[Drop, object] = {}  # drop -> DelayedCall greeting it again
        self._polls = 0  # since the last figures
        self._bytes_counted = 0
        self._figures = task.LoopingCall(self._update_figures)
        self._figures.clock = self.clock
        self._polls_metric = metrics.bus_polls.labels(self.name)
        self._utilisation = metrics.bus_utilisation.labels(self.name)
        self._polls_per_s = metrics.bus_polls_per_second.labels(self.name)

    def _timing_for_sessions(self) -> SessionTiming:
        """Sessions leave timing to the line, which closes a silent terminal's session itself.

        Their own timers would count the time a request waits for the line, so they only back
        the line up, set to the slowest wait this bus allows: every address with a TCP session's
        window of largest exchanges queued, each tried every time. The line queues every request
        itself, so a window as deep as the session's queue hands it all (a poll can overtake a
        push). The polls keep the session alive: the terminal hears one every poll interval, or
        after the longest exchange another address may hold the line for; told this, it notices
        a gateway that is gone within minutes, not after the session's whole patience (hours).
        """
        default = SessionTiming()
        patience_s = len(self.drops) * default.window * (1 + ExchangeLine.retries) * self.timing.longest_exchange_s()
        heard_within_s = max(10 * self.scheduler.poll_interval_s, self.timing.longest_exchange_s() / 2, 30)
        return SessionTiming(handshake_s=patience_s, request_s=patience_s, window=default.max_waiting,
                             keepalive_s=min(0xFFFF, math.ceil(heard_within_s)))

    # -- the port ----------------------------------------------------------------------------

    def start(self) -> None:
        self._figures.start(self.figures_s, now=False)
        self.port.start()

    def stop(self) -> defer.Deferred:
        """Close every session and the port; fires once the port is closed."""
        self._stopping = True
        if self._figures.running:
            self._figures.stop()
        for timer in self._greetings.values():
            if timer.active():
                timer.cancel()
        self.line.stop()
        for drop in self.drops:
            if drop.session is not None:
                drop.session.close("gateway stopping")
        return self.port.stop()

    def port_opened(self) -> None:
        log.info("bus {bus} open at {baud} baud, polling addresses {addresses}",
                 bus=self.name, baud=self.bus.baud, addresses=", ".join(str(d.address) for d in self.drops))
        for drop in self.drops:
            self._greet(drop)

    def port_lost(self, reason: str) -> None:
        self.line.abandon()
        for drop in self.drops:  # every address is greeted afresh when the port reopens
            self._cancel_greeting(drop)
        for drop in self.drops:
            if drop.session is not None:
                drop.session.close(f"serial port closed ({reason})")

    def frame_received(self, frame) -> None:
        self.line.frame_received(frame)

    def bytes_arriving(self) -> None:
        self.line.bytes_arriving()

    # -- addresses ---------------------------------------------------------------------------

    def greet_now(self, terminal_id: int) -> None:
        """An administrator admitted ``terminal_id``: greet the offline addresses it may be at
        now, rather than when their backoff runs out."""
        for drop in self.drops:
            if drop.session is None and drop.terminal_id in (None, terminal_id) and self.port.is_open:
                self._greet(drop)

    def _greet(self, drop: Drop) -> None:
        """A new session at this address; like every session, it starts with the gateway's HELLO."""
        if drop.session is not None:
            drop.session.close("greeted again")  # which schedules a greeting of its own: cancelled next
        self._cancel_greeting(drop)
        link = BusLink(self, drop)
        session = self._new_session(link, drop.terminal_id, self._session_timing)
        drop.link, drop.session = link, session
        drop.online = drop.committing = drop.paused = False
        session.start()

    def _cancel_greeting(self, drop: Drop) -> None:
        timer = self._greetings.pop(drop, None)
        if timer is not None and timer.active():
            timer.cancel()

    def queue(self, link: BusLink, drop: Drop, frame) -> None:
        """A session sent a frame: it waits for its turn on the line."""
        if drop.link is link:
            drop.frames.append(frame)
            self.line.wake()

    def wake(self) -> None:
        self.line.wake()

    def link_closed(self, link: BusLink, drop: Drop, reason: str) -> None:
        if drop.link is link:
            self._offline(drop, reason)

    def _offline(self, drop: Drop, reason: str) -> None:
        drop.link = drop.session = None
        drop.online = False
        # An error reply (a refusal) still goes out; requests would have nobody to read their answer.
        drop.frames = deque(f for f in drop.frames if f.is_response)
        if self._stopping or not self.port.is_open:
            return
        delay = self.regreet_after(drop.failures)
        # Said once when a terminal goes; an empty address probed every 30 s is not news.
        log.emit(LogLevel.debug if drop.failures else LogLevel.info,
                 "bus {bus}: address {address} offline ({reason}); greeting it again in {delay:g} s",
                 bus=self.name, address=drop.address, reason=reason, delay=delay)
        drop.failures += 1
        self._greetings[drop] = self.clock.callLater(delay, self._greet, drop)

    # -- what the line reports ---------------------------------------------------------------

    def answered(self, exchange: Exchange, frame) -> None:
        drop = exchange.drop
        session = drop.session
        if session is not None and drop.link is exchange.link:
            session.frame_received(frame)
            if session.established and not drop.online and drop.session is session:
                drop.online = True
                drop.failures = 0
                drop.next_poll_at = self.clock.seconds()

    def silent(self, exchange: Exchange) -> None:
        drop = exchange.drop
        session = drop.session
        if session is not None and drop.link is exchange.link:
            # For the session this is its link going away, as when a TCP connection drops.
            reason = f"silent on the bus: {Command(exchange.frame.command).name} sent {exchange.tries}x without an answer"
            self._offline(drop, reason)
            session.connection_lost(reason)

    # -- events ------------------------------------------------------------------------------

    def poll(self, drop: Drop) -> None:
        """A poll turn: the session asks for events; none until they are stored (only a stored
        id may be acknowledged by the next poll)."""
        session = drop.session
        self._polls_metric.inc()
        self._polls += 1
        drop.committing = True
        d = session.poll(self.events_per_poll)
        d.addCallbacks(self._polled, self._poll_failed, callbackArgs=(drop, session), errbackArgs=(drop, session))

    def _polled(self, count: int, drop: Drop, session) -> None:
        if drop.session is session:
            drop.committing = False
            if count:
                drop.next_poll_at = self.clock.seconds()  # a terminal with events may well have more
            self.line.wake()

    def _poll_failed(self, failure, drop: Drop, session) -> None:
        if drop.session is not session:
            return
        drop.committing = False
        # Silence is the line's business (it closes the session); an error reply means the
        # terminal lost its session, a reboot say: greet it again.
        if failure.check(RemoteError):
            session.close(f"POLL refused: {failure.getErrorMessage()}")

    # -- figures -----------------------------------------------------------------------------

    def _update_figures(self) -> None:
        moved, self._bytes_counted = self.port.bytes_moved - self._bytes_counted, self.port.bytes_moved
        self._utilisation.set(self.timing.tx_s(moved) / self.figures_s)
        self._polls_per_s.set(self._polls / self.figures_s)
        self._polls = 0
