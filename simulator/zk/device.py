"""ZkDevice: what one emulated ZK device stores, how it answers firmware questions, and the
people at its keypad (methods tests and scenarios drive).

No I/O. Sessions (simulator/zk/session.py) read and write the store through the methods here
and subscribe to the real-time events the keypad produces. While a client holds the device
(DISABLEDEVICE) its keypad is locked, as a real one shows "working": what people do there then
waits, in order, and is done when the last client releases it (ENABLEDEVICE, or its session
ends), so a client's reads and writes between the two never meet a keypad change.
"""

import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial, wraps
from typing import Literal

from twisted.logger import Logger

from protocol.zk.bodies import Sizes
from protocol.zk.commands import EventFlag, Privilege
from protocol.zk.packet import Packet
from protocol.zk.realtime import (
    ATTENDANCE_FORMS,
    EnrolledFinger,
    RealtimeAttendance,
    encode_attendance_event,
    encode_enrolled_finger,
    encode_enrolled_user,
)
from protocol.zk.records import AttendanceRecord, Template, User, encode_user, user_table_of
from simulator.people import FAMILY, GIVEN

log = Logger(namespace="simulator.zk")

EventListener = Callable[[EventFlag, bytes], None]
AppliedListener = Callable[[str, User | None], None]  # a user id, and the user stored or None: deleted


def keypad_action(method):
    """What a person does at the keypad: done at once, or queued while a client holds the device
    (``ZkDevice.at_keypad``; the call then returns None)."""

    @wraps(method)
    def act(self, *args, **kwargs):
        return self.at_keypad(partial(method, self, *args, **kwargs))

    return act


class KeypadError(ValueError):
    """A keypad action the device refuses (a user id already enrolled, a user it does not hold,
    too many people waiting at a locked keypad)."""


@dataclass
class Firmware:
    """How this device's firmware answers, where firmwares differ (docs/zk.md sections "Emulator"
    and "Firmwares"; ``FIRMWARES`` names the variants seen in the field)."""

    version: str = "Ver 6.60 Apr 28 2015"
    inline_limit: int = 1024  # tables up to this size are answered inline to PREPARE_BUFFER
    chunks_through_prepare_data: bool = True  # READ_BUFFER answered PREPARE_DATA + DATA + ACK_OK, else DATA
    user_record_size: int = 72
    attendance_record_size: int = 40  # 8, 16, 40, or 49 (MB560-VL on 2022 firmware)
    event_size: int = 32  # an attendance event's data; a length no form has is the 32-byte form, zero-padded
    users_capacity: int = 10_000
    fingers_capacity: int = 10_000
    records_capacity: int = 100_000
    users_counted_extra: int = 0  # GET_FREE_SIZES counts this many users more than the table holds (pyzk #88)
    pin_width: int = 24  # option ~PIN2Width: the longest user id it holds
    long_ids: Literal["refuse", "truncate"] = "refuse"  # what it does with a longer one a client writes
    announced_table_bytes: int = 0  # hostile: every buffered table announced as this long, zeros past the real one
    link_bytes_per_s: int = 0  # how fast its answers leave (0: at once; 4096 a cellular link; 2 a drip)
    link_segment_bytes: int = 1460  # in pieces of at most this (a link's MSS), a small packet whole; 1 drips
    sessions: int = 0  # TCP clients served at once (0: any; 1: as most devices, another is turned away)


def firmware_variant(name: str) -> "tuple[Firmware, dict]":
    """A named variant (``simulator zk-terminal --firmware NAME``): its Firmware, and the Faults
    fields it sets."""
    firmware, faults = FIRMWARES[name]
    return replace(firmware), dict(faults)


# The variants the field shows (docs/zk.md section "Firmwares"): name -> (firmware, faults).
FIRMWARES: dict[str, tuple[Firmware, dict]] = {
    "f19": (Firmware(), {}),
    "mb560-vl": (Firmware(version="Ver 6.60 Jun 16 2022", attendance_record_size=49), {}),
    "count-plus-one": (Firmware(users_counted_extra=1), {}),
    "odd-events": (Firmware(event_size=40), {}),
    "slow-link": (Firmware(link_bytes_per_s=4096), {}),
    "pin-truncate": (Firmware(pin_width=9, long_ids="truncate"), {}),
    "pin-refuse": (Firmware(pin_width=9, long_ids="refuse"), {}),
    "no-disable": (Firmware(), {"keypad_never_held": True}),
    "huge-buffer": (Firmware(announced_table_bytes=2**31), {}),
    "drip": (Firmware(link_bytes_per_s=2, link_segment_bytes=1), {}),
}


@dataclass
class Faults:
    """How a misbehaving device answers, for tests of its clients: commands it claims not to
    know (ACK_UNKNOWN), a keypad DISABLEDEVICE does not lock, and ``mangle``, which may replace the bytes of any packet it sends on
    TCP (garbage, a wrong checksum, a truncated or oversized packet) by returning them."""

    unknown_commands: set[int] = field(default_factory=set)
    mangle: Callable[[Packet], bytes | None] | None = None
    keypad_never_held: bool = False  # answers DISABLEDEVICE ACK_OK, and its keypad goes on working


class ZkDevice:
    def __init__(
        self,
        *,
        comm_key: int = 0,
        serial_number: str = "EMU0000000001",
        fp_version: int = 10,
        firmware: Firmware | None = None,
        enrol_events: bool = False,
        clock: Callable[[], datetime] = datetime.now,
    ):
        self.comm_key = comm_key
        self.firmware = firmware or Firmware()
        self.enrol_events = enrol_events
        self.options = {
            "~SerialNumber": serial_number,
            "~ZKFPVersion": str(fp_version),
            "~Platform": "ZEM560_TFT",
            "~DeviceName": "EMU-F19",
            "~OEMVendor": "terminal-gateway simulator",
            "MAC": "00:17:61:00:00:01",
            "~PIN2Width": str(self.firmware.pin_width),
            "~ExtendFmt": "1",
            "~UserExtFmt": "1",
            "FaceFunOn": "0",
            "CompatOldFirmware": "0",
        }
        self.users: dict[int, User] = {}  # by uid
        self._encoded: dict[int, tuple[User, bytes]] = {}  # by uid: a user and its record, encoded once
        self._uids: dict[str, int] = {}  # user id to uid
        self._free_from = 1  # no uid below this is free
        self.templates: dict[tuple[int, int], Template] = {}  # by (uid, finger)
        self.attendance: list[AttendanceRecord] = []
        self._clock = clock
        self.time_offset = timedelta()
        self._listeners: list[EventListener] = []
        self.requests: Counter[int] = Counter()  # commands received, by code: what clients asked
        self.applied_listeners: list[AppliedListener] = []  # told of each user a client stored or deleted
        self.request_listeners: list[Callable[[Packet], None]] = []  # told of each packet a client sent
        self.acknowledged_listeners: list[Callable[[EventFlag], None]] = []  # told of each real-time event a client acknowledged
        self.recorded: list[Packet] | None = None  # a list to keep every packet received, in order
        self.faults = Faults()
        self._holders: set[object] = set()  # clients that sent DISABLEDEVICE and no ENABLEDEVICE yet
        self._waiting: deque[Callable[[], object]] = deque()  # keypad actions made while it was held
        self.keypad_queue = 1000  # people who may wait at a locked keypad before it refuses another

    # -- what sessions read and write --------------------------------------------------------

    def received(self, packet: Packet) -> None:
        """A packet from a client, before it is answered: counted, and shown to request listeners
        (a fleet learns from them what the gateway has read)."""
        self.requests[packet.command] += 1
        if self.recorded is not None:
            self.recorded.append(packet)
        for listener in list(self.request_listeners):
            listener(packet)

    def hold(self, client: object) -> None:
        """DISABLEDEVICE from ``client``: the keypad is locked until every holder released it."""
        self._holders.add(client)

    def release(self, client: object) -> None:
        """ENABLEDEVICE from ``client``, or its session ended: once no client holds the device,
        the keypad actions that waited are done, in the order they were made."""
        self._holders.discard(client)
        while self._waiting and not self._holders:
            action = self._waiting.popleft()
            try:
                action()
            except KeypadError as exc:  # the person would see it on the screen; here it is logged
                log.warn("ZK device {serial}: a keypad action that waited was refused: {e}", serial=self.options["~SerialNumber"], e=exc)

    def held_by(self, client: object) -> bool:
        return client in self._holders

    @property
    def disabled(self) -> bool:
        """A client holds the device: its keypad shows "working" and keypad actions wait."""
        return bool(self._holders)

    @property
    def keypad_waiting(self) -> int:
        """Keypad actions made while the device was held and not done yet."""
        return len(self._waiting)

    def at_keypad(self, action: Callable[[], object]):
        """Do ``action`` (what a person does at the keypad) now, and return its result; while a
        client holds the device, queue it and return None."""
        if not self._holders:
            return action()
        if len(self._waiting) >= self.keypad_queue:
            raise KeypadError(f"the keypad is locked and {len(self._waiting)} actions already wait")
        self._waiting.append(action)
        return None

    def now(self) -> datetime:
        return (self._clock() + self.time_offset).replace(microsecond=0)

    def set_time(self, moment: datetime) -> None:
        self.time_offset = moment - self._clock()

    def user(self, user_id: str) -> User | None:
        uid = self._uids.get(user_id)
        return None if uid is None else self.users[uid]

    def sizes(self) -> Sizes:
        fw = self.firmware
        users, fingers, records = len(self.users), len(self.templates), len(self.attendance)
        return Sizes(
            users=users + fw.users_counted_extra,
            fingers=fingers,
            records=records,
            admins=sum(u.privilege == Privilege.ADMIN for u in self.users.values()),
            passwords=sum(bool(u.password) for u in self.users.values()),
            fingers_capacity=fw.fingers_capacity,
            users_capacity=fw.users_capacity,
            records_capacity=fw.records_capacity,
            fingers_free=fw.fingers_capacity - fingers,
            users_free=fw.users_capacity - users,
            records_free=fw.records_capacity - records,
        )

    def user_table(self) -> bytes:
        """The USER table a client reads, in uid order. Each user's record is encoded once per
        version of that user: a fleet's devices answer the table at every poll and write pass."""
        size, known = self.firmware.user_record_size, self._encoded
        encoded = {}
        for uid in sorted(self.users):
            user = self.users[uid]
            was = known.get(uid)
            encoded[uid] = was if was is not None and was[0] is user and len(was[1]) == size else (user, encode_user(user, size))
        self._encoded = encoded
        return user_table_of([record for _, record in encoded.values()])

    def put_user(self, user: User) -> bool:
        """A client's upsert by uid. Refused (False) when another uid holds the user id, the
        device is full (a device keeps user ids unique), or the user id is longer than
        ~PIN2Width and the firmware refuses such ids; a firmware that truncates them stores the
        first ~PIN2Width characters."""
        fw = self.firmware
        if len(user.user_id) > fw.pin_width:
            if fw.long_ids == "refuse":
                return False
            user = replace(user, user_id=user.user_id[: fw.pin_width])
        stored = self._store(user)
        if stored:
            self._applied(user.user_id, user)
        return stored

    def _store(self, user: User) -> bool:
        holder = self.user(user.user_id)
        if holder is not None and holder.uid != user.uid:
            return False
        replaced = self.users.get(user.uid)
        if replaced is None and len(self.users) >= self.firmware.users_capacity:
            return False
        if replaced is not None:
            del self._uids[replaced.user_id]
        self.users[user.uid] = user
        self._uids[user.user_id] = user.uid
        return True

    def delete_uid(self, uid: int) -> bool:
        """A user and their templates, as a client's DELETE_USER removes them."""
        user = self.users.get(uid)
        if user is None:
            return False
        self._remove(uid)
        self._applied(user.user_id, None)
        return True

    def _remove(self, uid: int) -> bool:
        user = self.users.pop(uid, None)
        if user is None:
            return False
        del self._uids[user.user_id]
        self._free_from = min(self._free_from, uid)
        for key in [k for k in self.templates if k[0] == uid]:
            del self.templates[key]
        return True

    def put_template(self, template: Template) -> bool:
        if template.uid not in self.users:
            return False
        key = (template.uid, template.fid)
        if key not in self.templates and len(self.templates) >= self.firmware.fingers_capacity:
            return False
        self.templates[key] = template
        return True

    def delete_template(self, uid: int, fid: int) -> bool:
        return self.templates.pop((uid, fid), None) is not None

    def event_acknowledged(self, code: EventFlag) -> None:
        """A client acknowledged one real-time event of this kind (ACK_OK to the event it was sent)."""
        for listener in list(self.acknowledged_listeners):
            listener(code)

    def _applied(self, user_id: str, user: User | None) -> None:
        for listener in list(self.applied_listeners):
            listener(user_id, user)

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def event_listeners(self) -> int:
        """Sessions registered for real-time events."""
        return len(self._listeners)

    # -- the keypad: what people do at the device (None while it is locked: the action waits) --

    @keypad_action
    def enroll(self, user_id: str, name: str = "", *, password: str = "", card: int = 0, privilege: int = 0, group_id: str = "1", fingers: dict[int, bytes] | None = None) -> User | None:
        """Enrol a new person in the lowest free uid slot, with templates by finger index."""
        if self.user(user_id) is not None:
            raise KeypadError(f"user id {user_id!r} is already enrolled")
        uid = next((n for n in range(self._free_from, 0x10000) if n not in self.users), None)
        user = User(uid or 0, user_id, name, privilege, password, card, group_id)
        if uid is None or not self._store(user):
            raise KeypadError("the device is full")
        self._free_from = uid + 1
        self._emit(EventFlag.ENROLLUSER, encode_enrolled_user(user_id), enrolment=True)
        for fid, template in (fingers or {}).items():
            self.add_template(user_id, fid, template)
        return user

    @keypad_action
    def edit(self, user_id: str, **changes) -> User | None:
        """Change fields of an enrolled person (name, password, card, privilege, group_id)."""
        if "uid" in changes:
            raise KeypadError("a keypad edit keeps the uid")
        user = replace(self._held(user_id), **changes)
        self.users[user.uid] = user
        return user

    @keypad_action
    def delete(self, user_id: str) -> None:
        self._remove(self._held(user_id).uid)

    @keypad_action
    def add_template(self, user_id: str, fid: int, template: bytes, valid: int = 1) -> Template | None:
        user = self._held(user_id)
        stored = Template(user.uid, fid, template, valid)
        if not self.put_template(stored):
            raise KeypadError("no room for another fingerprint")
        self._emit(EventFlag.ENROLLFINGER, encode_enrolled_finger(EnrolledFinger(0, len(template), user_id, fid)), enrolment=True)
        return stored

    @keypad_action
    def remove_template(self, user_id: str, fid: int) -> None:
        if not self.delete_template(self._held(user_id).uid, fid):
            raise KeypadError(f"user {user_id!r} has no finger {fid}")

    @keypad_action
    def punch(self, user_id: str, at: datetime | None = None, verify_type: int = 1, punch: int = 0) -> AttendanceRecord | None:
        """Someone verifies at the device: logged, and pushed to sessions that registered ATTLOG."""
        user = self._held(user_id)
        moment = (at or self.now()).replace(microsecond=0)
        record = AttendanceRecord(user.uid, user_id, moment, verify_type, punch)
        self.attendance.append(record)
        event = RealtimeAttendance(user_id, moment, verify_type, punch)
        self._emit(EventFlag.ATTLOG, self.attendance_event(event))
        return record

    def attendance_event(self, event: RealtimeAttendance) -> bytes:
        """EF_ATTLOG data as this firmware sends it."""
        size = self.firmware.event_size
        if size in ATTENDANCE_FORMS:
            return encode_attendance_event(event, size)
        return encode_attendance_event(event, 32).ljust(size, b"\0")

    def _held(self, user_id: str) -> User:
        user = self.user(user_id)
        if user is None:
            raise KeypadError(f"no user {user_id!r} on this device")
        return user

    def _emit(self, code: EventFlag, data: bytes, enrolment: bool = False) -> None:
        if enrolment and not self.enrol_events:
            return  # as on the many firmwares that never push enrolments
        for listener in list(self._listeners):
            listener(code, data)


def populate(device: ZkDevice, count: int, seed: int = 0, fingers: int = 1) -> None:
    """Enrol ``count`` seeded people (user ids 1 to count) with ``fingers`` templates each, the way
    an installer fills a device; enrolment events are not pushed for them."""
    rng = random.Random(seed)
    pushing, device.enrol_events = device.enrol_events, False
    try:
        for n in range(1, count + 1):
            prints = {fid: rng.randbytes(rng.randint(400, 800)) for fid in sorted(rng.sample(range(10), fingers))}
            device.enroll(str(n), f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}", card=rng.randrange(1, 1 << 24), fingers=prints)
    finally:
        device.enrol_events = pushing
