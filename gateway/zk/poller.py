"""Change detection on a ZK device by polling: what to read when, and which differences are news.

A ZK device has no reliable enrolment events, so the driver polls. ``PollPlan`` decides from the
counts (GET_FREE_SIZES, the cheap probe) and the clock which tables to read: the user table at
every poll while it is small and on a slower schedule anyway (an edit leaves the counts alone);
no poll at all less than a poll after a write pass read the device,
templates when a count or the user set changed and on a slower schedule, attendance when its
count moved. ``ChangeTracker`` compares each person's digest with the one the server has seen
(pulled or written by the gateway, kept durably) so a change the gateway made never comes back
as a device edit, and each device edit is announced once. ``new_attendance`` finds the records
not stored yet by their own identity.
"""

from dataclasses import dataclass, field

from protocol.zk.bodies import Sizes
from protocol.zk.records import AttendanceRecord


@dataclass(frozen=True)
class PollTiming:
    poll_s: float = 5.0  # the counts, every poll
    cheap_users: int = 1000  # the user table every poll up to this many users (72 kB)
    users_s: float = 60.0  # and at least this often whatever its size
    templates_s: float = 300.0
    attendance_s: float = 30.0  # the attendance log at most this often, when its count moved

    @classmethod
    def every(cls, poll_s: float) -> "PollTiming":
        """The schedule of a ``poll_s`` setting: the slower reads keep their ratio to it."""
        return cls(poll_s=poll_s, users_s=12 * poll_s, templates_s=60 * poll_s, attendance_s=6 * poll_s)


@dataclass
class PollPlan:
    """What was read when; ``due`` says what the next poll must read."""

    timing: PollTiming
    sizes: Sizes | None = None  # the counts of the last complete read
    users_at: float | None = None
    templates_at: float | None = None
    attendance_at: float | None = None
    attendance_count: int | None = None
    urgent: bool = False  # a real-time event asked for a poll now

    def users_due(self, sizes: Sizes, now: float) -> bool:
        t = self.timing
        if (self.urgent or self.users_at is None or self.sizes is None or sizes.users != self.sizes.users
                or sizes.fingers != self.sizes.fingers):
            return True
        if now - self.users_at < t.poll_s:
            return False  # read less than a poll ago (by a write pass), and the counts have not moved since
        return sizes.users <= t.cheap_users or now - self.users_at >= t.users_s

    def poll_in(self, now: float) -> float:
        """Seconds until a poll has anything to find that a read of the device would not have
        found already: 0 when due now. A write pass reads the user table and the counts as a poll
        does, so a poll within ``poll_s`` of such a read is put off to ``poll_s`` after it (in a
        storm every delivery is a write pass: a poll between two passes only delayed the next)."""
        if self.urgent or self.users_at is None:
            return 0.0
        return max(0.0, self.users_at + self.timing.poll_s - now)

    def templates_due(self, sizes: Sizes, now: float, user_set_changed: bool) -> bool:
        return (user_set_changed or self.templates_at is None or self.sizes is None or sizes.fingers != self.sizes.fingers
                or now - self.templates_at >= self.timing.templates_s)

    def attendance_due(self, sizes: Sizes, now: float) -> bool:
        if self.attendance_at is None:
            return True
        return sizes.records != self.attendance_count and now - self.attendance_at >= self.timing.attendance_s


@dataclass
class Changes:
    enrolled: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.enrolled or self.updated or self.deleted)


class ChangeTracker:
    """Per person, the device copy the server has seen (``seen``: user id -> digest, durable) and
    the device copies announced by an event and not fetched yet (``reported``). A tracker lives
    for one link and starts from the database: ``owed`` are the pulls owed when it began, changes
    announced already, whose copies are taken as reported when first read; any other difference
    is announced (again, at worst: one more pull, never a loss)."""

    def __init__(self, seen: dict[str, bytes], owed: frozenset[str] = frozenset()):
        self.seen = seen
        self.reported: dict[str, bytes] = {}
        self._owed = set(owed)

    def changes(self, held: dict[str, bytes]) -> Changes:
        """What differs between the device's copies (``held``) and what the server has seen, and
        was not announced yet. Marks it announced."""
        found = Changes()
        for user_id, digest in held.items():
            if digest == self.seen.get(user_id) or digest == self.reported.get(user_id):
                continue
            self.reported[user_id] = digest
            if user_id in self._owed:
                continue  # its pull is owed already: it fetches this copy
            (found.updated if user_id in self.seen else found.enrolled).append(user_id)
        self._owed.clear()  # the first read settled them: what changes later is news
        found.deleted = [user_id for user_id in self.seen if user_id not in held]
        for user_id in found.deleted:
            del self.seen[user_id]
        for user_id in [u for u in self.reported if u not in held]:
            del self.reported[user_id]  # gone before it was fetched: the pull finds it missing
        return found

    def unfetched(self) -> set[str]:
        """People changed at the device and not fetched yet: a push must not overwrite them unseen."""
        return set(self.reported)

    def seen_now(self, user_id: str, digest: bytes | None) -> None:
        """The server has seen this copy (it fetched it, or the gateway wrote it); None: the
        device holds no copy (the gateway deleted it)."""
        self.reported.pop(user_id, None)
        if digest is None:
            self.seen.pop(user_id, None)
        else:
            self.seen[user_id] = digest


def attendance_identity(record: AttendanceRecord) -> str:
    """A punch's own identity: who, when, how and what (user id, time, verify type, punch)."""
    who = record.user_id if record.user_id is not None else f"uid:{record.uid}"
    return f"{who}|{record.timestamp.isoformat()}|{record.verify_type}|{record.punch}"


def new_attendance(records: list[AttendanceRecord], count: int, last: str | None) -> list[AttendanceRecord]:
    """The records after those already stored: ``count`` of them were, the last being ``last``.

    The log only grows, so the stored ones are normally the first ``count``. When the record
    there is not ``last``, the log was cleared or rewritten: the stored ones end at the last
    record with that identity, and if there is none every record is new.
    """
    if last is None or count == 0:
        return list(records)
    if count <= len(records) and attendance_identity(records[count - 1]) == last:
        return list(records[count:])
    for at in range(len(records) - 1, -1, -1):
        if attendance_identity(records[at]) == last:
            return list(records[at + 1 :])
    return list(records)
