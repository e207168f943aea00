"""Conversation: the rules of one side of a framed conversation, with no I/O and no clock.

The gateway's session, the simulated terminal and ``gateway-check`` each own one. It numbers
requests, matches every answer to its request by sequence number *and* command, says which
requests have passed their deadline at a ``now`` it is given, and applies the keepalive rule
(docs/protocol.md, "Session"). Frames and times go in; frames, answers and expiries come out.
Who owns the I/O decides what to do with them (fire a Deferred, print a check, close a link).
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from protocol.frame import Flags, Frame
from protocol.messages import build_body

SEQ_MODULUS = 1 << 32
SILENT_PERIODS = 3  # a peer silent for this many keepalive periods is gone
_RESPONSE = int(Flags.RESPONSE)


def answers(frame: Frame, request) -> bool:
    """Whether ``frame`` answers ``request`` (a Frame sent, or its ``Outstanding``): a response
    echoing its sequence number and command. The one matching rule, here and on the bus line."""
    return bool(int(frame.flags) & _RESPONSE) and frame.seq == request.seq and frame.command == request.command


@dataclass(frozen=True, slots=True)
class Outstanding:
    """A request sent and not yet answered."""

    seq: int
    command: int
    deadline: float


class Liveness(Enum):
    OK = "ok"
    KEEPALIVE_DUE = "keepalive due"  # we have been quiet for a keepalive period: say something
    PEER_GONE = "peer gone"  # nothing heard for three periods


class Conversation:
    """One side's bookkeeping: sequence numbers, requests in flight with deadlines, liveness.

    ``terminal_id`` and ``address`` go into the header of every frame this side builds;
    the gateway learns the terminal id from HELLO's answer and sets it then.
    """

    def __init__(self, *, terminal_id: int = 0, address: int = 0, request_timeout_s: float = 15.0,
                 keepalive_s: float = 30.0, now: float = 0.0):
        self.terminal_id = terminal_id
        self.address = address
        self.request_timeout_s = request_timeout_s
        self.keepalive_s = keepalive_s
        self._seq = 0
        self._outstanding: dict[int, Outstanding] = {}
        self.last_received = self.last_sent = now

    # -- requests and answers ----------------------------------------------------------------

    def request(self, command: int, body: dict | None = None, *, payload: bytes | None = None,
                now: float) -> tuple[Frame, Outstanding]:
        """The frame to send for a new request and its entry among the outstanding ones.

        ``payload`` is a body already encoded (a push built from stored records); otherwise
        ``body`` is encoded here. MessageError if it cannot be.
        """
        if payload is None:
            payload = build_body(command, False, body or {})
        seq = self._next_seq()
        pending = Outstanding(seq, int(command), now + self.request_timeout_s)
        self._outstanding[seq] = pending
        return Frame(command, payload, Flags.REQUEST, self.terminal_id, seq, self.address), pending

    def answer(self, frame: Frame) -> Outstanding | None:
        """The request ``frame`` answers, no longer outstanding; None when it answers none of ours
        (a late answer to an expired request, a peer confused about what it was asked, or a frame
        naming another terminal once ``terminal_id`` is known)."""
        if self.terminal_id and frame.terminal_id != self.terminal_id:
            return None  # about another terminal: an answer echoes the request's terminal id
        pending = self._outstanding.get(frame.seq)
        if pending is None or not answers(frame, pending):
            return None
        return self._outstanding.pop(frame.seq)

    def expire(self, now: float, *, unread: Callable[[], bool] = lambda: False) -> list[Outstanding]:
        """Requests whose deadline has passed, oldest first; they are forgotten. While what the
        peer sent waits ``unread`` (asked only when a deadline has passed), a second timeout past
        it: its answer may be among those bytes, but a peer that keeps them coming cannot hold a
        request for ever."""
        late = [p for p in self._outstanding.values() if p.deadline <= now]
        if late and unread():
            late = [p for p in late if p.deadline + self.request_timeout_s <= now]
        for pending in late:
            del self._outstanding[pending.seq]
        return late

    def abandon(self) -> list[Outstanding]:
        """The link is gone: every outstanding request, which will never be answered."""
        gone, self._outstanding = list(self._outstanding.values()), {}
        return gone

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._outstanding.values()), default=None)

    def _next_seq(self) -> int:
        """The next sequence number, wrapping at 2^32; never 0, never one still outstanding."""
        for _ in range(len(self._outstanding) + 2):
            self._seq = (self._seq + 1) % SEQ_MODULUS or 1
            if self._seq not in self._outstanding:
                return self._seq
        raise AssertionError("unreachable: more numbers than outstanding requests")

    # -- liveness ----------------------------------------------------------------------------

    def received(self, now: float) -> None:
        self.last_received = now

    def sent(self, now: float) -> None:
        self.last_sent = now

    def liveness(self, now: float, *, unread: Callable[[], bool] = lambda: False) -> Liveness:
        """The keepalive rule: speak after ``keepalive_s`` of our silence; the peer is gone after
        three periods of its silence (a peer whose bytes wait ``unread`` is not silent: asked only
        then). Ask every ``keepalive_s / 3``."""
        if now - self.last_received >= SILENT_PERIODS * self.keepalive_s and not unread():
            return Liveness.PEER_GONE
        if now - self.last_sent >= self.keepalive_s:
            return Liveness.KEEPALIVE_DUE
        return Liveness.OK

    @property
    def liveness_check_s(self) -> float:
        return self.keepalive_s / 3

