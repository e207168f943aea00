"""The PUSH command queue as stored: what the gateway owes each PUSH device, durable before the
sync core is answered, so that a change committed while commands wait needs no second Delay and a
gateway restart resumes what was owed (docs/zk-push.md, "Commands").

A row is one command; the commands of one put or delete share a ``group_id`` (the id of the
first), and each row carries what the group's success stands for (the server-origin event, the
digest of the device's copy once applied and of the server record it was written from). A row is
deleted once the device reported its result or it was given up, and only with the rest of its group:
a refusal must still be stored when the rest of its group is resumed after a restart.
"""

from dataclasses import dataclass

from sqlalchemy import delete, insert, select

from gateway.store.schema import push_commands


@dataclass(frozen=True)
class StoredCommand:
    command_id: int
    text: str
    group_id: int  # the first command of the put or delete this one belongs to
    user_id: str
    action: str  # "enroll", "update" or "delete": the server-origin event its group's success is
    digest: bytes | None = None  # the device's copy once the group is applied (None: a deletion)
    written: bytes | None = None  # the digest of the server record that copy was written from


def store_commands(conn, terminal_id: int, commands: list[StoredCommand], queued_ms: int) -> None:
    conn.execute(insert(push_commands), [
        dict(terminal_id=terminal_id, command_id=c.command_id, queued_ms=queued_ms, text=c.text, group_id=c.group_id,
             user_id=c.user_id, action=c.action, digest=c.digest, written=c.written) for c in commands])


def settle_commands(conn, terminal_id: int, command_ids: list[int]) -> None:
    conn.execute(delete(push_commands).where(push_commands.c.terminal_id == terminal_id, push_commands.c.command_id.in_(command_ids)))


def stored_commands(conn, terminal_id: int) -> list[StoredCommand]:
    """A device's commands in the order they were queued (ids restart per gateway start: time first)."""
    c = push_commands.c
    rows = conn.execute(select(c.command_id, c.text, c.group_id, c.user_id, c.action, c.digest, c.written)
                        .where(c.terminal_id == terminal_id).order_by(c.queued_ms, c.command_id))
    return [StoredCommand(*row) for row in rows]


class CommandStore:
    """Where a ``PushDevice`` keeps its queue: writes ride the event log's group commits (at one
    enrolment a second across 100 devices that is 100 puts a second, no fsync of their own)."""

    def __init__(self, db, events):
        self._db = db
        self._events = events

    def load(self, terminal_id: int):
        return self._db.read(stored_commands, terminal_id)

    def add(self, terminal_id: int, commands: list[StoredCommand], queued_ms: int):
        return self._events.commit_with_events(store_commands, terminal_id, commands, queued_ms)

    def remove(self, terminal_id: int, command_ids: list[int]):
        return self._events.commit_with_events(settle_commands, terminal_id, command_ids)
