"""ZkStore: everything the ZK driver keeps in or reads from the database, as one narrow interface.

A ZK connection is handed a ``ZkStore``, never the ``Database``, as a native session is handed an
``EventSink``: what the server has seen on each device and how far its attendance log is stored
and the serial number of the unit there (the driver's own tables, gateway/zk/holdings.py), the pulls the sync core owes, the punches the
event log already holds, and the monitoring events the driver reports. ``DatabaseStore`` is the
gateway's implementation; tests may give their own.
"""

from typing import Protocol

from twisted.internet.defer import Deferred

from gateway.sync.eventlog import stored_since
from gateway.sync.monitor import record_sync_events
from gateway.zk.holdings import Holdings, HoldingsWriter, save_attendance_mark, save_serial
from protocol.events import EventCode


class ZkStore(Protocol):
    def holdings(self, terminal_id: int) -> "Deferred[Holdings]":
        """What the server has seen on the device, the pulls owed and the attendance mark, read
        after every save asked for before."""

    def save_seen(self, terminal_id: int, seen: dict[str, bytes | None]) -> Deferred:
        """Digests of device copies the server has seen (None: the device holds none any more)."""

    def save_attendance_mark(self, terminal_id: int, stored: int, last: str | None) -> Deferred: ...

    def save_serial(self, terminal_id: int, serial: str) -> Deferred:
        """The serial number of the unit now at the device's place."""

    def stored_punches(self, terminal_id: int, since_ms: int) -> "Deferred[set[tuple[str | None, int, int]]]":
        """The device's punches in the event log from ``since_ms`` on, as (user id, time, credential)."""

    def report(self, rows: list[dict]) -> Deferred:
        """Monitoring events (``gateway.sync.monitor.sync_event_row``)."""


class DatabaseStore:
    """The ZkStore of a running gateway: one per database, shared by every ZK device (their
    digests go in group commits)."""

    def __init__(self, db):
        self._db = db
        self._holdings = HoldingsWriter(db)

    def holdings(self, terminal_id: int) -> Deferred:
        return self._holdings.load(terminal_id)

    def save_seen(self, terminal_id: int, seen: dict[str, bytes | None]) -> Deferred:
        return self._holdings.save(terminal_id, seen)

    def save_attendance_mark(self, terminal_id: int, stored: int, last: str | None) -> Deferred:
        return self._db.write(save_attendance_mark, terminal_id, stored, last)

    def save_serial(self, terminal_id: int, serial: str) -> Deferred:
        return self._db.write(save_serial, terminal_id, serial)

    def stored_punches(self, terminal_id: int, since_ms: int) -> Deferred:
        return self._db.read(stored_since, terminal_id, int(EventCode.VERIFY_SUCCESS), since_ms)

    def report(self, rows: list[dict]) -> Deferred:
        return self._db.write(record_sync_events, rows)
