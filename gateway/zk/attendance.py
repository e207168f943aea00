"""Attendance: a ZK device's punches become verify events, each stored once.

The device's attendance log has no ids: the records not stored yet are found by the identity of
the last one stored (gateway/zk/poller.py, ``new_attendance``); their times are the device's
local time, read in its time zone (gateway/zk/clock.py); a punch whose time is outside the ZK
calendar is reported, not stored. docs/zk.md, "Change detection".
"""

from twisted.internet import defer

from gateway.zk.mapping import keyable_text
from gateway.zk.poller import attendance_identity, new_attendance
from protocol.events import Credential, EventCode
from protocol.zk.records import AttendanceRecord

# ZK verify types (how the person verified) as the event log's credential sub-codes.
CREDENTIALS = {0: Credential.PIN, 1: Credential.FINGER, 2: Credential.CARD, 15: Credential.FACE}
PUNCH_YEARS = (2000, 2099)  # what ZK time is documented to hold (docs/zk.md, "Records")


class AttendanceReading:
    """The attendance part of a ZkConnection (gateway/zk/connection.py), whose link, memory,
    store, users and device clock it uses."""

    @defer.inlineCallbacks
    def _read_attendance(self, now: float, sizes=None):
        """``sizes``: the counts just read (the last request), so the client need not ask again."""
        read = yield self._link.run("read_attendance", sizes=sizes)
        memory, records = self._memory, list(read.records)
        fresh = [self._punch_fields(r) for r in new_attendance(records, memory.attendance_stored, memory.attendance_last)]
        fresh = [f for f in fresh if f is not None]
        self._plan.attendance_at, self._plan.attendance_count = now, read.sizes.records
        if not records:
            return
        if memory.attendance_unsure and fresh:
            stored = yield self._store.stored_punches(self.terminal_id, min(at_ms for at_ms, _, _ in fresh))
            fresh = [f for f in fresh if (f[2] or None, f[0], f[1]) not in stored]
        memory.attendance_unsure = False
        memory.attendance_stored, memory.attendance_last = len(records), attendance_identity(records[-1])
        stored, last = memory.attendance_stored, memory.attendance_last
        punches = [self._event(at_ms, EventCode.VERIFY_SUCCESS, credential, user_id) for at_ms, credential, user_id in fresh]
        d = self._submit(punches) if punches else defer.succeed(None)
        d.addCallback(lambda _: self._store.save_attendance_mark(self.terminal_id, stored, last))
        d.addErrback(self._log_unsaved, "the attendance mark")

    def _punch_fields(self, record: AttendanceRecord) -> tuple[int, int, str] | None:
        """A punch as a verify event holds it: (time in ms, credential, user id); None, reported,
        for a punch whose time is outside the ZK calendar's 2000-2099 (0xFFFFFFFF reads as 2133:
        an unset or corrupt record, not a punch). A user id that is no plain text is left out."""
        user_id = record.user_id
        if user_id is None:  # 8-byte records know only the uid
            user_id = next((u.user_id for u in self._users.values() if u.uid == record.uid), "")
        if not PUNCH_YEARS[0] <= record.timestamp.year <= PUNCH_YEARS[1]:
            self._report(user_id, f"a punch of user {ascii(user_id)} at {record.timestamp.isoformat()} is outside the years "
                                  f"{PUNCH_YEARS[0]} to {PUNCH_YEARS[1]} a ZK device keeps: not stored")
            return None
        credential = CREDENTIALS.get(record.verify_type, 0)
        at_ms = int(self._device_clock.seconds(record.timestamp) * 1000)
        return at_ms, int(credential), user_id if keyable_text(user_id) else ""
