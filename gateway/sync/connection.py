"""TerminalConnection: one online terminal as the sync core sees it, whatever its protocol.

The event log, the puller and the pusher talk to terminals only through this interface, so
they never know whether a terminal speaks the native protocol over TCP, over an RS-485 bus, or
is a ZKTeco device behind a driver. What a connection needs from the gateway comes in at its
construction as the small interfaces below: events go to an ``EventSink``, admission asks an
``Admission``, and ``Presence`` hears when the terminal comes online and goes offline.
"""

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from protocol.errors import ErrorCode, ProtocolError
from protocol.events import Event
from protocol.records import UserRecord


@dataclass(frozen=True)
class TerminalInfo:
    """What a terminal says of itself when it connects."""

    model: str = ""
    firmware: str = ""
    max_users: int = 0
    clock_drift_s: float | None = None  # how far its clock is ahead of the gateway's, read at connect (None: not known)


@dataclass(frozen=True)
class FetchedUsers:
    """Users a terminal sent; ``missing``: ids it does not hold. An id in neither list was left
    out (it did not fit in one answer) and should be asked for again."""

    users: list[UserRecord]
    missing: list[str]


@dataclass(frozen=True)
class UserResult:
    """A terminal's outcome for one user of a put or a delete (``protocol.UserStatus``)."""

    user_id: str
    status: int
    detail: str = ""  # why, when the terminal's driver can say more than the status (a ZK device's limits)


@dataclass(frozen=True)
class DigestPage:
    """Part of a terminal's user list in id order, each id with its record digest."""

    digests: dict[str, bytes]
    more: bool


class ListingUnsupported(ProtocolError):
    """The terminal cannot list its users with digests (``list_digests``): reconciliation skips
    it and says so. A driver for a family without such a listing raises it."""


class Unanswered(ProtocolError):
    """A request the terminal left unanswered past its deadline. The link stays up, and the
    terminal may still have acted on it: its answer, coming late, matches no request. A driver
    whose requests can time out so raises it (or a subclass); the pusher waits longer before a
    terminal's next round after one (gateway/sync/pusher.py)."""


class Refused(ProtocolError):
    """A terminal the gateway will not talk to; ``code`` goes back to it in an error reply."""

    def __init__(self, code: ErrorCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TerminalConnection(Protocol):
    """One online terminal. Every request fires with its answer or fails with a ProtocolError
    (the terminal refused, did not answer in time, or the link went away)."""

    # What the sync core reads of a connection; an implementation may keep or compute each.
    @property
    def terminal_id(self) -> int: ...

    @property
    def description(self) -> str:
        """Where it is connected, for people: "tcp 10.0.0.5:5123"."""
        ...

    @property
    def info(self) -> TerminalInfo: ...

    @property
    def push_bytes(self) -> int:
        """How many bytes of encoded records one ``put_users`` should carry."""
        ...

    @property
    def last_heard_s(self) -> float:
        """When it last sent anything, on the gateway's clock: what "last seen" shows."""
        ...

    def fetch_users(self, user_ids: list[str]) -> "Deferred[FetchedUsers]": ...

    def put_users(self, records: list[bytes], keep_local_changes: bool) -> "Deferred[list[UserResult]]":
        """Store users given in their wire encoding (``UserRecordWire``, as the server keeps them).

        With ``keep_local_changes`` a terminal keeps a user changed at its keypad and not fetched
        yet, and answers LOCAL_CHANGE_PENDING for it: the pull that is owed merges the change.
        """

    def delete_users(self, user_ids: list[str]) -> "Deferred[list[UserResult]]": ...

    def list_digests(self, after_user_id: str, limit: int) -> "Deferred[DigestPage]":
        """The terminal's users after ``after_user_id``, in id order, with the digest of each
        record as the server would compute it (``protocol.records.record_digest`` of its wire
        encoding); fails with ``ListingUnsupported`` where the terminal cannot tell."""

    def holdable(self, record: UserRecord) -> UserRecord:
        """The copy of ``record`` this terminal would give back once written: all of it where a
        terminal holds whole records (ours); a driver whose devices hold part of one (ZK) says
        which part, so the merge tells a device's limits from an edit made at it."""
        ...

    def digest_of(self, record: bytes) -> bytes | None:
        """The digest ``list_digests`` gives a user this terminal holds as the server sends
        ``record`` (its wire encoding): the record's own digest where a terminal holds whole
        records; a driver whose terminals hold part of one (ZK) digests that part, and says None
        where the terminal should not hold the user at all."""

    def events_pending(self) -> "Deferred[int]":
        """How many of its events the terminal holds that are not stored yet (REQUEST_EVENTS, which
        also makes it send them again: each is stored once). 0 means every change made at its
        keypad so far is in the event log: what reconciliation waits for before it judges."""

    def pause_events(self) -> None:
        """Stop bringing events in (the writer is behind) until ``resume_events``."""

    def resume_events(self) -> None: ...

    def close(self, reason: str) -> None: ...

    def replaced(self, by: str) -> None:
        """A newer authenticated connection of this terminal (on ``by``) took over: tell the
        terminal if its protocol can (native: error REPLACED), then close."""


class EventSink(Protocol):
    """Where a connection's events go: the durable event log."""

    def stored_through(self, terminal_id: int) -> "Deferred[int]":
        """The highest event id stored in this terminal's current log (a reconnecting terminal resumes after it)."""

    def begin_log(self, terminal_id: int, log_epoch: int | None) -> "Deferred[int]":
        """The terminal connected with this log (None: it names none); fires with the id through
        which its held events are stored, for WELCOME's ``ack_through``. A new log is reported."""

    def submit(self, terminal_id: int, events: list[Event], log_epoch: int | None = None) -> "Deferred[int]":
        """Fires with the highest event id once every event is durable: only then may it be acknowledged.
        ``log_epoch`` is the log the ids count in; None: the terminal's current one."""


class Admission(Protocol):
    def secret_for(self, terminal_id: int, info: TerminalInfo, description: str) -> bytes:
        """The secret the terminal must prove it holds; raises Refused if it may not connect."""

    def refused(self, terminal_id: int, description: str, reason: str) -> bool:
        """A link (``description``) claiming to be this terminal was refused for ``reason``: a
        terminal the gateway knows shows it while offline (its link, why); True if it is known."""


class Presence(Protocol):
    """Hears terminals come and go: the registry, which keeps one connection per terminal."""

    def online(self, connection: TerminalConnection) -> bool:
        """The terminal authenticated; False if it may not stay (refused meanwhile), and it is closed."""

    def offline(self, connection: TerminalConnection) -> None: ...
