"""What the gateway keeps of each ZK device in the database, so change detection survives a restart
and a lost link: the digest of each person's copy the server has seen, the pulls already owed,
and how far the attendance log is stored."""

from dataclasses import dataclass

from sqlalchemy import delete, select

from gateway.database import upsert
from gateway.schema import events, pending_pulls, zk_attendance, zk_holdings
from protocol.events import EventCode


@dataclass(frozen=True)
class Holdings:
    seen: dict[str, bytes]  # user id -> digest of the device copy the server has seen
    owed: frozenset[str]  # users whose change at the device is announced and not pulled yet
    attendance_stored: int = 0  # attendance records stored
    attendance_last: str | None = None  # the identity of the last one


def load_holdings(conn, terminal_id: int) -> Holdings:
    rows = conn.execute(select(zk_holdings.c.user_id, zk_holdings.c.digest).where(zk_holdings.c.terminal_id == terminal_id))
    seen = {user_id: bytes(digest) for user_id, digest in rows}
    owed = frozenset(conn.execute(select(pending_pulls.c.user_id).where(pending_pulls.c.terminal_id == terminal_id)).scalars())
    mark = conn.execute(select(zk_attendance.c.stored, zk_attendance.c.last).where(zk_attendance.c.terminal_id == terminal_id)).first()
    return Holdings(seen, owed, *(mark or (0, None)))


def save_holdings(conn, terminal_id: int, seen: dict[str, bytes | None]) -> None:
    """Store digests seen; a None digest: the device holds no copy of that person any more."""
    gone = [user_id for user_id, digest in seen.items() if digest is None]
    rows = [dict(terminal_id=terminal_id, user_id=u, digest=d) for u, d in seen.items() if d is not None]
    upsert(conn, zk_holdings, rows, key=["terminal_id", "user_id"], update=["digest"])
    if gone:
        conn.execute(delete(zk_holdings).where(zk_holdings.c.terminal_id == terminal_id, zk_holdings.c.user_id.in_(gone)))


def save_attendance_mark(conn, terminal_id: int, stored: int, last: str | None) -> None:
    upsert(conn, zk_attendance, [dict(terminal_id=terminal_id, stored=stored, last=last)], key=["terminal_id"], update=["stored", "last"])


def stored_punches(conn, terminal_id: int, since_ms: int) -> set[tuple[str | None, int, int]]:
    """The device's punches in the event log from ``since_ms`` on, as (user id, time, credential):
    after a restart, the ones stored before the attendance mark that should have followed them."""
    rows = conn.execute(select(events.c.user_id, events.c.occurred_ms, events.c.sub_code).where(
        events.c.terminal_id == terminal_id, events.c.code == int(EventCode.VERIFY_SUCCESS), events.c.occurred_ms >= since_ms))
    return {(user_id, occurred_ms, sub_code) for user_id, occurred_ms, sub_code in rows}
