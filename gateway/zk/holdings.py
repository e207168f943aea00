"""What the gateway keeps of each ZK device in the database (its own tables), so change detection
survives a restart and a lost link: the digest of each person's copy the server has seen, how
far the attendance log is stored and the serial number of the unit last connected; with the pulls already owed, which the sync core keeps
(gateway/sync/puller.py). ``HoldingsWriter`` stores the digests of every device in group commits."""

from dataclasses import dataclass

from sqlalchemy import delete, select
from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.store.database import upsert
from gateway.sync.puller import owed_pulls
from gateway.store.schema import zk_attendance, zk_devices, zk_holdings


@dataclass(frozen=True)
class Holdings:
    seen: dict[str, bytes]  # user id -> digest of the device copy the server has seen
    owed: frozenset[str]  # users whose change at the device is announced and not pulled yet
    attendance_stored: int = 0  # attendance records stored
    attendance_last: str | None = None  # the identity of the last one
    serial: str | None = None  # ~SerialNumber of the unit at its last connection


def load_holdings(conn, terminal_id: int) -> Holdings:
    rows = conn.execute(select(zk_holdings.c.user_id, zk_holdings.c.digest).where(zk_holdings.c.terminal_id == terminal_id))
    seen = {user_id: bytes(digest) for user_id, digest in rows}
    owed = frozenset(owed_pulls(conn, terminal_id))
    mark = conn.execute(select(zk_attendance.c.stored, zk_attendance.c.last).where(zk_attendance.c.terminal_id == terminal_id)).first()
    serial = conn.execute(select(zk_devices.c.serial).where(zk_devices.c.terminal_id == terminal_id)).scalar()
    return Holdings(seen, owed, *(mark or (0, None)), serial=serial)


def save_holdings(conn, seen: dict[int, dict[str, bytes | None]]) -> None:
    """Store digests seen, by device; a None digest: the device holds no copy of that person any
    more. The digests of every device go in one statement: one each cost the database thread
    130 us (SQLAlchemy building and looking up the statement) in a group commit of 99 devices."""
    rows = [dict(terminal_id=t, user_id=u, digest=d) for t, digests in seen.items() for u, d in digests.items() if d is not None]
    upsert(conn, zk_holdings, rows, key=["terminal_id", "user_id"], update=["digest"])
    for terminal_id, digests in seen.items():
        gone = [user_id for user_id, digest in digests.items() if digest is None]
        if gone:
            conn.execute(delete(zk_holdings).where(zk_holdings.c.terminal_id == terminal_id, zk_holdings.c.user_id.in_(gone)))


def save_attendance_mark(conn, terminal_id: int, stored: int, last: str | None) -> None:
    upsert(conn, zk_attendance, [dict(terminal_id=terminal_id, stored=stored, last=last)], key=["terminal_id"], update=["stored", "last"])


def save_serial(conn, terminal_id: int, serial: str) -> None:
    upsert(conn, zk_devices, [dict(terminal_id=terminal_id, serial=serial)], key=["terminal_id"], update=["serial"])


class HoldingsWriter:
    """Stores the digests of every ZK device sharing one database, many devices per transaction.

    Every write pass and pull of every device changes what the server has seen; one transaction
    (one fsync) each was most of the database writer's work in a storm. While one commit runs,
    what comes in waits and goes into the next (group commit). A connection's load goes through
    here too, in the same order, so it sees every save asked for before it.
    """

    def __init__(self, db):
        self._db = db
        self._waiting: list[tuple[int, dict[str, bytes | None] | None, defer.Deferred]] = []
        self._committing = False

    def save(self, terminal_id: int, seen: dict[str, bytes | None]) -> defer.Deferred:
        """Store digests seen (None: the device holds no copy of that person any more)."""
        return self._queue(terminal_id, dict(seen))

    def load(self, terminal_id: int) -> defer.Deferred:
        """Fires with the device's ``Holdings``, after every save asked for before."""
        return self._queue(terminal_id, None)

    def _queue(self, terminal_id: int, seen) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append((terminal_id, seen, d))
        if not self._committing:
            self._commit()
        return d

    def _commit(self) -> None:
        batch, self._waiting = self._waiting, []
        self._committing = bool(batch)
        if not batch:
            return

        def settle(result):
            for terminal_id, _, d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result.get(terminal_id))
            self._commit()

        self._db.write(_store_and_load, [(t, seen) for t, seen, _ in batch]).addBoth(settle)


def _store_and_load(conn, batch: list[tuple[int, dict[str, bytes | None] | None]]) -> dict[int, Holdings]:
    """The saves of a group commit, then the loads it asked for (which see them all)."""
    merged: dict[int, dict[str, bytes | None]] = {}
    loads = []
    for terminal_id, seen in batch:
        if seen is None:
            loads.append(terminal_id)
        else:
            merged.setdefault(terminal_id, {}).update(seen)  # in order: a later save wins
    save_holdings(conn, merged)
    return {terminal_id: load_holdings(conn, terminal_id) for terminal_id in loads}
