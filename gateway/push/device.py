"""PushDevice: one ZKTeco PUSH device as the sync core sees it (a ``TerminalConnection``).

The device calls the gateway; the gateway never calls it. Its uploads become events: punches
(ATTLOG) as verify events, stored once (a resend after a lost answer is normal: it is matched by
who, when and how, against the punches of this run and, after a start or a reset of the
device's stamps, the event log); USER, FP, BIODATA, USERPIC and BIOPHOTO lines (OPERLOG) as the
device's copy of a person (faces and photos: gateway/push/faces.py), and a copy the server has
not seen as a device-origin enrolment or edit, whose pull is answered from that copy (no second
round trip). Only once what an upload brings is durable is
the device answered ``OK``. What the sync core sends becomes commands the device fetches at its
next getrequest: a put or delete is answered once its commands are stored (gateway/push/queue.py),
so the pusher's next batch need not wait for the device's next call; ``PushServer`` sends them,
bounded, again when their result is late. The device's result settles them: success is the
server-origin event in the event log, a refusal or a give-up a monitoring event; a restart loads
what was still owed.

What the server has seen of the device is kept as for ZK devices (gateway/zk/holdings.py: the
digest of each person's copy, plus the digest of the server record it was written from, which
is what lets reconciliation compare, and the stamps as the attendance mark), and the field
mapping is the ZK one (gateway/zk/mapping.py; docs/zk.md): a pulled record carries what a ZK
device holds, and a write keeps every field the device owns. At each coming online, and for
each reconciliation, the device lists its users (``DATA QUERY USERINFO`` and ``FINGERTMP``, and
its faces and photos); a person missing from the list without a keypad deletion reported (a
wiped device) is not a deletion: reconciliation puts the person back.

A device speaks PUSH 2.x (attendance) or 3.x (access control): ``dialect`` (protocol/zk/push/
dialect.py) is which, pinned by its entry or learnt from what it sends, and every command is
written in it; 3.x's uploads arrive as the same events (rtlog as punches, tabledata and querydata
as a person's records). Faces and photos are synced with 2.x devices only (docs/zk-push.md).
"""

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.logger import Logger

from gateway.sync.connection import DigestPage, FetchedUsers, ListingUnsupported, TerminalInfo, UserResult
from gateway.push.faces import (FaceAlgorithm, Listed, algorithms_in_options, copy_digest, held_piece, holdable_pictures, planned_pictures,
                                 server_faces)
from gateway.push.queue import StoredCommand
from gateway.sync.monitor import CHANGE_DROPPED, LOG_RESTARTED, PUSH_REFUSED, record_sync_events, sync_event_row
from gateway.zk.attendance import CREDENTIALS
from gateway.zk.store import ZkStore
from gateway.zk.writes import server_record
from gateway.zk.mapping import DeviceProfile, Unfit, held_digest, holdable_copy, pin_hash, pin_pair, template_format, to_device, to_server
from gateway.zk.poller import ChangeTracker
from protocol.errors import MessageError, ProtocolError
from protocol.events import Event, EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import UserRecord, record_digest
from protocol.zk.push import commands as cmd
from protocol.zk.push import v3
from protocol.zk.push.commands import PushCommand
from protocol.zk.push.dialect import DIALECTS, PUSH2, PUSH3, Dialect, evidence
from protocol.zk.push.lines import FaceLine, FingerLine, OpLog, PhotoLine, Punch, UserLine
from protocol.zk.push.server import (AttendanceUploaded, CommandsWanted, Done, InitRequested, OperationsUploaded, OptionsUploaded,
                                     OtherUpload, Pinged, PushServer, QueueFull, Registered, Request, ResultsReported, StrayResult,
                                     TableAcknowledged, TableUploaded, endpoint_of)
from protocol.zk.records import Template, User

log = Logger(namespace="gateway.push")

LINES_SKIPPED = "Device lines skipped (PUSH)"  # a monitoring event: lines of an upload that did not parse
USER_MISSING = "User missing from the device (PUSH)"  # a monitoring event: listed without a person, no deletion reported
DELETE_USER_OPS = frozenset({9, 103})  # OPLOG codes of a user deleted at the keypad (the PIN is the first object)
_CREDENTIAL_CODES = {verify: int(credential) for verify, credential in CREDENTIALS.items()}  # as the event's sub-code
RECENT_PUNCHES = 100_000  # punch identities kept per device to match resends without reading the log
LISTING_S = 120.0  # how long the sync core waits for the device to list its users
# DATA QUERY USERINFO and FINGERTMP, and of a face device BIODATA of each face Type (2, 9) and USERPIC:
# the bound on pushes keeps room for them
LISTING_COMMANDS = 5


class DeviceGone(ProtocolError):
    """The device stopped calling, or did not list its users in time."""


@dataclass
class Delivery:
    """The commands of one put or delete waiting for the device's results."""

    user_id: str
    action: str  # "enroll", "update" or "delete"
    digest: bytes | None
    written: bytes | None
    copy: tuple | None  # (USER line, finger lines) it leaves on the device; None when resumed after a restart
    command_ids: list[int] = field(default_factory=list)  # all of them: their rows go only once the group settled
    waiting: set[int] = field(default_factory=set)  # command ids without a result yet
    failure: str | None = None  # why it did not apply: a refusal or a give-up


@dataclass
class DeviceMemory:
    """What the gateway keeps of one device while it runs, across the device's online periods."""

    users: dict[str, UserLine] = field(default_factory=dict)  # by PIN (user id)
    fingers: dict[str, dict] = field(default_factory=dict)  # by PIN: fingers by number, faces and photos by their key
    loaded: bool = False
    next_event_id: int = 1
    recent: "OrderedDict[tuple, None]" = field(default_factory=OrderedDict)
    unsure: bool = True  # the next upload's punches are checked against the event log too
    attlog_stamp: int = 0
    operlog_stamp: str | None = None
    biodata: bool = False  # it sends BIODATA lines: templates go back that way
    fp_version: str | None = None
    face_algorithms: dict[int, FaceAlgorithm] = field(default_factory=dict)  # by BIODATA Type: its faces' algorithm, as it said
    from_options: bool = False  # its options named them (they win over an uploaded face's)
    photos_refused: bool = False  # it refused DATA QUERY USERPIC: its listings return no photo, so none is sent to it


class PushDevice:
    push_bytes = 64 * 1024  # the pusher's batches; the command queue bounds what waits

    def __init__(self, terminal_id: int, server: PushServer, *, clock, store: ZkStore, commands, events, presence, offline_s: float,
                 timezone_h: int = 0, metrics=None, refusals=None, on_offline_reason=lambda terminal_id, reason: None,
                 dialect: str = "auto", in_thread=defer.maybeDeferred):
        self.terminal_id = terminal_id
        self.server = server
        self.memory = DeviceMemory()
        self.info = TerminalInfo(model=f"PUSH device {server.serial}")
        self.address: str | None = None
        self.online = False
        self.last_heard_s = 0.0
        self._clock = clock
        self._store = store
        self._commands = commands  # the stored queue (gateway/push/queue.py CommandStore)
        self._events = events
        self._presence = presence
        self._offline_s = offline_s
        self._timezone_ms = timezone_h * 3_600_000
        self._metrics = metrics
        self._refusals = refusals  # counts puts and deletes the device refused or never answered (the pusher's push_refused)
        self._on_offline_reason = on_offline_reason  # why it is offline, for the page and the API
        self._in_thread = in_thread  # runs PIN hashes (PBKDF2, about 2 ms each) off the reactor thread
        self._tracker = ChangeTracker({})
        self._written: dict[str, bytes] = {}  # user id -> digest of the server record the seen copy was written from
        self._profile = DeviceProfile()
        self._lock = defer.DeferredLock()  # one upload at a time: a resend waits for the first to be stored
        self._deliveries: dict[int, Delivery] = {}  # group id (its first command's) -> what waits for results
        self._delivery_of: dict[int, int] = {}  # command id -> its group id
        self._storing = 0  # commands being stored, not queued in the server yet: they count against its bound
        # user id -> (USER line or None, finger lines) the device holds once its waiting commands are applied
        self._expected: dict[str, tuple[UserLine | None, dict]] = {}
        self._listing: tuple[dict, dict] | None = None  # users and fingers of a DATA QUERY under way
        self._listing_ids: set[int] = set()
        self._asked: set[int | str] = set()  # what the listing under way asked for besides users and fingers: face Types, "USERPIC"
        self._listed: list[defer.Deferred] = []  # wait for the listing under way
        self._listed_next: list[defer.Deferred] = []  # asked for a fresh one while another was under way: wait for the next
        self._complete = False  # memory holds the device's whole user list, kept up to date since
        self._keypad_deleted: set[str] = set()
        self._silence = None
        self._paused = False
        self._arriving = defer.DeferredLock()  # the requests of a device coming online wait for one another
        # PUSH 2.x or 3.x: the [[push.devices]] entry's ``push_version``, else what the device shows of itself
        # (protocol/zk/push/dialect.py), 2.x until it shows 3.x (an attendance device is never sent 3.x).
        self._pinned = DIALECTS.get(dialect)
        self.dialect = self._pinned or PUSH2
        self._registered = False  # a 3.x device registered in this run: its hello is answered registry=ok
        self._doors = 1  # 3.x: its LockCount (registration), the doors a person new to it is let through

    @property
    def description(self) -> str:
        return f"push {self.address}"

    # -- requests -----------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def handle(self, request: Request, address: str):
        """Answer one request: fires with (HTTP status, body), or fails with RequestError. The request
        is read only once the device is online, its stored commands loaded: a result it posts first,
        after a restart of the gateway or an absence, then settles the command it answers instead of
        being taken for stray (and the command sent again)."""
        self._heard(address)
        self._learn_dialect(request)
        if not self.online:
            admitted = yield self._arriving.run(self._come_online)
            if not admitted:
                return 403, b"refused"
        event = self.server.receive(request, self._clock.seconds())
        self._expire()
        if isinstance(event, InitRequested):
            if self.dialect is PUSH3:
                return 200, self.server.v3_answer(hello=event.endpoint == "cdata", registered=self._registered)
            return 200, self.server.init_answer(self._stamps(), event.push_version)
        if isinstance(event, Registered):
            self._registered = True
            self._doors = _number(event.info.get("LockCount")) or self._doors
            self._learn(event.info.get("FirmVer", ""), event.info.get("FPVersion") or event.info.get("ZKFPVersion"))
            return 200, self.server.registry_answer()
        if isinstance(event, CommandsWanted):
            self._learn(event.info.get("firmware", ""), event.info.get("fp_version"))
            return 200, cmd.render_commands(self.server.commands_to_send(self._clock.seconds()))
        if isinstance(event, ResultsReported):
            self._settle(event)
            return 200, b"OK"
        if isinstance(event, OptionsUploaded):
            self._learn_faces(algorithms_in_options(event.options), from_options=True)
            return 200, b"OK"
        if isinstance(event, (Pinged, OtherUpload)):
            return 200, b"OK"
        if isinstance(event, TableAcknowledged):
            return 200, v3.table_answer(event.table, event.count)
        if self._paused:  # the writer is behind: the device keeps its data and retries after ErrorDelay
            return 503, b"busy, retry"
        if isinstance(event, AttendanceUploaded):
            stored = yield self._lock.run(self._store_punches, event)
            return 200, self.server.ok(stored if event.table == "ATTLOG" else None)
        if isinstance(event, OperationsUploaded):
            count = yield self._lock.run(self._take_operations, event)
            return 200, v3.table_answer(event.table, count) if isinstance(event, TableUploaded) else self.server.ok(count)
        return 400, b"unexpected request"

    def _heard(self, address: str) -> None:
        self.address = address
        self.last_heard_s = self._clock.seconds()
        if self._silence is not None and self._silence.active():
            self._silence.reset(self._offline_s)
        else:
            self._silence = self._clock.callLater(self._offline_s, self._silent)

    def _learn_dialect(self, request: Request) -> None:
        """Take the dialect the request shows, unless the entry pins one. A listing asked for in the
        other dialect is asked again in this one (the device refuses the other's syntax)."""
        if self._pinned is not None:
            return
        shown = evidence(request.method, endpoint_of(request.path), {k.lower(): v for k, v in request.query.items()})
        if shown is not None and shown is not self.dialect:
            self._switch_dialect(shown, "what it sent")

    def _switch_dialect(self, dialect: Dialect, why: str) -> None:
        log.info("PUSH device {sn} speaks PUSH {was} no more but {now} ({why})", sn=self.server.serial, was=self.dialect.name,
                 now=dialect.name, why=why)
        self.dialect = dialect
        if dialect is PUSH3:
            self.memory.face_algorithms.clear()  # faces and photos are not synced with a 3.x device
        if self._listing is not None:
            self.server.discard(self._listing_ids)
            self._listing, self._listing_ids = None, set()
            self._start_listing()

    def _learn(self, firmware: str, fp_version: str | None) -> None:
        if fp_version and fp_version != self.memory.fp_version:
            self.memory.fp_version = fp_version
            self._profile = DeviceProfile(template_format=template_format(fp_version))
        if firmware and firmware != self.info.firmware:
            self.info = TerminalInfo(model=self.info.model, firmware=firmware)

    # -- online and offline ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _come_online(self):
        if self.online:  # a request that waited for another one's coming online
            return True
        held = yield self._store.holdings(self.terminal_id)
        memory = self.memory
        seen = {user_id: digest[:8] for user_id, digest in held.seen.items()}
        self._written = {user_id: digest[8:] for user_id, digest in held.seen.items() if len(digest) > 8}
        self._tracker = ChangeTracker(seen, held.owed)
        if not memory.loaded:
            through = yield self._events.stored_through(self.terminal_id)
            memory.next_event_id = max(memory.next_event_id, through + 1)
            memory.attlog_stamp = held.attendance_stored
            memory.operlog_stamp = held.attendance_last
            memory.loaded = True
        owed = yield self._commands.load(self.terminal_id)
        self._resume(owed)  # before the listing, which then sees them applied
        self._start_listing()
        self.online = True
        if not self._presence.online(self):
            self._go_offline("refused or removed by an administrator")
            return False
        log.info("PUSH device {sn} (terminal {tid}) online from {address}", sn=self.server.serial, tid=self.terminal_id, address=self.address)
        return True

    def _silent(self) -> None:
        self._silence = None
        if self.online:
            self._go_offline(f"silent for {self._offline_s:g} s")

    def _go_offline(self, reason: str) -> None:
        was_online, self.online = self.online, False
        self._complete = False
        self._listing, self._listing_ids = None, set()
        failure = DeviceGone(f"PUSH device {self.server.serial}: {reason}")
        # What was owed stays stored, and is loaded again at its next coming online.
        self.server.drop_all()
        self._deliveries.clear()
        self._delivery_of.clear()
        self._expected.clear()
        self._fail_listing(failure)
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        self._silence = None
        if was_online:
            log.info("PUSH device {sn} (terminal {tid}) offline: {reason}", sn=self.server.serial, tid=self.terminal_id, reason=reason)
            self._presence.offline(self)
            self._on_offline_reason(self.terminal_id, reason)

    def close(self, reason: str) -> None:
        """Offline now; its next request goes through admission again."""
        self._go_offline(reason)

    def replaced(self, by: str) -> None:
        self.close(f"replaced by {by}")

    def pause_events(self) -> None:
        self._paused = True

    def resume_events(self) -> None:
        self._paused = False

    # -- the device's user list ------------------------------------------------------------------------

    def _start_listing(self) -> None:
        """Ask the device for every user and template; until both results are in, uploads are
        collected as the new list."""
        if self._listing is not None:
            return
        self._listing, self._listing_ids, self._asked = ({}, {}), set(), set()
        self._ask_listing(self.dialect.listing(self.memory.biodata))
        self._ask_pictures()

    def _ask_pictures(self) -> None:
        """Ask the listing under way for the faces of each Type and the photos not asked for yet
        (a Type is asked once: at most LISTING_COMMANDS wait for a listing)."""
        listed = self._listable()
        types = sorted({a.type for a in listed.algorithms} - self._asked)
        photos = listed.photos and "USERPIC" not in self._asked
        self._asked.update(types, ["USERPIC"] if photos else [])
        self._ask_listing([cmd.query_faces(t) for t in types] + ([cmd.query_photos()] if photos else []))

    def _listable(self) -> Listed:
        """What of faces and photos the device's listing returns (gateway/push/faces.py): nothing of a 3.x
        device (not synced, docs/zk-push.md), photos of a 2.x face device unless it refused their query."""
        if self.dialect is not PUSH2:
            return Listed()
        algorithms = tuple(self.memory.face_algorithms.values())
        return Listed(algorithms, photos=bool(algorithms) and not self.memory.photos_refused)

    def _ask_listing(self, texts: list[str]) -> None:
        if not texts:
            return
        ids = self.server.new_ids(len(texts))
        # Never refused: pushes stop LISTING_COMMANDS short of the bound, and one listing is under way at a time.
        self.server.take([PushCommand(i, text) for i, text in zip(ids, texts)])
        self._listing_ids.update(ids)

    def _learn_faces(self, algorithms: list[FaceAlgorithm], from_options: bool) -> None:
        """The device named face algorithms (its options, or a face it uploaded): faces of those go to it,
        and its listings ask for its faces and photos; a listing under way asks for a Type not asked yet,
        else a new one starts (what it holds of them was not listed yet). One algorithm per BIODATA
        Type, the options' over an uploaded face's (a face of another MajorVer is one the device holds,
        not a second algorithm: else each line of a new MajorVer would add one, and a query). Not for a
        3.x device: its faces and photos are not synced (docs/zk-push.md, "Not done yet")."""
        if self.dialect is PUSH3:
            return
        memory = self.memory
        known = memory.face_algorithms
        if from_options:
            new = {a.type: a for a in algorithms}
            memory.from_options = True
        else:
            new = {a.type: a for a in algorithms if a.type not in known and not memory.from_options}
        new = {t: a for t, a in new.items() if known.get(t) != a}
        if not new:
            return
        had_types = set(known)
        known.update(new)
        log.info("PUSH device {sn}: face algorithms {names}", sn=self.server.serial, names=", ".join(sorted(a.name for a in known.values())))
        if self._listing is not None:
            self._ask_pictures()
        elif self.online and set(new) - had_types:
            self._start_listing()

    def _when_listed(self, fresh: bool = False) -> defer.Deferred:
        """Fires once memory holds the device's whole user list (``fresh``: listed again now)."""
        if not self.online:
            return defer.fail(DeviceGone(f"PUSH device {self.server.serial} is offline"))
        if fresh and self._listing is not None:
            # The listing under way was asked for before this question: what it gathers may be
            # older than what the caller wants to compare (a wipe just now), so wait for the next.
            waiters = self._listed_next
        else:
            if self._complete and not fresh:
                return defer.succeed(None)
            # A listing again (reconciliation: pushes and pulls go on from memory meanwhile), or
            # the first since the last one was given up.
            self._start_listing()
            waiters = self._listed
        d = defer.Deferred()
        waiters.append(d)

        def too_late():
            for waiting in (self._listed, self._listed_next):
                if d in waiting:
                    waiting.remove(d)
                    d.errback(DeviceGone(f"PUSH device {self.server.serial} did not list its users within {LISTING_S:g} s"))

        timer = self._clock.callLater(LISTING_S, too_late)

        def settled(result):
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(settled)

    def _listing_done(self, command: PushCommand, code: int) -> None:
        """A result of the listing under way. A refused user query ends it as failed (a device that
        lists no users is not a wiped one); ``-629`` ("no such table") to 2.x's user query is a 3.x
        device that has not shown itself yet (it was mid-session when the gateway started)."""
        if code < 0 and command.text == self.dialect.list_users:
            if code == v3.REFUSED_TABLE and self.dialect is PUSH2 and self._pinned is None:
                self._switch_dialect(PUSH3, f"it refused {PUSH2.list_users} with {code}")
                return
            self.server.discard(self._listing_ids)
            self._listing, self._listing_ids = None, set()
            self._fail_listing(ListingUnsupported(f"PUSH device {self.server.serial} refused to list its users ({command.text}: {code})"))
            return
        self._listing_ids.discard(command.id)
        if code < 0:
            log.warn("PUSH device {sn} refused {query} ({code})", sn=self.server.serial, query=command.text, code=code)
            if command.text == cmd.query_photos():
                self._refused_photos()
        if self._listing_ids or self._listing is None:
            return
        users, fingers = self._listing
        self._listing = None
        self.memory.users, self.memory.fingers = users, fingers
        self._complete = True
        self._announce()
        waiting, self._listed = self._listed, []
        if self._listed_next:
            self._listed, self._listed_next = self._listed_next, []
            self._start_listing()
        for d in waiting:
            d.callback(None)

    def _refused_photos(self) -> None:
        """The device refused DATA QUERY USERPIC: its listings return no photo, so none is sent to it
        and its copies' digests leave the photo out; what the server has seen of a copy is digested
        so too (from memory, not replaced by this listing yet), else the copy would look edited."""
        before = self._held()
        self.memory.photos_refused = True
        after, seen = self._held(), self._tracker.seen
        redigested = {u: after[u] for u, digest in before.items() if seen.get(u) == digest != after[u]}
        seen.update(redigested)  # not seen_now: a pull still owed stays owed
        self._save_seen(redigested)

    def _fail_listing(self, failure: Exception) -> None:
        waiting, self._listed, self._listed_next = self._listed + self._listed_next, [], []
        for d in waiting:
            d.errback(failure)

    # -- uploads ------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _store_punches(self, upload: AttendanceUploaded):
        memory = self.memory
        self._skipped(upload.bad, upload.table)
        stamp = _number(upload.stamp)
        if stamp is not None and memory.attlog_stamp and stamp < memory.attlog_stamp:
            self._monitor(LOG_RESTARTED, f"the device's ATTLOG stamp went back from {memory.attlog_stamp} to {stamp} "
                                         f"(reset or replaced): its punches are checked against the log and stored once")
            memory.unsure = True
        recent = memory.recent
        fresh = dict.fromkeys(key for key in map(self._punch_key, upload.punches) if key not in recent)  # in order, once each
        if memory.unsure and fresh:
            stored = yield self._store.stored_punches(self.terminal_id, min(key[1] for key in fresh))
            fresh = dict.fromkeys(key for key in fresh if key not in stored)
        memory.unsure = False
        if fresh:
            verified = int(EventCode.VERIFY_SUCCESS)
            yield self._submit([Event(event_id, at_ms, verified, credential, pin)
                                for event_id, (pin, at_ms, credential) in zip(self._event_ids(len(fresh)), fresh)])
        for key in fresh:
            memory.recent[key] = None
        while len(memory.recent) > RECENT_PUNCHES:
            memory.recent.popitem(last=False)
        if stamp is not None:
            memory.attlog_stamp = stamp
            self._save_stamps()
        return len(upload.punches) + len(upload.bad)

    def _punch_key(self, punch: Punch) -> tuple[str, int, int]:
        """A punch's identity as the event log holds it: (user id, time in ms UTC, credential)."""
        return punch.pin, punch.local_seconds() * 1000 - self._timezone_ms, _CREDENTIAL_CODES.get(punch.verify, 0)

    @defer.inlineCallbacks
    def _take_operations(self, upload: OperationsUploaded):
        self._skipped(upload.bad, upload.table)
        memory = self.memory
        for item in upload.items:
            for users, fingers in self._holders():
                if isinstance(item, UserLine):
                    users[item.pin] = item
                elif isinstance(item, FingerLine):
                    fingers.setdefault(item.pin, {})[item.fid] = item
                elif isinstance(item, (FaceLine, PhotoLine)):  # beside the fingers (gateway/push/faces.py)
                    fingers.setdefault(item.pin, {})[item.key] = held_piece(item)
                elif isinstance(item, OpLog) and item.code in DELETE_USER_OPS and item.objects:
                    users.pop(item.objects[0], None)
                    fingers.pop(item.objects[0], None)
            if isinstance(item, FingerLine) and item.kind == "BIODATA":
                memory.biodata = True
            if isinstance(item, FaceLine):
                self._learn_faces([FaceAlgorithm(item.type, item.major, item.minor)], from_options=False)
            if isinstance(item, OpLog) and item.code in DELETE_USER_OPS and item.objects:
                self._keypad_deleted.add(item.objects[0])
        if self._complete:
            yield self._announce()
        if upload.stamp is not None and upload.table == "OPERLOG":
            memory.operlog_stamp = upload.stamp[:100]
            self._save_stamps()
        return len(upload.items) + len(upload.bad)

    def _holders(self) -> list[tuple[dict, dict]]:
        """Where a change of the device's users goes: memory, and a listing under way (which
        replaces memory when it ends, and must not lose what happened meanwhile)."""
        memory = self.memory
        return [(memory.users, memory.fingers)] + ([self._listing] if self._listing is not None else [])

    def _held(self) -> dict[str, bytes]:
        fingers = self.memory.fingers
        listed = self._listable()
        return {pin: copy_digest(held_digest(_as_user(line), self._templates(pin)), fingers.get(pin, {}), listed)
                for pin, line in self.memory.users.items()}

    def _templates(self, pin: str) -> list[Template]:
        return _as_templates(self.memory.fingers.get(pin, {}))

    def _announce(self) -> defer.Deferred:
        """Changes at the device the server has not seen become device-origin events; fires once stored."""
        held = self._held()
        tracker = self._tracker
        vanished = [u for u in tracker.seen if u not in held and u not in self._keypad_deleted]
        if vanished:  # listed without them, no keypad deletion reported: a wiped device, not a decision
            log.warn("PUSH device {sn} no longer holds {n} users it did not report deleting: reconciliation puts them back",
                     sn=self.server.serial, n=len(vanished))
            for user_id in vanished:
                tracker.seen_now(user_id, None)
                self._written.pop(user_id, None)
            self._save_seen({user_id: None for user_id in vanished})
            detail = f"PUSH device {self.server.serial}: not on the device without a reported deletion: put back by reconciliation"
            rows = [sync_event_row(USER_MISSING, self.terminal_id, user_id, detail, at_ms=self._now_ms()) for user_id in vanished]
            self._events.commit_with_events(record_sync_events, rows).addErrback(self._unsaved, "monitoring events")
        self._keypad_deleted.clear()
        changes = tracker.changes(held)
        if not changes:
            return defer.succeed(None)
        log.info("PUSH device {sn}: at the device {e} enrolled, {u} edited, {d} deleted", sn=self.server.serial,
                 e=len(changes.enrolled), u=len(changes.updated), d=len(changes.deleted))
        now_ms = self._now_ms()
        events = [self._event(now_ms, EventCode.ENROLL_SUCCESS, Origin.DEVICE, u) for u in changes.enrolled]
        events += [self._event(now_ms, EventCode.UPDATE_SUCCESS, Origin.DEVICE, u) for u in changes.updated]
        events += [self._event(now_ms, EventCode.DELETE_SUCCESS, Origin.DEVICE, u) for u in changes.deleted]
        gone = {user_id: None for user_id in changes.deleted}
        return self._submit(events).addCallback(lambda _: self._save_seen(gone) if gone else None)

    def _settle(self, reported: ResultsReported) -> None:
        self._skipped(reported.bad, "devicecmd")
        for outcome in reported.outcomes:
            if isinstance(outcome, StrayResult):
                log.info("PUSH device {sn}: a result for command {id} that waits for none (answered twice, or given up): ignored",
                         sn=self.server.serial, id=outcome.result.id)
                continue
            assert isinstance(outcome, Done)
            if outcome.command.id in self._listing_ids:
                self._listing_done(outcome.command, outcome.result.code)
            code = outcome.result.code  # 0 or more is success (3.x answers a query with its row count)
            self._delivered(outcome.command.id, f"the device refused it (Return={code})" if code < 0 else None)

    def _expire(self) -> None:
        for command in self.server.expired(self._clock.seconds()):
            log.warn("PUSH device {sn}: no result for command {id} ({verb}) after {n} sends: given up", sn=self.server.serial,
                     id=command.id, verb=command.text[:40], n=self.server.timing.command_attempts)
            if command.id in self._listing_ids:
                self._listing, self._listing_ids = None, set()
                self._fail_listing(DeviceGone(f"PUSH device {self.server.serial} did not answer DATA QUERY"))
            self._delivered(command.id, f"no result after {self.server.timing.command_attempts} sends: given up")

    # -- TerminalConnection: pulls -------------------------------------------------------------------

    def fetch_users(self, user_ids: list[str]) -> defer.Deferred:
        """The copies the device uploaded (after the keypad change that asked for the pull), their
        passwords' PIN hashes made first off the reactor thread, as a ZK device's are."""
        d = self._when_listed()
        d.addCallback(lambda _: pin_hash.made(self._pin_pairs(user_ids), self._in_thread))
        return d.addCallback(lambda hashes: self._fetched(user_ids, hashes))

    def _pin_pairs(self, user_ids) -> set[tuple[str, str]]:
        """(user id, password) of the copies the device holds of these users that hold one."""
        lines = (self._device_copy(user_id)[0] for user_id in user_ids)
        return {pair for pair in (pin_pair(_as_user(line)) for line in lines if line is not None) if pair is not None}

    def _fetched(self, user_ids: list[str], hashes: dict[tuple[str, str], bytes]) -> FetchedUsers:
        records, missing, seen = [], [], {}
        for user_id in user_ids:
            line = self.memory.users.get(user_id)
            if line is None:
                missing.append(user_id)
                continue
            user, templates, pieces = _as_user(line), self._templates(user_id), self.memory.fingers.get(user_id, {})
            faces, photo, refused = server_faces(pieces)
            try:
                record = replace(to_server(user, templates, self._profile, hashes), faces=faces, photo=photo).validate()
            except MessageError as exc:
                log.warn("PUSH device {sn}: user {user} cannot be pulled: {e}", sn=self.server.serial, user=user_id, e=exc)
                missing.append(user_id)
                continue
            if refused:
                detail = f"PUSH device {self.server.serial}: not taken (too large; left on the device): {'; '.join(refused)}"
                log.warn("{detail}, user {user}", detail=detail, user=user_id)
                self._monitor(CHANGE_DROPPED, detail, user_id)
            records.append(record)
            seen[user_id] = copy_digest(held_digest(user, templates), pieces, self._listable())
            self._tracker.seen_now(user_id, seen[user_id])
            self._written.pop(user_id, None)  # the server's record is the merge of it: reconciliation compares anew
        self._save_seen(seen)
        return FetchedUsers(records, missing)

    def list_digests(self, after_user_id: str, limit: int) -> defer.Deferred:
        """The device's users as listed by a fresh DATA QUERY (asked for at the first page), each with
        the digest of the server record its copy was written from, or of its own copy when the
        server has not written this copy (a keypad change, or one the server never saw)."""
        return self._when_listed(fresh=not after_user_id).addCallback(lambda _: self._page(after_user_id, limit))

    def _page(self, after_user_id: str, limit: int) -> DigestPage:
        held = self._held()
        ids = sorted(u for u in held if u > after_user_id)
        page = {}
        for user_id in ids[:limit]:
            digest = held[user_id]
            written = self._written.get(user_id)
            page[user_id] = written if written and self._tracker.seen.get(user_id) == digest else digest
        return DigestPage(page, len(ids) > limit)

    def holdable(self, record: UserRecord) -> UserRecord:
        return replace(holdable_copy(record, self._profile), **holdable_pictures(record, self._listable()))

    def digest_of(self, record: bytes) -> bytes:
        """A copy the server wrote is listed by the digest of the record it was written from."""
        return record_digest(record)

    def events_pending(self) -> defer.Deferred:
        """Nothing waits on the device that the gateway could ask for: it uploads as things happen."""
        return defer.succeed(0)

    # -- TerminalConnection: pushes --------------------------------------------------------------------

    def put_users(self, records: list[bytes], keep_local_changes: bool) -> defer.Deferred:
        """Each record as commands for the device; where the server has a PIN and the device's copy
        a password, the password's hash (to compare them) is made first off the reactor thread."""
        d = self._when_listed()
        d.addCallback(lambda _: pin_hash.made(self._pin_pairs(_pinned(records)), self._in_thread))
        d.addCallback(lambda hashes: defer.gatherResults([self._put(raw, keep_local_changes, hashes) for raw in records], consumeErrors=True))
        return d.addErrback(_first_error)

    def delete_users(self, user_ids: list[str]) -> defer.Deferred:
        d = self._when_listed()
        d.addCallback(lambda _: defer.gatherResults([self._delete(u) for u in user_ids], consumeErrors=True))
        return d.addErrback(_first_error)

    def _put(self, raw: bytes, keep_local_changes: bool, hashes: dict[tuple[str, str], bytes]) -> defer.Deferred:
        record = server_record(raw)
        user_id = record.user_id
        if record.disabled:  # a ZK record cannot say "disabled": such a person is not on the device
            return self._delete(user_id, quiet=True)
        if keep_local_changes and user_id in self._tracker.unfetched():
            return defer.succeed(UserResult(user_id, UserStatus.LOCAL_CHANGE_PENDING))
        held_line, held_fingers = self._device_copy(user_id)
        held = _as_user(held_line) if held_line is not None else None
        try:
            user, templates = to_device(record, 0, held, self._profile, hashes)
        except Unfit as exc:
            log.warn("PUSH device {sn}: user {user} not sent: {why}", sn=self.server.serial, user=user_id, why=exc)
            return defer.succeed(UserResult(user_id, UserStatus.INVALID))
        had = _as_templates(held_fingers)
        if self._profile.template_format is None:
            templates, compared = [], had  # an algorithm we do not know: the device's templates stay as they are
        else:
            compared = templates
        listed = self._listable()
        after, sent = planned_pictures(record, held_fingers, listed)
        digest = copy_digest(held_digest(user, compared), after, listed)
        if held is not None and copy_digest(held_digest(held, had), held_fingers, listed) == digest:
            if user_id not in self._expected:  # what it holds now, not once commands still waiting are applied
                self._seen_written(user_id, digest, record_digest(raw))
                return defer.succeed(UserResult(user_id, UserStatus.OK))
        kind = "BIODATA" if self.memory.biodata else "FP"
        line = UserLine(_merged_fields(held_line, user))
        fingers = {t.fid: FingerLine(user_id, t.fid, t.valid, t.template, kind) for t in templates}
        dialect = self.dialect
        texts = [dialect.update_user(line.fields)] + (dialect.grant(user_id, self._doors) if held is None else [])
        texts += [dialect.update_finger(f) for f in fingers.values()]
        if self._profile.template_format is not None:
            texts += [dialect.delete_finger(user_id, t.fid, kind) for t in had if t.fid not in fingers]
        else:
            fingers = {fid: f for fid, f in held_fingers.items() if isinstance(f, FingerLine)}
        texts += [cmd.update_face(p) if isinstance(p, FaceLine) else cmd.update_photo(p) for p in sent]
        fingers.update(after)
        return self._queue(texts, user_id, "update" if held is not None else "enroll", digest, record_digest(raw), (line, fingers))

    def _delete(self, user_id: str, quiet: bool = False) -> defer.Deferred:
        if self._device_copy(user_id)[0] is None:
            return defer.succeed(UserResult(user_id, UserStatus.OK if quiet else UserStatus.NOT_FOUND))
        kind = "BIODATA" if self.memory.biodata else "FP"
        return self._queue(self.dialect.deletion(user_id, kind), user_id, "delete", None, None, (None, {}))

    def _device_copy(self, user_id: str) -> tuple[UserLine | None, dict]:
        """What the device holds of a person once the commands waiting for it are applied."""
        if user_id in self._expected:
            return self._expected[user_id]
        return self.memory.users.get(user_id), self.memory.fingers.get(user_id, {})

    def _queue(self, texts: list[str], user_id: str, action: str, digest: bytes | None, written: bytes | None,
               copy: tuple) -> defer.Deferred:
        """Store ``texts`` for the device, then queue them: the answer (OK) means stored, not applied
        (docs/zk-push.md, "The stored command queue"); QueueFull at the bound, before anything is stored."""
        bound = self.server.timing.max_commands - LISTING_COMMANDS
        if self.server.waiting + self._storing + len(texts) > bound:
            return defer.fail(QueueFull(f"{self.server.waiting + self._storing} commands wait for PUSH device {self.server.serial} "
                                        f"(at most {bound}): the push is tried again later"))
        ids = self.server.new_ids(len(texts))
        rows = [StoredCommand(i, text, ids[0], user_id, action, digest, written) for i, text in zip(ids, texts)]
        self._storing += len(rows)

        def stored(_):
            self._storing -= len(rows)
            if self.online:  # offline: its next coming online loads them
                self._expected[user_id] = copy
                self._resume(rows, copy)
            return UserResult(user_id, UserStatus.OK)

        def unstored(failure):
            self._storing -= len(rows)
            return failure

        return self._commands.add(self.terminal_id, rows, self._now_ms()).addCallbacks(stored, unstored)

    def _resume(self, rows: list[StoredCommand], copy: tuple | None = None) -> None:
        """Queue stored commands in the server (again: one queued already stays) and wait for their results.
        Without ``copy`` they were loaded from the store: sent, maybe, before a restart or an absence."""
        self.server.take([PushCommand(row.command_id, row.text) for row in rows], sent_before=copy is None)
        for row in rows:
            if row.command_id in self._delivery_of:
                continue
            delivery = self._deliveries.get(row.group_id)
            if delivery is None:
                delivery = self._deliveries[row.group_id] = Delivery(row.user_id, row.action, row.digest, row.written, copy)
            delivery.command_ids.append(row.command_id)
            delivery.waiting.add(row.command_id)
            self._delivery_of[row.command_id] = row.group_id

    def _forget(self, settled: defer.Deferred, command_ids: list[int]) -> None:
        """A settled group's commands leave the stored queue once what settled them is durable (``settled``
        fires: the server-origin event, or the refusal's monitoring event), in a later commit: a crash
        between the two sends them again after a restart and never loses the confirmation. So does a
        failure to store either: the device applies a record it holds already (a second server-origin
        event), or refuses again."""
        settled.addCallback(lambda _: self._commands.remove(self.terminal_id, command_ids))
        settled.addErrback(self._unsaved, "a settled put or delete")

    def _delivered(self, command_id: int, failure: str | None) -> None:
        """A command's result came (``failure``: refused, or given up); the last of its group settles
        the group, and only then do the group's commands leave the stored queue: a refusal is only in
        memory until then, and a group resumed without it after the device went offline or the gateway
        restarted would be taken for applied. Nothing for a command that was not a stored one (a listing)."""
        group_id = self._delivery_of.pop(command_id, None)
        if group_id is None:
            return
        delivery = self._deliveries[group_id]
        delivery.waiting.discard(command_id)
        delivery.failure = delivery.failure or failure
        if delivery.waiting:
            return
        del self._deliveries[group_id]
        user_id = delivery.user_id
        if not any(d.user_id == user_id for d in self._deliveries.values()):
            self._expected.pop(user_id, None)
        if delivery.failure is not None:
            # What the device holds is unknown now: the next listing tells, and reconciliation repairs it.
            self._expected.pop(user_id, None)
            log.warn("PUSH device {sn}: user {user}, {action}: {why}", sn=self.server.serial, user=user_id,
                     action=delivery.action, why=delivery.failure)
            detail = f"PUSH device {self.server.serial}: {delivery.action}: {delivery.failure}"
            self._forget(self._monitored(PUSH_REFUSED, detail, user_id), delivery.command_ids)
            if self._refusals is not None:
                self._refusals.inc()
            return
        if delivery.copy is not None:  # None when resumed after a restart: the listing queued after them tells memory
            line, fingers = delivery.copy
            for users, held_fingers in self._holders():
                if line is None:
                    users.pop(user_id, None)
                    held_fingers.pop(user_id, None)
                else:
                    users[user_id] = line
                    held_fingers[user_id] = dict(fingers)
        if delivery.action == "delete":
            self._tracker.seen_now(user_id, None)
            self._written.pop(user_id, None)
            self._save_seen({user_id: None})
        else:
            self._seen_written(user_id, delivery.digest, delivery.written)
        code = {"enroll": EventCode.ENROLL_SUCCESS, "update": EventCode.UPDATE_SUCCESS, "delete": EventCode.DELETE_SUCCESS}[delivery.action]
        self._forget(self._submit([self._event(self._now_ms(), code, Origin.SERVER, user_id)]), delivery.command_ids)

    # -- what is kept ---------------------------------------------------------------------------------

    def _seen_written(self, user_id: str, digest: bytes, written: bytes) -> None:
        self._tracker.seen_now(user_id, digest)
        self._written[user_id] = written
        self._save_seen({user_id: digest})

    def _save_seen(self, seen: dict[str, bytes | None]) -> None:
        if not seen:
            return
        stored = {u: (d + self._written.get(u, b"")) if d is not None else None for u, d in seen.items()}
        self._store.save_seen(self.terminal_id, stored).addErrback(self._unsaved, "what the server has seen")

    def _stamps(self) -> dict[str, str]:
        memory = self.memory
        return {"ATTLOG": str(memory.attlog_stamp) if memory.attlog_stamp else "", "OPERLOG": memory.operlog_stamp or ""}

    def _save_stamps(self) -> None:
        memory = self.memory
        self._store.save_attendance_mark(self.terminal_id, memory.attlog_stamp, memory.operlog_stamp).addErrback(self._unsaved, "its stamps")

    def _unsaved(self, failure, what: str) -> None:
        # At worst the device uploads again what it did (stored once) or a change is announced again: nothing lost.
        log.warn("PUSH device {sn}: could not store {what}: {e}", sn=self.server.serial, what=what, e=failure.getErrorMessage())

    def _skipped(self, bad, table: str) -> None:
        if not bad:
            return
        first = bad[0]
        detail = f"{len(bad)} {table} line(s) skipped; line {first.number}: {first.reason}: {first.text[:80]!r}"
        log.warn("PUSH device {sn}: {detail}", sn=self.server.serial, detail=detail)
        if self._metrics is not None:
            self._metrics.labels(table).inc(len(bad))
        self._monitor(LINES_SKIPPED, detail)

    def _monitor(self, type_: str, detail: str, user_id: str = "") -> None:
        self._monitored(type_, detail, user_id).addErrback(self._unsaved, "a monitoring event")

    def _monitored(self, type_: str, detail: str, user_id: str = "") -> defer.Deferred:
        """A monitoring event in the event log's next commit; fires once it is durable."""
        row = sync_event_row(type_, self.terminal_id, user_id, detail, at_ms=self._now_ms())
        return self._events.commit_with_events(record_sync_events, [row])

    def _event(self, at_ms: int, code: EventCode, sub_code: int, user_id: str) -> Event:
        return Event(self._event_ids(1)[0], at_ms, int(code), int(sub_code), user_id)

    def _event_ids(self, count: int) -> range:
        """The next ``count`` ids of the device's events (the log the gateway keeps for it)."""
        first = self.memory.next_event_id
        self.memory.next_event_id += count
        return range(first, first + count)

    def _submit(self, events: list[Event]) -> defer.Deferred:
        return self._events.submit(self.terminal_id, events)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)


def _pinned(records: list[bytes]) -> list[str]:
    """The users of these records that carry a PIN (a record that does not parse is refused by ``_put``)."""
    pinned = []
    for raw in records:
        try:
            record = server_record(raw)
        except MessageError:
            continue
        if record.pin_hash is not None:
            pinned.append(record.user_id)
    return pinned


def _as_user(line: UserLine) -> User:
    """A USER line as the ZK mapping's user (gateway/zk/mapping.py): the PIN is the user id."""
    return User(uid=0, user_id=line.pin, name=line.get("Name"), privilege=_number(line.get("Pri")) or 0,
                password=line.get("Passwd"), card=_card(line.get("Card")), group_id=line.get("Grp"))


def _as_templates(fingers: dict) -> list[Template]:
    """The fingerprints among a person's pieces (faces and photos sit beside them: gateway/push/faces.py)."""
    held = sorted((f for f in fingers.values() if isinstance(f, FingerLine)), key=lambda f: f.fid)
    return [Template(0, f.fid, f.template, f.valid) for f in held]


def _card(text: str) -> int:
    """``Card=12345`` or ``Card=[15CD5B07]``: the number's four bytes in hex, lowest first (the
    Security PUSH document: ``[15CD5B07]`` is 123456789); 0 for none or nonsense."""
    text = text.strip()
    try:
        if text.startswith("[") and text.endswith("]"):
            return int.from_bytes(bytes.fromhex(text[1:-1])[:4], "little")
        return int(text or "0") & 0xFFFFFFFF
    except ValueError:
        return 0


def _merged_fields(held: UserLine | None, user: User) -> tuple[tuple[str, str], ...]:
    """The device's fields with ours written over them: what we do not map (TZ, Verify, ...) stays."""
    ours = {"PIN": user.user_id, "Name": user.name, "Pri": str(user.privilege), "Passwd": user.password,
            "Card": str(user.card) if user.card else "", "Grp": user.group_id}
    if held is not None and _card(held.get("Card")) == user.card:
        ours["Card"] = held.get("Card")  # the same card, kept in the device's own notation
    fields, done = [], set()
    for key, value in held.fields if held is not None else ():
        name = next((k for k in ours if k.lower() == key.lower()), None)
        fields.append((key, ours[name] if name else value))
        done.add(name)
    fields += [(k, v) for k, v in ours.items() if k not in done]
    return tuple(fields)


def _number(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _first_error(failure):
    """gatherResults' FirstError as the error inside it, which the sync core understands."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure

