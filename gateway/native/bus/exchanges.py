"""ExchangeLine: one frame on a half-duplex line at a time, and the answer it waits for.

Only one station may talk on an RS-485 bus. The line sends one frame, waits for the addressed
answer or its deadline (LineTiming), tries again, and only then takes the next turn the
PollScheduler picks. A poll turn asks the master for a POLL, which goes before the requests
queued earlier at that address. What an answer or a silence means for a terminal is the
master's business (``answered`` and ``silent``); the line only keeps the turns.
"""

from twisted.logger import Logger

from gateway.native.bus.scheduler import POLL, Drop, Turn
from protocol import Frame
from protocol.conversation import answers

log = Logger(namespace="gateway.bus")


class Exchange:
    """One frame on the line and, unless it is itself an answer, the answer it waits for."""

    def __init__(self, drop: Drop, frame: Frame):
        self.drop = drop
        self.link = drop.link  # the answer is for this session, not one that replaced it meanwhile
        self.frame = frame
        self.wants_answer = not frame.is_response
        self.tries = 0
        self.timer = None

    def answered_by(self, frame: Frame) -> bool:
        return frame.address == self.drop.address and answers(frame, self.frame)


class ExchangeLine:
    retries = 2  # tries after the first, for a terminal that was answering

    def __init__(self, port, timing, scheduler, clock, metrics, master):
        self._port = port
        self._timing = timing
        self._scheduler = scheduler
        self._clock = clock
        self._master = master  # poll(drop), answered(exchange, frame), silent(exchange)
        self._exchange: Exchange | None = None
        self._turn_call = None
        self._taking_turns = False
        self._quiet_until = 0.0
        self._timeouts = metrics.bus_timeouts.labels(port.name)
        self._retries_metric = metrics.bus_retries.labels(port.name)

    def wake(self) -> None:
        """Something may be ready to go: take a turn as soon as the line is free."""
        if self._exchange is not None or self._taking_turns or not self._port.is_open:
            return
        self._take_turn_at(max(self._clock.seconds(), self._quiet_until))

    def stop(self) -> None:
        if self._turn_call is not None and self._turn_call.active():
            self._turn_call.cancel()
        self.abandon()

    def abandon(self) -> None:
        """Forget the exchange on the line (the port went away)."""
        exchange, self._exchange = self._exchange, None
        if exchange is not None and exchange.timer.active():
            exchange.timer.cancel()

    # -- turns -------------------------------------------------------------------------------

    def _take_turn_at(self, when: float) -> None:
        call = self._turn_call
        if call is not None and call.active():
            if call.getTime() <= when:
                return
            call.cancel()
        self._turn_call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._take_turns)

    def _take_turns(self) -> None:
        self._turn_call = None
        self._taking_turns = True
        try:
            while self._exchange is None and self._port.is_open:
                now = self._clock.seconds()
                if now < self._quiet_until:
                    self._take_turn_at(self._quiet_until)
                    return
                turn = self._scheduler.next_turn(now)
                if not isinstance(turn, Turn):
                    if turn is not None:
                        self._take_turn_at(turn)
                    return
                frames = turn.drop.frames
                if turn.kind == POLL:
                    queued = len(frames)
                    self._master.poll(turn.drop)
                    if len(frames) > queued:  # the poll goes before the requests queued earlier
                        self._transmit(Exchange(turn.drop, frames.pop()))
                else:
                    self._transmit(Exchange(turn.drop, frames.popleft()))
        finally:
            self._taking_turns = False

    def _transmit(self, exchange: Exchange) -> None:
        exchange.tries += 1
        size = self._port.write(exchange.frame)
        if exchange.wants_answer:
            self._exchange = exchange
            exchange.timer = self._clock.callLater(self._timing.answer_deadline_s(size), self._no_answer)
        else:
            self._quiet_until = self._clock.seconds() + self._timing.tx_s(size) + self._timing.turnaround_s

    def _no_answer(self) -> None:
        exchange = self._exchange
        self._timeouts.inc()
        # A terminal that was answering gets retries; greeting one already offline is one try.
        if exchange.tries < (1 if exchange.drop.failures else 1 + self.retries):
            self._retries_metric.inc()
            self._transmit(exchange)
            return
        self._exchange = None
        self._master.silent(exchange)
        self.wake()

    # -- what comes back ---------------------------------------------------------------------

    def bytes_arriving(self) -> None:
        """An answer is arriving: let it finish unless it stalls."""
        exchange = self._exchange
        if exchange is not None:
            now = self._clock.seconds()
            exchange.timer.reset(max(exchange.timer.getTime(), now + self._timing.silence_s) - now)

    def frame_received(self, frame: Frame) -> None:
        exchange = self._exchange
        if exchange is None or not exchange.answered_by(frame):
            # A late answer to an earlier try, or our own echo: the exchange it belonged to is over.
            log.debug("bus {bus}: frame from address {a} ignored (seq {seq}): not the answer awaited",
                      bus=self._port.name, a=frame.address, seq=frame.seq)
            return
        self.abandon()
        self._quiet_until = self._clock.seconds() + self._timing.turnaround_s
        self._master.answered(exchange, frame)
        self.wake()
