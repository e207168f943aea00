"""WritePlan: what one write pass does to a ZK device, decided against what the device holds
right now, and which uid each person new to it gets (uids are each device's own slots).

A new person's uid is never one a keypad enrolment during the write pass took before the pass's
last look at the device, nor one of the next it would take (an upload upserts by uid: it would
erase that person, on a device that ignores DISABLEDEVICE). The pass plans on a table no older than its last look at the counts, reading
again when they moved (gateway/zk/writes.py); for enrolments during the upload itself, which
firmwares put in the lowest free uid (the emulator does) or above the highest (as pyzk picks
one), the ``KEYPAD_SLOTS`` lowest free uids and as many above the highest are left free, and a
new person gets the lowest uid left after them: holes are filled, and uids do not climb with
every pass. A pass of several uploads leaves, at each later one, the uids above the highest the
earlier ones made. docs/zk.md, "What maps to what".

No I/O: the write pass (gateway/zk/writes.py) reads the device, asks the plan, and carries it out.
"""

from collections.abc import Mapping

from gateway.sync.connection import UserResult
from gateway.zk.mapping import NO_HASHES, DeviceProfile, Unfit, held_digest, to_device
from protocol.messages import UserStatus
from protocol.zk.records import Template, User

MAX_UID = 0xFFFF
KEYPAD_SLOTS = 2  # keypad enrolments between a write pass's last look at the counts and its upload that keep their uid
KEYPAD_LOOKS = 3  # reads of the users one write pass makes while a keypad keeps enrolling; then the upload goes


class WritePlan:
    """What one write pass does to the device, decided against the users it holds right now."""

    def __init__(self, users: dict[str, User], templates: dict[int, list[Template]], profile: DeviceProfile, capacity: int,
                 uids_in_use: set[int], chunk: int = 0, hashes: Mapping[tuple[str, str], bytes] = NO_HASHES):
        """``uids_in_use``: every uid the device holds, a second copy of a user id's included.
        ``chunk``: writes per upload (0: one upload); between two, the device's highest uid has
        moved, and a keypad enrolling above the highest takes the uids after it. ``hashes``: the
        PIN hashes of the device's passwords made for this pass (``to_device``)."""
        self._users = users
        self._templates = templates
        self._profile = profile
        self._capacity = capacity or MAX_UID
        self._taken = set(uids_in_use) | {u.uid for u in users.values()}
        self._next_free = 1
        self._keypads = self._keypad_uids()
        self.writes: list[tuple[User, list[Template]]] = []
        self.stale_templates: list[tuple[int, int]] = []
        self.deletes: list[tuple[str, int]] = []
        self.held_before = set(users)
        self.refusals: dict[str, str] = {}
        self._planned: dict[str, int] = {}  # uids given in this pass, by user id
        self._chunk = chunk
        self._hashes = hashes
        self._kept_for_chunk = 0  # the last upload whose keypad uids above the highest are kept

    def put(self, record) -> UserResult:
        held = self._users.get(record.user_id)
        if record.disabled:  # a ZK record cannot say "disabled": such a person is not on the device
            return self.delete(record.user_id, quiet=True)
        uid = held.uid if held is not None else self._planned.get(record.user_id) or self._new_uid()
        if uid is None:
            return UserResult(record.user_id, UserStatus.STORAGE_FULL)
        self._planned[record.user_id] = uid
        try:
            user, templates = to_device(record, uid, held, self._profile, self._hashes)
        except Unfit as exc:
            self.refusals[record.user_id] = str(exc)
            return UserResult(record.user_id, UserStatus.INVALID, str(exc))
        had = self._templates.get(uid, []) if held is not None else []
        if self._profile.template_format is None:
            templates = []  # an algorithm we do not know: the device's templates stay as they are
            compared = had
        else:
            compared = templates
            self.stale_templates += [(uid, t.fid) for t in had if t.fid not in {n.fid for n in templates}]
        if held is None:
            self._taken.add(uid)
        if held is None or held_digest(held, had) != held_digest(user, compared):
            self.writes.append((user, templates))
        return UserResult(record.user_id, UserStatus.OK)

    def adds_people(self) -> bool:
        """Whether the plan writes someone the device did not hold (into a uid it gave them)."""
        return any(user.user_id not in self.held_before for user, _ in self.writes)

    def rewrites_held(self) -> bool:
        """Whether the plan changes or deletes someone the device holds (a read-modify-write)."""
        return bool(self.deletes or self.stale_templates) or any(user.user_id in self.held_before for user, _ in self.writes)

    def delete(self, user_id: str, quiet: bool = False) -> UserResult:
        held = self._users.get(user_id)
        if held is None:
            return UserResult(user_id, UserStatus.OK if quiet else UserStatus.NOT_FOUND)
        self.deletes.append((user_id, held.uid))
        return UserResult(user_id, UserStatus.OK)

    def _keypad_uids(self) -> set[int]:
        """The uids the keypad would give its next ``KEYPAD_SLOTS`` enrolments, by either rule."""
        lowest = []
        uid = 1
        while len(lowest) < KEYPAD_SLOTS and uid <= MAX_UID:
            if uid not in self._taken:
                lowest.append(uid)
            uid += 1
        highest = max(self._taken, default=0)
        return set(lowest) | set(range(highest + 1, min(highest + 1 + KEYPAD_SLOTS, MAX_UID + 1)))

    def _new_uid(self) -> int | None:
        """A new person's uid. The first one of a later upload also leaves the ``KEYPAD_SLOTS``
        uids above the highest the earlier uploads made: a keypad enrolling between two uploads
        takes those (the lowest free ones were kept from the start)."""
        upload = len(self.writes) // self._chunk if self._chunk else 0
        if upload > self._kept_for_chunk:
            self._kept_for_chunk = upload
            highest = max(self._taken, default=0)
            self._keypads |= set(range(highest + 1, min(highest + 1 + KEYPAD_SLOTS, MAX_UID + 1)))
        return self._free_uid()

    def _free_uid(self) -> int | None:
        """The lowest uid neither taken nor left for the keypad; None when the device is full."""
        if len(self._taken) >= self._capacity:
            return None
        while self._next_free <= MAX_UID and (self._next_free in self._taken or self._next_free in self._keypads):
            self._next_free += 1
        return self._next_free if self._next_free <= MAX_UID else None
