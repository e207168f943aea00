"""What a native-protocol ``Connection`` says happened: one event per frame, deadline or check.

Each event that asks for a frame to go out carries it (``reply``); the owner of the I/O sends it
as it is. Events are plain values with no behaviour, in the manner of h11's ``_events.py``.
"""

from dataclasses import dataclass
from typing import Any

from protocol.conversation import Outstanding
from protocol.errors import ErrorCode, FrameError
from protocol.frame import Frame


@dataclass(frozen=True, slots=True)
class Request:
    """A request from the peer that passed every rule, its body parsed: the owner answers it
    (``Connection.reply`` or ``Connection.refuse``)."""

    frame: Frame
    body: Any  # a construct Container


@dataclass(frozen=True, slots=True)
class Answer:
    """A response or an error reply to one of this side's requests, matched by number and command."""

    request: Outstanding
    frame: Frame


@dataclass(frozen=True, slots=True)
class Stray:
    """A response that answers none of this side's requests: a late answer to an expired one, a
    confused peer, or a notice (seq 0: REPLACED, a refusal of the terminal's HELLO answer)."""

    frame: Frame


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame the rules refuse (another terminal's, before authentication, a command this side
    does not take, a body that does not parse, a wrong proof). ``reply`` is the error reply to
    send, None for a response (an answer is never answered)."""

    frame: Frame
    code: ErrorCode
    reason: str
    reply: Frame | None


@dataclass(frozen=True, slots=True)
class Replied:
    """A request the rules answer by themselves (KEEPALIVE, in every phase): send ``reply``."""

    frame: Frame
    reply: Frame


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A corrupt frame, skipped; ``counted`` is false for the rest of a frame already counted."""

    error: FrameError
    counted: bool


@dataclass(frozen=True, slots=True)
class HelloAnswered:
    """Gateway side: the terminal answered HELLO, naming itself in ``frame.terminal_id``. The
    owner decides admission, then ``authenticate`` and ``welcome``, or ``refuse_terminal``."""

    frame: Frame
    hello: Any


@dataclass(frozen=True, slots=True)
class Greeted:
    """Terminal side: the gateway said HELLO (again, perhaps: the handshake starts over). The
    owner answers with ``answer_hello``, which carries what the terminal says of itself."""

    frame: Frame
    hello: Any


@dataclass(frozen=True, slots=True)
class Established:
    """The handshake ended: on the gateway's side the terminal answered WELCOME (``welcome`` and
    ``reply`` None); on the terminal's side the gateway's proof held, and ``reply`` answers it."""

    frame: Frame
    welcome: Any
    reply: Frame | None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """A request passed its deadline unanswered; it is forgotten (a late answer is a Stray)."""

    request: Outstanding


@dataclass(frozen=True, slots=True)
class KeepaliveDue:
    """This side said nothing for a keepalive period: send something (``request(KEEPALIVE)``)."""


Event = Request | Answer | Stray | Rejected | Replied | Corrupt | HelloAnswered | Greeted | Established | TimedOut | KeepaliveDue
