"""The monitoring events a person reads to follow sync, and how they are stored.

They live in the ``events`` table beside terminal log events, so one query, one API and one
live stream show both.
"""

from sqlalchemy.engine import Connection

from gateway.store.database import insert_many
from gateway.store.order import keyed
from gateway.store.schema import events

SAVED_FROM_DEVICE = "User update succeeded (Device)"
APPLIED_BY_DEVICE = "User update succeeded (Server)"
SAVE_FAILED = "Fail to save to the server DB"
PUSH_REFUSED = "User update failed (Server)"  # a terminal refused a record (full, invalid)
DELETED_BY_SERVER = "User deleted (Server)"  # a terminal applied a deletion made on the server
MERGED_UNCHANGED = "User update merged, nothing changed (Device)"  # the server's fields won: the server kept its record
CHANGE_DROPPED = "User update dropped (Device)"  # part or all of a keypad change could not be kept; the detail says what and why
RECORD_REFUSED = "Record refused (Device)"  # a record read from a device breaks the API's rules: not taken; the detail says why
# Reconciliation (gateway/sync/reconcile.py): what it repaired, and what it leaves as the rules allow.
RECONCILED = "User repaired (Reconciliation)"
UNREPAIRED_DIFFERENCE = "User differs, left as it is (Reconciliation)"
# A terminal's event log (docs/protocol.md, "Event log identity"): nothing it sends is dropped unseen.
LOG_RESTARTED = "Event log restarted"  # a new log epoch, or a counter that started again
EVENT_CONFLICT = "Event id conflict"  # an id already stored with other content: both are kept
LOG_IRREGULAR = "Event ids irregular"  # ids that went backwards or leapt far ahead within one log
SYNC_EVENT_TYPES = (SAVED_FROM_DEVICE, APPLIED_BY_DEVICE, SAVE_FAILED, PUSH_REFUSED, DELETED_BY_SERVER, MERGED_UNCHANGED,
                    CHANGE_DROPPED, RECORD_REFUSED, RECONCILED, UNREPAIRED_DIFFERENCE, LOG_RESTARTED, EVENT_CONFLICT, LOG_IRREGULAR)


# Who made the change an event reports: the sync events by their type, a terminal's user events by their sub-code.
_DEVICE_SIDE = frozenset({SAVED_FROM_DEVICE, MERGED_UNCHANGED, CHANGE_DROPPED, RECORD_REFUSED, SAVE_FAILED})
_SERVER_SIDE = frozenset({APPLIED_BY_DEVICE, DELETED_BY_SERVER, PUSH_REFUSED})
_USER_EVENT_TYPES = frozenset({"ENROLL_SUCCESS", "ENROLL_FAIL", "UPDATE_SUCCESS", "UPDATE_FAIL", "DELETE_SUCCESS", "DELETE_FAIL"})
SERVER, DEVICE = "server", "device"


def origin_of(type_: str, sub_code: int | None) -> str | None:
    """"device" (a keypad change), "server" (a record the server sent), or None (neither: a door, a log notice)."""
    if type_ in _DEVICE_SIDE:
        return DEVICE
    if type_ in _SERVER_SIDE:
        return SERVER
    if type_ in _USER_EVENT_TYPES:
        return {1: SERVER, 2: DEVICE}.get(sub_code)
    return None


def sync_event_row(type_: str, terminal_id: int | None, user_id: str, detail: str = "", *, at_ms: int, log_epoch: int = 0):
    """A monitoring event, as it happened at ``at_ms`` (the gateway's clock, not the database's)."""
    return dict(
        terminal_id=terminal_id,
        terminal_event_id=None,
        log_epoch=log_epoch,
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
        insert_many(conn, events, keyed(conn, rows))
