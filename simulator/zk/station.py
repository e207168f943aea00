"""ZkStation: one emulated ZK device in a simulated fleet: its port, the people at its keypad,
and what the fleet's timing and convergence check need to know about it.

It offers the keypad actions a scenario drives at any station (``enroll_new``, ``edit``,
``delete``, ``verify``, going away and coming back) and turns them into the device's own keypad
methods. A ZK device reports nothing by itself: the gateway finds changes by polling, so a
change counts as *unacknowledged* until the gateway has read the table that shows it (the user
table for users; the template table, or that one template, for fingers; the attendance table, or
an acknowledged real-time event, for punches; an empty table is read whole by its count,
GET_FREE_SIZES). The fleet settles only when none is left.
"""

import hashlib
import itertools
import random

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from protocol.zk.bodies import TEMPLATES, USERS, ATTENDANCE, parse_buffer_request, parse_uid_finger
from protocol.zk.commands import Command, EventFlag
from protocol.zk.errors import BodyError
from protocol.zk.packet import Packet
from protocol.zk.records import FINGER_SLOTS, User
from simulator.people import People
from simulator.zk.device import ZkDevice
from simulator.zk.tcp import listen

log = Logger(namespace="simulator.zk")

NAME_BYTES = 24  # a 72-byte record's name field


def fit(text: str, size: int = NAME_BYTES) -> str:
    """``text`` cut to ``size`` bytes of UTF-8 at a character boundary: what a keypad lets a person type."""
    return text.encode()[:size].decode(errors="ignore")


def template_digest(template: bytes) -> str:
    return hashlib.sha256(template).hexdigest()[:16]


class ZkStation:
    kind = "zk"
    relisten_s = 0.5  # a port given up a moment ago may not be free yet

    def __init__(self, terminal_id: int, device: ZkDevice, seed: int, reactor):
        self.terminal_id = terminal_id
        self.device = device
        self.clock = reactor
        self.rng = random.Random(seed)
        self.people = People(seed)
        self.port_number = 0
        self.away = False
        self.changed_here: dict[str, dict] = {}  # the last version of each user enrolled or edited here
        self.deleted_here: set[str] = set()  # deleted here and not sent back by the gateway since
        self._listening = None
        self._serial = itertools.count(1)
        self._unread_users: set[str] = set()  # changed at the keypad since the gateway last read the user table
        self._unread_templates: set[tuple[int, int]] = set()
        self._unread_punches = 0
        self._on_enrolled = []
        device.request_listeners.append(self._request)
        device.applied_listeners.append(self._applied)
        device.acknowledged_listeners.append(self._acknowledged)

    # -- the network side ---------------------------------------------------------------------

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        self._listening = listen(self.device, self.clock, port, interface)
        self.port_number = self._listening.getHost().port
        return self.port_number

    @property
    def online(self) -> bool:
        """A client (the gateway) holds an authenticated session."""
        factory = None if self._listening is None else self._listening.factory
        return factory is not None and any(c.session.authenticated and not c.session.closed for c in factory.connections)

    def go_offline(self) -> None:
        """Off the network: clients cut off, the port closed."""
        self.away = True
        if self._listening is not None:
            self._listening.factory.drop_connections()
            self._listening.stopListening()
            self._listening = None

    def come_back(self) -> None:
        self.away = False
        try:
            self.listen(self.port_number)
        except CannotListenError:
            self.clock.callLater(self.relisten_s, self._retry_listen)

    def _retry_listen(self) -> None:
        if not self.away and self._listening is None:
            log.warn("ZK device {tid}: port {port} not free yet; trying again", tid=self.terminal_id, port=self.port_number)
            self.come_back()

    @property
    def bytes_exchanged(self) -> int:
        factory = None if self._listening is None else self._listening.factory
        return 0 if factory is None else factory.bytes_received + factory.bytes_sent

    # -- the keypad, as scenarios drive it ----------------------------------------------------

    def watch(self, applied, enrolled) -> None:
        """``applied(user_id)`` for each user the gateway stores or deletes here; ``enrolled(user_id)``
        for each person enrolled at this keypad."""
        self.device.applied_listeners.append(lambda user_id, user: applied(user_id))
        self._on_enrolled.append(enrolled)

    def holds(self, user_id: str) -> bool:
        return self.device.user(user_id) is not None

    def enroll_new(self) -> str:
        user_id = f"{self.terminal_id}-{next(self._serial)}"
        self.enroll(self.people.person(user_id))
        return user_id

    # Each keypad action goes through the device's keypad, which keeps it waiting while the
    # gateway holds the device; what the station notes of it is noted when it is done.

    def enroll(self, record) -> None:
        """Enrol the person ``record`` (a native ``UserRecord``) as a ZK keypad allows: the name cut
        to 24 bytes, a numeric password, one card number, one finger scanned anew."""
        self.device.at_keypad(lambda: self._enroll(record))

    def _enroll(self, record) -> None:
        finger = self.rng.randrange(FINGER_SLOTS)
        user = self.device.enroll(
            record.user_id, fit(record.name), password=f"{self.rng.randrange(10_000):04d}",
            card=self.rng.randrange(1, 1 << 32), fingers={finger: self._scan()},
        )
        self._unread_templates.add((user.uid, finger))
        self._changed(record.user_id)
        for listener in self._on_enrolled:
            listener(record.user_id)

    def edit(self, user_id: str) -> None:
        """Someone at the keypad changes the name, the card, or adds a finger."""
        self.device.at_keypad(lambda: self._edit(user_id))

    def _edit(self, user_id: str) -> None:
        user = self.device.user(user_id)
        if user is None:
            return  # deleted here while this person waited at the locked keypad
        held = {fid for (uid, fid) in self.device.templates if uid == user.uid}
        free = [f for f in range(FINGER_SLOTS) if f not in held]
        choice = self.rng.randrange(3)
        if choice == 2 and free:
            self.device.add_template(user_id, free[0], self._scan())
            self._unread_templates.add((user.uid, free[0]))
        elif choice == 1:
            self.device.edit(user_id, card=self.rng.randrange(1, 1 << 32))
        else:
            self.device.edit(user_id, name=fit(self.people.name()))
        self._changed(user_id)

    def delete(self, user_id: str) -> None:
        self.device.at_keypad(lambda: self._delete(user_id))

    def _delete(self, user_id: str) -> None:
        if not self.holds(user_id):
            return  # deleted already while this person waited at the locked keypad
        self.device.delete(user_id)
        self.changed_here.pop(user_id, None)
        self.deleted_here.add(user_id)
        self._unread_users.add(user_id)

    def verify(self, user_id: str) -> None:
        """A punch; a device turns away a person it does not hold and logs nothing."""
        self.device.at_keypad(lambda: self._verify(user_id))

    def _verify(self, user_id: str) -> None:
        if self.holds(user_id):
            self.device.punch(user_id)
            self._unread_punches += 1

    def _scan(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(400, 800))

    def _changed(self, user_id: str) -> None:
        self.changed_here[user_id] = self._describe(self.device.user(user_id))
        self.deleted_here.discard(user_id)
        self._unread_users.add(user_id)

    # -- what the gateway read, and what it wrote ---------------------------------------------

    def _request(self, packet: Packet) -> None:
        try:
            if packet.command == Command.PREPARE_BUFFER:
                table = parse_buffer_request(packet.data)
                if table == USERS:
                    self._unread_users.clear()
                elif table == TEMPLATES:
                    self._unread_templates.clear()
                elif table == ATTENDANCE:
                    self._unread_punches = 0
            elif packet.command == Command.GET_USERTEMP:
                self._unread_templates.discard(parse_uid_finger(packet.data))
            elif packet.command == Command.GET_FREE_SIZES:
                self._empty_tables_read()
        except BodyError:
            return  # the session answers it ACK_ERROR; nothing was read

    def _acknowledged(self, code: EventFlag) -> None:
        """A client acknowledged a real-time event: one punch it has, if the event was a punch."""
        if code == EventFlag.ATTLOG and self._unread_punches:
            self._unread_punches -= 1

    def _empty_tables_read(self) -> None:
        """The counts show an empty table whole: a client that sees 0 users has read the user
        table (a reader skips the buffer then, as pyzk does), and with it every delete."""
        if not self.device.users:
            self._unread_users.clear()
        if not self.device.templates:
            self._unread_templates.clear()
        if not self.device.attendance:
            self._unread_punches = 0

    def _applied(self, user_id: str, user: User | None) -> None:
        if user is not None:
            self.deleted_here.discard(user_id)

    @property
    def produced(self) -> int:
        """Events this device made that the gateway must store: its punches."""
        return len(self.device.attendance)

    @property
    def unacknowledged(self) -> int:
        """Keypad changes the gateway has not read yet, and those still waiting at a locked keypad."""
        return len(self._unread_users) + len(self._unread_templates) + self._unread_punches + self.device.keypad_waiting

    # -- the end of a run -----------------------------------------------------------------------

    def _describe(self, user: User) -> dict:
        fingers = {str(fid): template_digest(t.template) for (uid, fid), t in sorted(self.device.templates.items()) if uid == user.uid}
        return dict(name=user.name, card=user.card, password=user.password, privilege=user.privilege,
                    group_id=user.group_id, fingers=fingers)

    def dump(self) -> dict:
        """This device as JSON (docs/loadtest.md): its users, what was changed here, its punches."""
        punched: dict[str, int] = {}
        for record in self.device.attendance:
            punched[record.user_id] = punched.get(record.user_id, 0) + 1
        return dict(
            terminal_id=self.terminal_id,
            kind=self.kind,
            port=self.port_number,
            fp_version=self.device.options["~ZKFPVersion"],
            punches=len(self.device.attendance),
            punched=punched,
            unacknowledged=self.unacknowledged,
            users={u.user_id: self._describe(u) for u in sorted(self.device.users.values(), key=lambda u: u.user_id)},
            changed_here=dict(sorted(self.changed_here.items())),
            deleted_here=sorted(self.deleted_here),
        )

    def forget_one(self) -> str | None:
        """Lose one user the gateway sent, telling nobody (the harness's own tests)."""
        received = sorted(u.user_id for u in self.device.users.values() if u.user_id not in self.changed_here)
        if not received:
            return None
        self.device.delete(received[0])  # a keypad delete: no client is told, no event is logged
        return received[0]
