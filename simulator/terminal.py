"""Terminal: an access-control terminal in software, with no I/O.

It holds what a real terminal holds (a user store and an event log of bounded size) and answers
the gateway's requests the way docs/protocol.md says a terminal must. People at the keypad are
the methods ``enroll``, ``edit``, ``delete`` and ``verify``; they log terminal-origin events.
Users the gateway puts or deletes log server-origin events. Transports (simulator/tcp.py, the
RS-485 bus) feed it frames and send what it answers; it never touches a socket itself. The rules
of the conversation (the handshake, authenticate first, one terminal per link, which requests a
terminal takes, bad payloads) are its link's ``protocol.connection.Connection``'s, the same
object the gateway's session talks through; this class says what a terminal answers.
"""

import itertools
import secrets
import time
from collections import deque
from dataclasses import replace
from functools import lru_cache

from protocol.connection import Connection, Role
from protocol.connection_events import Established, Event as ConnectionEvent, Greeted, Rejected, Replied, Request
from protocol.events import Credential, Event, EventCode, Origin
from protocol.frame import MAX_PAYLOAD, Frame, encode_frame
from protocol.messages import Command, UserStatus
from protocol.records import UserRecord, UserRecordWire


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def new_log_epoch() -> int:
    """A fresh epoch: random, so a terminal that forgot everything still never reuses one."""
    return secrets.randbits(63) or 1


class Terminal:
    """One terminal's state and its answers to the gateway.

    ``listeners`` are called with each new event (a transport wakes up to send it);
    ``applied_listeners`` with ``(user_id, record or None)`` whenever the gateway changed a user
    here, which is what the load test times propagation by.
    """

    model = "SIM-1"
    firmware = "1.0.0"
    max_users = 100_000

    def __init__(self, terminal_id: int, secret: str | bytes, *, address: int = 0, max_events: int = 1_000_000, clock=wall_clock_ms,
                 log_epoch: int | None = -1):
        self.terminal_id = terminal_id
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.address = address
        self.max_events = max_events
        self.clock = clock
        self.clock_offset_ms = 0
        self.users: dict[str, UserRecord] = {}
        self.changed_locally: set[str] = set()  # keypad changes the gateway has not fetched yet
        self.log: deque[Event] = deque()  # events the gateway has not acknowledged yet, oldest first
        # Event ids count within a log named by its epoch, chosen afresh whenever the counter
        # starts at 1 (docs/protocol.md, "Event log identity"); None: a terminal of the first
        # firmware generation, which names no log.
        self.log_epoch = new_log_epoch() if log_epoch == -1 else log_epoch
        self.next_event_id = 1
        self.acked_through = 0
        self.overwritten = 0  # events lost because the log was full, as on a real terminal
        self.listeners: list = []
        self.applied_listeners: list = []
        self.rewind_listeners: list = []  # told the event id a REQUEST_EVENTS asks to resend after
        self.connection = self._new_connection()

    # -- people at the terminal --------------------------------------------------------------

    def enroll(self, record: UserRecord) -> Event:
        record.validate()
        code = EventCode.UPDATE_SUCCESS if record.user_id in self.users else EventCode.ENROLL_SUCCESS
        self.users[record.user_id] = record
        self.changed_locally.add(record.user_id)
        return self.log_event(code, Origin.DEVICE, record.user_id)

    def edit(self, user_id: str, **fields) -> Event:
        """Change some fields of a user held here, as an operator editing at the keypad would."""
        record = replace(self.users[user_id], **fields).validate()
        self.users[user_id] = record
        self.changed_locally.add(user_id)
        return self.log_event(EventCode.UPDATE_SUCCESS, Origin.DEVICE, user_id)

    def delete(self, user_id: str) -> Event:
        del self.users[user_id]
        self.changed_locally.discard(user_id)
        return self.log_event(EventCode.DELETE_SUCCESS, Origin.DEVICE, user_id)

    def verify(self, user_id: str, credential: Credential = Credential.CARD) -> Event:
        """Someone presents a credential at the door."""
        code = EventCode.VERIFY_SUCCESS if user_id in self.users else EventCode.VERIFY_FAIL
        return self.log_event(code, credential, user_id)

    def log_event(self, code: int, sub_code: int, user_id: str = "") -> Event:
        event = Event(self.next_event_id, self.now_ms(), int(code), int(sub_code), user_id)
        self.next_event_id += 1
        if len(self.log) >= self.max_events:
            self.log.popleft()
            self.overwritten += 1
        self.log.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    def now_ms(self) -> int:
        return self.clock() + self.clock_offset_ms

    # -- the event log as the gateway sees it ------------------------------------------------

    def acknowledge(self, ack_through: int) -> None:
        """The gateway stored every event up to ``ack_through``: forget them."""
        if ack_through > self.acked_through:
            self.acked_through = ack_through
        while self.log and self.log[0].event_id <= self.acked_through:
            self.log.popleft()

    def events_after(self, event_id: int, limit: int) -> list[Event]:
        """Up to ``limit`` held events with an id above ``event_id``, oldest first.

        The log holds consecutive ids, so the first one wanted is found by arithmetic: a backlog
        built up while the gateway's database was down is not rescanned for every batch.
        """
        if not self.log:
            return []
        start = max(0, event_id + 1 - self.log[0].event_id)
        return list(itertools.islice(self.log, start, start + limit))

    def pending_after(self, event_id: int) -> int:
        """How many held events have an id above ``event_id``."""
        return max(0, len(self.log) - max(0, event_id + 1 - self.log[0].event_id)) if self.log else 0

    # -- answering the gateway ---------------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self.connection.established

    def link_lost(self, *, now: float = 0.0, handshake_s: float | None = None) -> None:
        """A new link starts with a new handshake (due within ``handshake_s`` of ``now``, if given)."""
        self.connection.close()
        self.connection = self._new_connection(now, handshake_s)

    def _new_connection(self, now: float = 0.0, handshake_s: float | None = None) -> Connection:
        # An EVENTS request waits for the gateway's commit, however long a database outage lasts.
        return Connection(Role.TERMINAL, terminal_id=self.terminal_id, address=self.address, request_timeout_s=None,
                          handshake_s=handshake_s, now=now)

    def answer(self, frame: Frame) -> bytes:
        """The reply to one request from the gateway, encoded as a frame (nothing for an answer)."""
        now = self.clock() / 1000
        reply = self.respond(self.connection.receive_frame(frame, now=now), now)
        return b"" if reply is None else encode_frame(reply)

    def respond(self, event: ConnectionEvent, now: float) -> Frame | None:
        """What this terminal says to one event of its connection: the frame to send, if any."""
        kind = type(event)
        if kind is Request:
            body = self._handlers[event.frame.command](self, event.body)
            return self.connection.reply(event.frame, body, now=now)
        if kind is Greeted:
            return self.connection.answer_hello(event, secret=self.secret, model=self.model, firmware=self.firmware,
                                                max_users=self.max_users, max_events=self.max_events, log_epoch=self.log_epoch, now=now)
        if kind is Established:
            self.clock_offset_ms = event.welcome.server_time_ms - self.clock()
            self.acknowledge(event.welcome.ack_through)
            return event.reply
        if kind is Rejected or kind is Replied:
            return event.reply
        return None

    def _poll(self, body) -> dict:
        self.acknowledge(body.ack_through)
        return dict(events=self.events_after(self.acked_through, body.max_events))

    def _time_sync(self, body) -> dict:
        before = self.now_ms()
        self.clock_offset_ms = body.server_time_ms - self.clock()
        return dict(terminal_time_ms=before)

    def _request_events(self, body) -> dict:
        for listener in self.rewind_listeners:
            listener(body.after_event_id)
        return dict(pending=self.pending_after(body.after_event_id))

    def _get_users(self, body) -> dict:
        """The users asked for that fit in one frame; the rest are left out of both lists, and the
        gateway asks for them again (docs/protocol.md, GET_USERS)."""
        missing = [u for u in body.user_ids if u not in self.users]
        room = MAX_PAYLOAD - 2 - sum(1 + len(u.encode()) for u in missing)
        found = []
        for user_id in body.user_ids:
            if user_id in self.users:
                room -= len(UserRecordWire.build(self.users[user_id]))
                if room < 0:
                    break
                found.append(self.users[user_id])
        self.changed_locally.difference_update(r.user_id for r in found)
        return dict(users=found, missing=missing)

    def _put_users(self, body) -> dict:
        results = []
        for record in body.users:  # records breaking the limits never parse: BAD_MESSAGE for the whole request
            if record.user_id not in self.users and len(self.users) >= self.max_users:
                results.append(dict(user_id=record.user_id, status=UserStatus.STORAGE_FULL))
                continue
            if body.keep_local_changes and record.user_id in self.changed_locally:
                results.append(dict(user_id=record.user_id, status=UserStatus.LOCAL_CHANGE_PENDING))
                continue
            self.changed_locally.discard(record.user_id)
            code = EventCode.UPDATE_SUCCESS if record.user_id in self.users else EventCode.ENROLL_SUCCESS
            self.users[record.user_id] = record
            self.log_event(code, Origin.SERVER, record.user_id)
            self._applied(record.user_id, record)
            results.append(dict(user_id=record.user_id, status=UserStatus.OK))
        return dict(results=results)

    def _delete_users(self, body) -> dict:
        results = []
        for user_id in body.user_ids:
            if self.users.pop(user_id, None) is None:
                results.append(dict(user_id=user_id, status=UserStatus.NOT_FOUND))
                continue
            self.log_event(EventCode.DELETE_SUCCESS, Origin.SERVER, user_id)
            self._applied(user_id, None)
            results.append(dict(user_id=user_id, status=UserStatus.OK))
        return dict(results=results)

    def _list_users(self, body) -> dict:
        ids = sorted(u for u in self.users if u > body.after_user_id)
        page = ids[: body.limit]
        entries = [dict(user_id=u, digest=record_digest_of(self.users[u])) for u in page]
        return dict(entries=entries, more=len(ids) > len(page))

    def _applied(self, user_id: str, record: UserRecord | None) -> None:
        for listener in self.applied_listeners:
            listener(user_id, record)

    _handlers = {  # HELLO, WELCOME and KEEPALIVE are the connection's
        Command.POLL: _poll,
        Command.TIME_SYNC: _time_sync,
        Command.REQUEST_EVENTS: _request_events,
        Command.GET_USERS: _get_users,
        Command.PUT_USERS: _put_users,
        Command.DELETE_USERS: _delete_users,
        Command.LIST_USERS: _list_users,
    }


# A fleet's terminals live by the hundred in one process and receive the same pushes: what they
# digest is computed once per process (and what they parse, protocol.connection). Records are
# frozen, so sharing them is safe.

@lru_cache(maxsize=65536)
def record_digest_of(record: UserRecord) -> bytes:
    """``record.digest()``: what LIST_USERS reports, and the dumps."""
    return record.digest()
