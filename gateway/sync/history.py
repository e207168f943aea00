"""Each user's history: every version and every decision about the user, with where it came from,
what changed field by field and which rule decided; and from it, who gave each current value.

A row is written in the transaction of the change it describes (a merge, an API edit, a keypad
delete the server does not follow, a reconciliation finding), never per delivery to a terminal:
pushing a version to a thousand terminals adds no history. Field changes are kept as compact
JSON (``changes.FieldChange.as_json``), not as whole records.
"""

import json

import msgspec
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from gateway.store.database import insert_many
from gateway.store.schema import user_history
from gateway.sync.changes import MEMBER_FIELDS, NOTED, SET, TAKEN, FieldChange, member, member_key, shown
from protocol.records import UserRecord

# Where a row came from.
TERMINAL, API, RECONCILIATION = "terminal", "api", "reconciliation"
USER = "user"  # the field of a change about the whole user (created, deleted)


def history_row(user_id: str, source: str, changes: list[FieldChange], at_ms: int, *,
                change_seq: int | None = None, terminal_id: int | None = None) -> dict:
    return dict(user_id=user_id, change_seq=change_seq, at_ms=at_ms, source=source, terminal_id=terminal_id,
                changes=json.dumps([c.as_json() for c in changes], ensure_ascii=False, separators=(",", ":")))


def noted(user_id: str, source: str, rule: str, what: str, at_ms: int, terminal_id: int | None = None) -> dict:
    """A row for something done elsewhere that the server does not follow (``what``: the deed)."""
    return history_row(user_id, source, [FieldChange(USER, NOTED, rule, None, what)], at_ms, terminal_id=terminal_id)


def record_history(conn: Connection, rows: list[dict]) -> None:
    insert_many(conn, user_history, rows)


def record_unless_noted(conn: Connection, rows: list[dict]) -> None:
    """Record the rows whose decision is not already the user's latest row from the same terminal
    (reconciliation finding a keypad delete the event log noted when it arrived)."""
    fresh = []
    for row in rows:
        stmt = (select(user_history.c.terminal_id, user_history.c.changes).where(user_history.c.user_id == row["user_id"])
                .order_by(user_history.c.id.desc()).limit(1))
        latest = conn.execute(stmt).first()
        if latest is None or latest.terminal_id != row["terminal_id"] or _rules(latest.changes) != _rules(row["changes"]):
            fresh.append(row)
    record_history(conn, fresh)


def _rules(changes: str) -> list[str]:
    return [rule for _field, _outcome, rule, _old, _new in json.loads(changes)]


def read_history(conn: Connection, user_id: str, after: int | None = None, limit: int = 1000) -> tuple[list[dict], bool]:
    """Up to ``limit`` rows of the user's history after row ``after``, oldest first, and whether
    more follow. A version's number counts the versions before it, the first being 1."""
    h = user_history.c
    stmt = select(h.id, h.at_ms, h.source, h.terminal_id, h.change_seq, h.changes).where(h.user_id == user_id)
    before = 0
    if after is not None:
        stmt = stmt.where(h.id > after)
        before = conn.execute(select(func.count()).where(h.user_id == user_id, h.id <= after, h.change_seq.is_not(None))).scalar_one()
    rows = conn.execute(stmt.order_by(h.id).limit(limit + 1)).all()
    shown_rows = rows[:limit]
    # One decode for the page, not one per row: this is most of what reading a long history costs.
    decoded = msgspec.json.decode("[" + ",".join(row[5] for row in shown_rows) + "]")
    entries = []
    for (row_id, at_ms, source, terminal_id, change_seq, _), changes in zip(shown_rows, decoded):
        if change_seq is not None:
            before += 1
        entries.append({"id": row_id, "at_ms": at_ms, "source": source, "terminal_id": terminal_id, "change_seq": change_seq,
                        "version": before if change_seq is not None else None,
                        "changes": [{"field": f, "outcome": o, "rule": r, "old": old, "new": new} for f, o, r, old, new in changes]})
    return entries, len(rows) > limit


def provenance(conn: Connection, record: UserRecord) -> list[dict]:
    """For every field and credential the user holds now: the last change that gave it its
    current value (source, terminal, when, rule); ``source`` None when the history does not
    reach back to it (the value predates the history)."""
    given: dict[tuple, dict] = {}
    stmt = (select(user_history.c.at_ms, user_history.c.source, user_history.c.terminal_id, user_history.c.changes)
            .where(user_history.c.user_id == record.user_id, user_history.c.change_seq.is_not(None))
            .order_by(user_history.c.id))
    rows = conn.execute(stmt).all()
    for row, changes in zip(rows, msgspec.json.decode("[" + ",".join(row.changes for row in rows) + "]")):
        for field, outcome, rule, _old, new in changes:
            if outcome in (TAKEN, SET):
                given[(field, _key(new))] = dict(source=row.source, terminal_id=row.terminal_id, at_ms=row.at_ms, rule=rule)
    found = []
    for field, value in _current_values(record):
        origin = given.get((field, _key(value)), dict(source=None, terminal_id=None, at_ms=None, rule=None))
        found.append(dict(field=field, value=value, **origin))
    return found


def _current_values(record: UserRecord):
    """(field, value as the history shows it) for every field and credential the record holds."""
    for name in ("name", "pin_hash", "validity", "security_level", "auth_mode", "disabled", "photo", "access_groups"):
        value = shown(name, getattr(record, name))
        if value is not None:
            yield name, value
    for name in MEMBER_FIELDS:
        for value in sorted(getattr(record, name), key=lambda m, n=name: member_key(n, m)):
            yield name, member(name, value)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True)


