"""Terminal: an access-control terminal in software, with no I/O.

It holds what a real terminal holds (a user store and an event log of bounded size) and answers
the gateway's requests the way docs/protocol.md says a terminal must. People at the keypad are
the methods ``enroll``, ``edit``, ``delete`` and ``verify``; they log terminal-origin events.
Users the gateway puts or deletes log server-origin events. Transports (simulator/tcp.py, the
RS-485 bus) feed it frames and send what it answers; it never touches a socket itself.
"""

import itertools
import secrets
import time
from collections import deque
from dataclasses import replace
from functools import lru_cache

from protocol.auth import TerminalHandshake
from protocol.errors import ErrorCode, MessageError
from protocol.events import Credential, Event, EventCode, Origin
from protocol.frame import MAX_PAYLOAD, PROTOCOL_VERSION, Frame
from protocol.messages import Command, UserStatus, error_response, parse_body, response
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
        self.authenticated = False
        self.listeners: list = []
        self.applied_listeners: list = []
        self.rewind_listeners: list = []  # told the event id a REQUEST_EVENTS asks to resend after
        self._handshake = TerminalHandshake(terminal_id, self.secret)

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

    def answer(self, frame: Frame) -> bytes:
        """The reply to one request from the gateway, encoded as a frame."""
        try:
            command = Command(frame.command)
        except ValueError:
            return error_response(self._reply_header(frame), ErrorCode.UNKNOWN_COMMAND, f"unknown command 0x{frame.command:02X}")
        handler = self._handlers.get(command)
        if handler is None:
            return error_response(self._reply_header(frame), ErrorCode.UNKNOWN_COMMAND, f"{command.name} is not for terminals")
        if self.authenticated and command != Command.HELLO and frame.terminal_id != self.terminal_id:
            return error_response(self._reply_header(frame), ErrorCode.UNKNOWN_TERMINAL,
                                  f"this is terminal {self.terminal_id}, not {frame.terminal_id}")
        if command not in (Command.HELLO, Command.WELCOME, Command.KEEPALIVE) and not self.authenticated:
            return error_response(self._reply_header(frame), ErrorCode.NOT_AUTHENTICATED, "say HELLO and WELCOME first")
        try:
            body = _parsed_put_users(frame.payload) if command == Command.PUT_USERS else parse_body(frame)
        except MessageError as exc:
            return error_response(self._reply_header(frame), ErrorCode.BAD_MESSAGE, str(exc))
        return handler(self, self._reply_header(frame), body)

    def _reply_header(self, frame: Frame) -> Frame:
        """Replies carry this terminal's id, so the gateway learns who answered HELLO."""
        return replace(frame, terminal_id=self.terminal_id)

    def link_lost(self) -> None:
        """A new link starts with a new handshake."""
        self.authenticated = False

    def _hello(self, frame: Frame, body) -> bytes:
        self.authenticated = False
        self._handshake = TerminalHandshake(self.terminal_id, self.secret)  # the secret as it is now
        return response(frame, dict(
            model=self.model, firmware=self.firmware, protocol_version=PROTOCOL_VERSION, max_users=self.max_users,
            max_events=self.max_events, log_epoch=self.log_epoch, **self._handshake.answer_hello(body),
        ))

    def _welcome(self, frame: Frame, body) -> bytes:
        if not self._handshake.gateway_proved(body):
            return error_response(frame, ErrorCode.AUTH_FAILED, "the gateway does not hold this terminal's secret")
        self.authenticated = True
        self.clock_offset_ms = body.server_time_ms - self.clock()
        self.acknowledge(body.ack_through)
        return response(frame)

    def _keepalive(self, frame: Frame, body) -> bytes:
        return response(frame)

    def _poll(self, frame: Frame, body) -> bytes:
        self.acknowledge(body.ack_through)
        return response(frame, dict(events=self.events_after(self.acked_through, body.max_events)))

    def _time_sync(self, frame: Frame, body) -> bytes:
        before = self.now_ms()
        self.clock_offset_ms = body.server_time_ms - self.clock()
        return response(frame, dict(terminal_time_ms=before))

    def _request_events(self, frame: Frame, body) -> bytes:
        for listener in self.rewind_listeners:
            listener(body.after_event_id)
        return response(frame, dict(pending=self.pending_after(body.after_event_id)))

    def _get_users(self, frame: Frame, body) -> bytes:
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
        return response(frame, dict(users=found, missing=missing))

    def _put_users(self, frame: Frame, body) -> bytes:
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
        return response(frame, dict(results=results))

    def _delete_users(self, frame: Frame, body) -> bytes:
        results = []
        for user_id in body.user_ids:
            if self.users.pop(user_id, None) is None:
                results.append(dict(user_id=user_id, status=UserStatus.NOT_FOUND))
                continue
            self.log_event(EventCode.DELETE_SUCCESS, Origin.SERVER, user_id)
            self._applied(user_id, None)
            results.append(dict(user_id=user_id, status=UserStatus.OK))
        return response(frame, dict(results=results))

    def _list_users(self, frame: Frame, body) -> bytes:
        ids = sorted(u for u in self.users if u > body.after_user_id)
        page = ids[: body.limit]
        entries = [dict(user_id=u, digest=record_digest_of(self.users[u])) for u in page]
        return response(frame, dict(entries=entries, more=len(ids) > len(page)))

    def _applied(self, user_id: str, record: UserRecord | None) -> None:
        for listener in self.applied_listeners:
            listener(user_id, record)

    _handlers = {
        Command.HELLO: _hello,
        Command.WELCOME: _welcome,
        Command.KEEPALIVE: _keepalive,
        Command.POLL: _poll,
        Command.TIME_SYNC: _time_sync,
        Command.REQUEST_EVENTS: _request_events,
        Command.GET_USERS: _get_users,
        Command.PUT_USERS: _put_users,
        Command.DELETE_USERS: _delete_users,
        Command.LIST_USERS: _list_users,
    }


# A fleet's terminals live by the hundred in one process and receive the same pushes: what they
# parse and digest is computed once per process. Records are frozen, so sharing them is safe.

@lru_cache(maxsize=64)
def _parsed_put_users(payload: bytes):
    """The body of a PUT_USERS request (only ever read, never changed)."""
    return parse_body(Frame(Command.PUT_USERS, payload))


@lru_cache(maxsize=65536)
def record_digest_of(record: UserRecord) -> bytes:
    """``record.digest()``: what LIST_USERS reports, and the dumps."""
    return record.digest()
