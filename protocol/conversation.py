"""Conversation: the rules of one side of a framed conversation, with no I/O and no clock.

The gateway's session, the simulated terminal and ``gateway-check`` each own one. It numbers
requests, matches every answer to its request by sequence number *and* command, says which
requests have passed their deadline at a ``now`` it is given, and applies the keepalive rule
(docs/protocol.md, "Session"). Frames and times go in; frames, answers and expiries come out.
Who owns the I/O decides what to do with them (fire a Deferred, print a check, close a link).
"""

from dataclasses import dataclass
from enum import Enum

from protocol.frame import Flags, Frame
from protocol.messages import Command, build_body

SEQ_MODULUS = 1 << 32
SILENT_PERIODS = 3  # a peer silent for this many keepalive periods is gone
_RESPONSE = int(Flags.RESPONSE)


def answers(frame: Frame, request) -> bool:
    """Whether ``frame`` answers ``request`` (a Frame sent, or its ``Outstanding``): a response
    echoing its sequence number and command. The one matching rule, here and on the bus line."""
    return bool(int(frame.flags) & _RESPONSE) and frame.seq == request.seq and frame.command == request.command


@dataclass(frozen=True, slots=True)
class Outstanding:
    """A request sent and not yet answered. Its deadline moves on when its side reads again after
    a pause (``Conversation.read_again``): match it by ``seq``, not by value."""

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
        self._deaf_since: float | None = None  # when we stopped reading the peer, while we do not

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

    def expire(self, now: float, *, unread: bool = False) -> list[Outstanding]:
        """Requests whose deadline has passed, oldest first; they are forgotten.

        While we do not read the peer, only keepalives: its answers may be waiting unread, but a
        keepalive speaks for us and must not hold a place in the window for ever. While what it
        sent waits ``unread``, a request expires a second timeout past its deadline: its answer
        may be among those bytes, but a peer that keeps them coming cannot hold it for ever."""
        deaf = self._deaf_since is not None
        grace = self.request_timeout_s if unread else 0.0

        def late(p: Outstanding) -> bool:
            if p.command == Command.KEEPALIVE:
                return p.deadline <= now
            return not deaf and p.deadline + grace <= now

        gone = [p for p in self._outstanding.values() if late(p)]
        for pending in gone:
            del self._outstanding[pending.seq]
        return gone

    def abandon(self) -> list[Outstanding]:
        """The link is gone: every outstanding request, which will never be answered."""
        gone, self._outstanding = list(self._outstanding.values()), {}
        return gone

    def next_deadline(self) -> float | None:
        if self._deaf_since is not None:
            return None
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

    # -- not reading the peer ----------------------------------------------------------------

    def stop_reading(self, now: float) -> None:
        """We stop reading what the peer sends for a while (the gateway's backpressure): its
        answers and its keepalives wait unread, so until ``read_again`` no request expires and
        the peer is not judged gone. Keepalives still fall due (the peer judges our silence), and
        expire as ever."""
        if self._deaf_since is None:
            self._deaf_since = now

    def read_again(self, now: float) -> None:
        """Reading again: the time we did not read counts against neither the peer's silence nor
        a request's deadline (a request sent meanwhile from when it was sent)."""
        if self._deaf_since is None:
            return
        deaf_since, self._deaf_since = self._deaf_since, None
        # The silence before we stopped carries on from now; a frame read meanwhile (a bus reads
        # its answers, paused or not) ended it, and what followed it was not read either.
        self.last_received = now - max(0.0, deaf_since - self.last_received)
        self._outstanding = {
            seq: Outstanding(p.seq, p.command, p.deadline + now - max(deaf_since, p.deadline - self.request_timeout_s))
            for seq, p in self._outstanding.items()
        }

    def liveness(self, now: float, *, unread: bool = False) -> Liveness:
        """The keepalive rule: speak after ``keepalive_s`` of our silence; the peer is gone after
        three periods of its silence (time we did not read it is not its silence, and a peer
        whose bytes wait ``unread`` is not silent). Ask every ``keepalive_s / 3``."""
        if now - self.last_received >= SILENT_PERIODS * self.keepalive_s and not unread and self._deaf_since is None:
            return Liveness.PEER_GONE
        if now - self.last_sent >= self.keepalive_s:
            return Liveness.KEEPALIVE_DUE
        return Liveness.OK

    @property
    def liveness_check_s(self) -> float:
        return self.keepalive_s / 3

