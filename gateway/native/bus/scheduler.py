"""PollScheduler: who gets the bus next.

Only one request may be on a half-duplex line at a time, so the master asks the scheduler for
every turn. A turn is a *poll* (ask an established terminal for its events) or a *send* (a frame
a session queued: a handshake, a push, a pull). A poll that is due goes first, but between two
sends each terminal is polled at most once; sends go round the addresses that have something
queued. So a terminal with pending work gets more of the line, every terminal is polled at least
once per send however large the frames, and a storm of events at one terminal cannot keep the
line from the others. The master chooses the poll interval so that polling alone never takes
more than a set share of the line.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

SEND = "send"
POLL = "poll"


@dataclass(eq=False)
class Drop:
    """One address on a bus and the state of the terminal there."""

    address: int
    terminal_id: int | None = None  # pinned by the configuration; None: any admitted terminal
    frames: deque = field(default_factory=deque)  # frames its session sent, waiting for the line, in order
    online: bool = False  # its session is established
    paused: bool = False  # the event log asked links to stop bringing events (backpressure)
    committing: bool = False  # a poll is under way until its events are stored: the next must acknowledge them
    next_poll_at: float = 0.0
    failures: int = 0  # sessions lost in a row without being established: how far greetings back off
    session: object | None = None
    link: object | None = None

    @property
    def pollable(self) -> bool:
        return self.online and not self.paused and not self.committing


class Turn(NamedTuple):
    drop: Drop
    kind: str  # SEND or POLL


class PollScheduler:
    def __init__(self, drops: list[Drop], poll_interval_s: float):
        self.drops = drops
        self.poll_interval_s = poll_interval_s  # a terminal is polled no more often than this
        self._next_sender = 0
        self._polled_since_send: set[int] = set()  # addresses

    def next_turn(self, now: float) -> Turn | float | None:
        """The next use of the line; or, when none is due, the time to ask again (None: nothing
        will be due until a session queues a frame or a drop changes state)."""
        sender = self._sender()
        poll = self._due_poll(now, sends_waiting=sender is not None)
        if poll is not None:
            self._polled_since_send.add(poll.address)
            poll.next_poll_at = now + self.poll_interval_s
            return Turn(poll, POLL)
        if sender is not None:
            self._polled_since_send.clear()
            self._next_sender = (self.drops.index(sender) + 1) % len(self.drops)
            return Turn(sender, SEND)
        waiting = [d.next_poll_at for d in self.drops if d.pollable]
        return min(waiting) if waiting else None

    def _sender(self) -> Drop | None:
        count = len(self.drops)
        for i in range(count):
            drop = self.drops[(self._next_sender + i) % count]
            if drop.frames:
                return drop
        return None

    def _due_poll(self, now: float, sends_waiting: bool) -> Drop | None:
        due = [
            d for d in self.drops
            if d.pollable and d.next_poll_at <= now and not (sends_waiting and d.address in self._polled_since_send)
        ]
        return min(due, key=lambda d: d.next_poll_at) if due else None
