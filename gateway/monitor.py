"""The monitoring events a person reads to follow sync, and how they are stored.

They live in the ``events`` table beside terminal log events, so one query, one API and one
live stream show both.
"""

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from gateway.schema import events

SAVED_FROM_DEVICE = "User update succeeded (Device)"
APPLIED_BY_DEVICE = "User update succeeded (Server)"
SAVE_FAILED = "Fail to save to the server DB"
PUSH_REFUSED = "User update failed (Server)"  # a terminal refused a record (full, invalid)
SYNC_EVENT_TYPES = (SAVED_FROM_DEVICE, APPLIED_BY_DEVICE, SAVE_FAILED, PUSH_REFUSED)


def sync_event_row(type_: str, terminal_id: int | None, user_id: str, detail: str = "", *, at_ms: int):
    """A monitoring event, as it happened at ``at_ms`` (the gateway's clock, not the database's)."""
    return dict(
        terminal_id=terminal_id,
        terminal_event_id=None,
        type=type_,
        code=None,
        sub_code=None,
        user_id=user_id,
        occurred_ms=at_ms,
        recorded_ms=at_ms,
        detail=detail,
    )


def record_sync_events(conn: Connection, rows: list[dict]) -> None:
    if rows:
        conn.execute(insert(events), rows)
