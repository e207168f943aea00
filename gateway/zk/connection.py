"""ZkConnection: one connected ZK device as the sync core sees it (a ``TerminalConnection``).

The puller, the pusher and the event log work for ZK devices unchanged: changes found at the
device by polling (gateway/zk/poller.py) become device-origin events through the event sink,
exactly like a native terminal's keypad changes, and ``fetch_users`` answers the pull from the
tables the poll read; ``put_users`` and ``delete_users`` write the device. Every device
conversation runs one at a time (a device serves one request at a time): polls, and writes,
which the pusher's concurrent requests join into one pass with the keypad held (DISABLEDEVICE):
read the users again (a keypad change is never overwritten unseen), write in bulk uploads,
REFRESHDATA, read back what the device now holds, ENABLEDEVICE.

A device that answers what the protocol does not allow, or a table that does not parse even
with the keypad held, loses its connection with the reason; a half-read table is never used.
"""

import functools
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.sync.connection import EventSink, FetchedUsers, ListingUnsupported, Presence, TerminalInfo, UserResult
from gateway.store.database import DatabaseFailure
from gateway.zk.driver import DeviceLost, DeviceRefused, ZkLink
from gateway.zk.holdings import HoldingsWriter, save_attendance_mark, stored_punches
from gateway.zk.mapping import DeviceProfile, Unfit, held_copy, held_digest, is_text, keyable, template_format, to_device, to_server
from gateway.zk.poller import ChangeTracker, PollPlan, PollTiming, attendance_identity, new_attendance
from protocol.errors import MessageError
from protocol.events import Credential, Event, EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import UserRecordWire
from protocol.zk import bodies
from protocol.zk.commands import Command, EventFlag, ReplyCode
from protocol.zk.records import AttendanceRecord, Template, User, decode_user, encode_user

log = Logger(namespace="gateway.zk")

REALTIME_EVENTS = EventFlag.ATTLOG | EventFlag.ENROLLUSER | EventFlag.ENROLLFINGER
# ZK verify types (how the person verified) as the event log's credential sub-codes.
CREDENTIALS = {0: Credential.PIN, 1: Credential.FINGER, 2: Credential.CARD, 15: Credential.FACE}
MAX_UID = 0xFFFF
# The pusher sends one stored record to every device: parsed once, not once per device (records
# are frozen, so the parsed one is safely shared).
server_record = functools.lru_cache(maxsize=1024)(UserRecordWire.parse)
NO_TEMPLATES: list[Template] = []  # never changed: one object, so a digest kept for it stays valid


@dataclass(frozen=True)
class ZkTiming:
    request_s: float = 10.0  # per request: the client's deadline
    poll: PollTiming = PollTiming()
    upload_users: int = 64  # users per SAVE_USERTEMPS upload


@dataclass
class DeviceMemory:
    """What the gateway keeps of one device across its connections: the event ids and the
    attendance mark, loaded from the database at the first connection, then kept here, because
    events may still wait for the writer when a link drops and the next link must not reuse
    their ids or store their punches again. The change tracker is not kept: each link derives
    it from the database (gateway/zk/holdings.py)."""

    tracker: ChangeTracker | None = None  # this link's
    loaded: bool = False
    next_event_id: int = 1
    attendance_stored: int = 0
    attendance_last: str | None = None
    bulk_upload: bool = True  # False once the device answered ACK_UNKNOWN to the upload
    # The mark is stored after the punches it covers: after a restart, the first punches found
    # new are checked against the event log, so a crash between the two stores none twice.
    attendance_unsure: bool = False


@dataclass
class _Write:
    records: list[bytes] | None  # a put; None for a delete
    user_ids: list[str]
    keep_local_changes: bool
    done: defer.Deferred = field(default_factory=defer.Deferred)


class ZkConnection:
    push_bytes = 256 * 1024  # the pusher's batches of 64 users go whole; uploads are cut by upload_users

    def __init__(self, terminal_id: int, link: ZkLink, memory: DeviceMemory, *, clock, db, holdings: HoldingsWriter, events: EventSink,
                 presence: Presence, timing: ZkTiming, on_online=lambda connection: None):
        self.terminal_id = terminal_id
        self.info = TerminalInfo()
        self.closed = False
        self.online = False
        self._link = link
        self._memory = memory
        self._clock = clock
        self._db = db
        self._holdings = holdings
        self._events = events
        self._presence = presence
        self._timing = timing
        self._on_online = on_online
        self._plan = PollPlan(timing.poll)
        self._profile = DeviceProfile()
        self._users: dict[str, User] = {}  # by user id, from the last complete read
        self._templates: dict[int, list[Template]] = {}  # by uid
        self._digests: dict[str, tuple[User, list[Template], bytes]] = {}  # by user id: _held_copies' last
        self._lock = defer.DeferredLock()  # one device conversation at a time
        self._writes: list[_Write] = []
        self._poll_timer = None
        self._paused = False

    @property
    def description(self) -> str:
        return self._link.description

    @property
    def last_heard_s(self) -> float:
        return self._link.last_heard_s

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Connect, learn the device, read it whole, then come online and poll."""
        return self._begin().addErrback(self._failed, "connecting")

    @defer.inlineCallbacks
    def _begin(self):
        try:
            yield self._link.run("connect")
        except DeviceRefused as exc:
            if exc.code == ReplyCode.ACK_UNAUTH:
                raise DeviceRefused("the device refused the comm key (comm_key of its [[zk]] entry)", exc.code) from None
            raise
        yield self._learn()
        yield self._remember()
        yield self._register_events()
        yield self._lock.run(self._poll, True)
        if self.closed:
            return
        self.online = True
        if not self._presence.online(self):
            self.close("refused or removed by an administrator")
            return
        log.info("ZK terminal {tid} connected on {link} ({model}, {fw}; {n} users, fingerprint format {fmt})",
                 tid=self.terminal_id, link=self.description, model=self.info.model, fw=self.info.firmware,
                 n=len(self._users), fmt=self._profile.template_format or "unknown: templates not synced")
        self._on_online(self)
        self._schedule_poll(self._timing.poll.poll_s)

    def close(self, reason: str) -> None:
        self._link.end(reason)

    def replaced(self, by: str) -> None:
        """Never while the device is configured once: one driver dials it (a native terminal
        claiming its id is refused), but the interface asks."""
        self.close(f"replaced by {by}")

    def link_broken(self, reason: str) -> None:
        """The link is gone (ZkLink's ``on_broken``): stop polling, go offline."""
        if self.closed:
            return
        self.closed = True
        if self._poll_timer is not None and self._poll_timer.active():
            self._poll_timer.cancel()
        if self.online:
            self._presence.offline(self)

    def _failed(self, failure: Failure, doing: str) -> None:
        if self.closed:
            return None  # the link's end already said why
        if failure.check(DeviceRefused, DeviceLost, MessageError, DatabaseFailure):
            self.close(f"{doing}: {failure.getErrorMessage()}")
        else:
            log.failure("ZK terminal {tid}: {doing}", failure, tid=self.terminal_id, doing=doing)
            self.close(f"{doing}: {failure.getErrorMessage() or failure.type.__name__}")
        return None

    # -- learning the device -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def _learn(self):
        version = yield self._link.run("request", Command.GET_VERSION)
        firmware = bodies.parse_version(version.data) if version.ok else ""
        options = {}
        for name in ("~DeviceName", "~Platform", "~SerialNumber", "~ZKFPVersion"):
            options[name] = yield self._option(name)
        sizes = bodies.parse_sizes((yield self._ok(Command.GET_FREE_SIZES)).data)
        model = " ".join(v for v in (options["~DeviceName"], options["~SerialNumber"]) if v) or options["~Platform"] or "ZK device"
        self.info = TerminalInfo(model=model, firmware=firmware, max_users=sizes.users_capacity)
        self._profile = DeviceProfile(template_format=template_format(options["~ZKFPVersion"]))

    @defer.inlineCallbacks
    def _option(self, name: str):
        """An option's value; None when the device lacks it (an optional fact: fall back)."""
        reply = yield self._link.run("request", Command.OPTIONS_RRQ, bodies.option_request(name))
        if not reply.ok:
            return None
        try:
            return bodies.parse_option_assignment(reply.data)[1]
        except MessageError:
            return None

    @defer.inlineCallbacks
    def _ok(self, command: int, data: bytes = b""):
        reply = yield self._link.run("request", command, data)
        if not reply.ok:
            raise DeviceRefused(f"{Command(command).name} answered {reply}", reply.code)
        return reply

    @defer.inlineCallbacks
    def _remember(self):
        """What the server has seen of the device, from the database at every connection: loaded
        after everything the previous link stored (docs/zk.md)."""
        memory = self._memory
        held = yield self._holdings.load(self.terminal_id)
        memory.tracker = ChangeTracker(held.seen, held.owed)
        if not memory.loaded:
            through = yield self._events.stored_through(self.terminal_id)
            memory.next_event_id = max(memory.next_event_id, through + 1)
            memory.attendance_stored, memory.attendance_last = held.attendance_stored, held.attendance_last
            memory.attendance_unsure = memory.loaded = True

    @defer.inlineCallbacks
    def _register_events(self):
        reply = yield self._link.run("register_events", REALTIME_EVENTS)
        if not reply.ok:
            log.info("ZK terminal {tid} does not push real-time events ({reply}): polling only", tid=self.terminal_id, reply=reply)

    def realtime_event(self, _event) -> None:
        """A real-time event (ZkLink's ``on_realtime``): only ever a reason to poll now."""
        self._plan.urgent = True
        if self.online and not self.closed:
            self._schedule_poll(0)

    # -- polling -----------------------------------------------------------------------------------

    def _schedule_poll(self, delay: float) -> None:
        timer = self._poll_timer
        if timer is not None and timer.active():
            if timer.getTime() <= self._clock.seconds() + delay:
                return
            timer.cancel()
        self._poll_timer = self._clock.callLater(delay, self._poll_due)

    def _poll_due(self) -> None:
        self._poll_timer = None
        if self.closed:
            return
        if self._paused:
            self._schedule_poll(self._timing.poll.poll_s)
            return
        d = self._lock.run(self._poll)
        d.addErrback(self._failed, "poll failed")
        d.addCallback(lambda _: None if self.closed else self._schedule_poll(self._timing.poll.poll_s))

    @defer.inlineCallbacks
    def _poll(self, first: bool = False):
        """The counts; then the tables they or the schedule call for; news becomes events."""
        if self.closed:
            return
        plan = self._plan
        sizes = bodies.parse_sizes((yield self._ok(Command.GET_FREE_SIZES)).data)
        now = self._clock.seconds()
        if first or plan.users_due(sizes, now) or plan.templates_due(sizes, now, False):
            yield self._read_whole(self._read_tables, now, True if first else None)
            self._announce()
        plan.urgent = False
        if plan.attendance_due(sizes, now):
            yield self._read_whole(self._read_attendance, now)

    @defer.inlineCallbacks
    def _read_whole(self, read, *args):
        """A table read; when the count and the table disagree (someone enrolled or punched
        between the two) read again with the keypad held: what fails then is the device's fault."""
        try:
            yield read(*args)
        except DeviceRefused as exc:
            if exc.code is not None:
                raise
            yield self._keypad_held(read, *args)

    @defer.inlineCallbacks
    def _keypad_held(self, work, *args):
        """``work`` between DISABLEDEVICE and ENABLEDEVICE; the device is enabled again whatever happens."""
        yield self._ok(Command.DISABLEDEVICE)
        try:
            result = yield work(*args)
        except Exception:
            failure = Failure()
            if not self.closed:
                yield self._link.run("request", Command.ENABLEDEVICE).addErrback(lambda _: None)
            failure.raiseException()
        yield self._ok(Command.ENABLEDEVICE)
        return result

    @defer.inlineCallbacks
    def _read_tables(self, now: float, templates: bool | None = None):
        """Read the users, and the templates when asked (None: when due); keep them only whole."""
        read = yield self._link.run("read_users")
        users = {u.user_id: u for u in read.users}
        user_set_changed = {(u.uid, u.user_id) for u in read.users} != {(u.uid, u.user_id) for u in self._users.values()}
        by_uid = None
        if templates or (templates is None and self._plan.templates_due(read.sizes, now, user_set_changed)):
            by_uid: dict[int, list[Template]] = {}
            for t in (yield self._link.run("read_templates")).templates:
                by_uid.setdefault(t.uid, []).append(t)
            self._plan.templates_at = now
        self._users = users
        if by_uid is not None:
            self._templates = by_uid
        self._profile = DeviceProfile(read.record_size, self._profile.template_format)
        self._plan.users_at = now
        self._plan.sizes = read.sizes

    def _held_copies(self) -> dict[str, bytes]:
        """Each person's digest on the device. Kept from the last call for a person whose user
        record is equal and whose templates are the same list: most polls change nobody."""
        held, digests = {}, {}
        for user_id, user in self._users.items():
            if not keyable(user):
                continue
            templates = self._templates.get(user.uid, NO_TEMPLATES)
            known = self._digests.get(user_id)
            if known is None or known[0] != user or known[1] is not templates:
                known = (user, templates, held_digest(user, templates))
            digests[user_id] = known
            held[user_id] = known[2]
        self._digests = digests
        return held

    def _announce(self) -> None:
        """Changes made at the device since the server last saw it become device-origin events."""
        changes = self._memory.tracker.changes(self._held_copies())
        if not changes:
            return
        log.info("ZK terminal {tid}: at the device {e} enrolled, {u} edited, {d} deleted",
                 tid=self.terminal_id, e=len(changes.enrolled), u=len(changes.updated), d=len(changes.deleted))
        now_ms = self._now_ms()
        events = [self._event(now_ms, EventCode.ENROLL_SUCCESS, Origin.DEVICE, u) for u in changes.enrolled]
        events += [self._event(now_ms, EventCode.UPDATE_SUCCESS, Origin.DEVICE, u) for u in changes.updated]
        events += [self._event(now_ms, EventCode.DELETE_SUCCESS, Origin.DEVICE, u) for u in changes.deleted]
        gone = {user_id: None for user_id in changes.deleted}
        self._submit(events).addCallback(lambda _: self._save_seen(gone) if gone else None)

    @defer.inlineCallbacks
    def _read_attendance(self, now: float):
        read = yield self._link.run("read_attendance")
        memory, records = self._memory, list(read.records)
        fresh = [self._punch_fields(r) for r in new_attendance(records, memory.attendance_stored, memory.attendance_last)]
        self._plan.attendance_at, self._plan.attendance_count = now, read.sizes.records
        if not records:
            return
        if memory.attendance_unsure and fresh:
            stored = yield self._db.read(stored_punches, self.terminal_id, min(at_ms for at_ms, _, _ in fresh))
            fresh = [f for f in fresh if (f[2] or None, f[0], f[1]) not in stored]
        memory.attendance_unsure = False
        memory.attendance_stored, memory.attendance_last = len(records), attendance_identity(records[-1])
        stored, last = memory.attendance_stored, memory.attendance_last
        punches = [self._event(at_ms, EventCode.VERIFY_SUCCESS, credential, user_id) for at_ms, credential, user_id in fresh]
        d = self._submit(punches) if punches else defer.succeed(None)
        d.addCallback(lambda _: self._db.write(save_attendance_mark, self.terminal_id, stored, last))
        d.addErrback(self._log_unsaved, "the attendance mark")

    def _punch_fields(self, record: AttendanceRecord) -> tuple[int, int, str]:
        """A punch as a verify event holds it: (time in ms, credential, user id)."""
        user_id = record.user_id
        if user_id is None:  # 8-byte records know only the uid
            user_id = next((u.user_id for u in self._users.values() if u.uid == record.uid), "")
        credential = CREDENTIALS.get(record.verify_type, 0)
        return int(record.timestamp.timestamp() * 1000), int(credential), user_id if is_text(user_id) else ""

    def _event(self, at_ms: int, code: EventCode, sub_code: int, user_id: str) -> Event:
        event_id = self._memory.next_event_id
        self._memory.next_event_id += 1
        return Event(event_id, at_ms, int(code), int(sub_code), user_id)

    def _submit(self, events: list[Event]) -> defer.Deferred:
        """Events to the log; they are committed even if this link drops meanwhile (the log retries)."""
        return self._events.submit(self.terminal_id, events)

    def _save_seen(self, seen: dict[str, bytes | None]) -> defer.Deferred:
        return self._holdings.save(self.terminal_id, seen).addErrback(self._log_unsaved, "what the server has seen")

    def _log_unsaved(self, failure: Failure, what: str) -> None:
        # At worst a change is announced again after a restart: one more pull, nothing lost.
        log.warn("ZK terminal {tid}: could not store {what}: {e}", tid=self.terminal_id, what=what, e=failure.getErrorMessage())

    # -- TerminalConnection: pulls -----------------------------------------------------------------

    def holdable(self, record):
        """The copy of a server record this device can hold: the merge tells its limits from an edit."""
        return held_copy(record, self._profile)

    def fetch_users(self, user_ids: list[str]) -> defer.Deferred:
        """The device's copies, from the last complete read (the one whose change asked for the pull)."""
        records, missing, seen = [], [], {}
        for user_id in user_ids:
            user = self._users.get(user_id)
            if user is None:
                missing.append(user_id)
                continue
            templates = self._templates.get(user.uid, [])
            try:
                records.append(to_server(user, templates, self._profile))
            except MessageError as exc:
                log.warn("ZK terminal {tid}: user {user} cannot be pulled: {e}", tid=self.terminal_id, user=user_id, e=exc)
                missing.append(user_id)
                continue
            seen[user_id] = held_digest(user, templates)
            self._memory.tracker.seen_now(user_id, seen[user_id])
        if seen:
            self._save_seen(seen)
        return defer.succeed(FetchedUsers(records, missing))

    def list_digests(self, after_user_id: str, limit: int) -> defer.Deferred:
        """Not for a ZK device: it holds part of a record (docs/zk.md, "What maps to what"), so its
        copy's digest never equals the server record's, and comparing them would push to it at
        every reconciliation. Its copies are checked by the driver's own change detection."""
        return defer.fail(ListingUnsupported("a ZK device holds part of a record; the driver's change detection compares it"))

    def events_pending(self) -> defer.Deferred:
        """Nothing waits on the device: the driver makes events from what it read, and submits them at once."""
        return defer.succeed(0)

    def pause_events(self) -> None:
        self._paused = True

    def resume_events(self) -> None:
        self._paused = False

    # -- TerminalConnection: pushes ------------------------------------------------------------------

    def put_users(self, records: list[bytes], keep_local_changes: bool) -> defer.Deferred:
        return self._queue_write(_Write(records, [], keep_local_changes))

    def delete_users(self, user_ids: list[str]) -> defer.Deferred:
        return self._queue_write(_Write(None, list(user_ids), False))

    def _queue_write(self, write: _Write) -> defer.Deferred:
        if self.closed:
            return defer.fail(DeviceLost(f"ZK terminal {self.terminal_id}: link closed"))
        self._writes.append(write)
        if len(self._writes) == 1:  # the first of a pass: the pass takes every write queued by then
            self._lock.run(self._write_pass).addErrback(self._failed, "write failed")
        return write.done

    @defer.inlineCallbacks
    def _write_pass(self):
        writes, self._writes = self._writes, []
        try:
            results = yield self._keypad_held(self._apply_writes, writes)
        except Exception:
            failure = Failure()
            for write in writes:
                write.done.errback(failure)
            if not failure.check(DeviceLost):
                raise failure.value from None
            return
        for write, outcome in zip(writes, results):
            write.done.callback(outcome)

    @defer.inlineCallbacks
    def _apply_writes(self, writes: list[_Write]):
        yield self._read_tables(self._clock.seconds())
        self._announce()  # a keypad change found now is pulled, not overwritten
        unfetched = self._memory.tracker.unfetched()
        plan = _WritePlan(self._users, self._templates, self._profile, self._plan.sizes.users_capacity if self._plan.sizes else 0)
        results = []
        for write in writes:
            if write.records is None:
                results.append([plan.delete(user_id) for user_id in write.user_ids])
                continue
            outcome = []
            for raw in write.records:
                try:
                    record = server_record(raw)
                except Exception as exc:  # the server stores valid records; say so if one is not
                    log.warn("ZK terminal {tid}: a stored record does not parse ({e}); not sent", tid=self.terminal_id, e=exc)
                    continue
                if write.keep_local_changes and record.user_id in unfetched:
                    outcome.append(UserResult(record.user_id, UserStatus.LOCAL_CHANGE_PENDING))
                    continue
                result = plan.put(record)
                if result.status == UserStatus.INVALID:
                    log.warn("ZK terminal {tid}: user {user} not sent: {why}", tid=self.terminal_id, user=record.user_id, why=plan.refusals[record.user_id])
                outcome.append(result)
            results.append(outcome)
        failed = yield self._store(plan)
        results = [[UserResult(r.user_id, failed.get(r.user_id, r.status)) for r in outcome] for outcome in results]
        return results

    @defer.inlineCallbacks
    def _store(self, plan: "_WritePlan"):
        """Write what ``plan`` holds; read back what the device now holds. Returns the users the
        device refused, with their status."""
        if not (plan.writes or plan.deletes):
            return {}
        refused: dict[str, int] = {}
        size = self._profile.record_size
        refresh = bool(plan.stale_templates or plan.deletes)  # a bulk upload refreshes by itself
        # Users whose templates stay the device's own: an algorithm we do not know, or written one by one.
        own_templates = {user.user_id for user, _ in plan.writes} if self._profile.template_format is None else set()
        users = [user for user, _ in plan.writes]
        for start in range(0, len(users), self._timing.upload_users):
            chunk = plan.writes[start : start + self._timing.upload_users]
            chunk_refused, one_by_one = yield self._upload(chunk, size)
            refused.update(chunk_refused)
            if one_by_one:
                refresh = True
                own_templates.update(user.user_id for user, _ in chunk)
        for uid, fid in plan.stale_templates:
            yield self._link.run("request", Command.DELETE_USERTEMP, bodies.uid_finger(uid, fid))
        for user_id, uid in plan.deletes:
            reply = yield self._link.run("request", Command.DELETE_USER, bodies.uid_body(uid))
            if not reply.ok:
                refused[user_id] = UserStatus.NOT_FOUND
        if refresh:
            yield self._ok(Command.REFRESHDATA)
        # What was written, as the device holds it (a 28-byte record holds less).
        as_held = {user.user_id: decode_user(encode_user(user, size)) for user, _ in plan.writes if user.user_id not in refused}
        yield self._read_back(plan, as_held, own_templates)
        seen: dict[str, bytes | None] = {}
        for user, templates in plan.writes:
            if user.user_id in refused:
                continue
            held = self._users.get(user.user_id)
            if held is None:
                refused[user.user_id] = UserStatus.STORAGE_FULL
                continue
            # What was written, as the device holds it, is what the server has seen: a device copy
            # that differs (a keypad change on a device that does not lock its keypad) is the
            # device's change, announced below when the read-back showed it, else at the next poll.
            if user.user_id in own_templates:
                templates = self._templates.get(held.uid, [])
            seen[user.user_id] = held_digest(as_held[user.user_id], templates)
        for user_id, _ in plan.deletes:
            if user_id not in refused:
                seen[user_id] = None
        for user_id, digest in seen.items():
            self._memory.tracker.seen_now(user_id, digest)
        self._save_seen(seen)
        now_ms = self._now_ms()
        self._submit([self._event(now_ms, EventCode.DELETE_SUCCESS if digest is None else
                                  EventCode.UPDATE_SUCCESS if user_id in plan.held_before else EventCode.ENROLL_SUCCESS,
                                  Origin.SERVER, user_id) for user_id, digest in seen.items()])
        self._announce()
        return refused

    @defer.inlineCallbacks
    def _read_back(self, plan: "_WritePlan", as_held: dict[str, User], own_templates: set[str]):
        """What the device holds after the writes. The keypad is held, so when the counts are what
        the writes leave, it is what was read before with the writes applied; else (a device that
        does not lock its keypad, a write it dropped) the users are read again, and the templates
        when their count is off too. A keypad change the counts do not show is a difference from
        what was written, which the next poll finds and announces (``_store``)."""
        users = dict(self._users)
        templates = dict(self._templates)
        for user, written in plan.writes:
            if user.user_id in as_held:
                users[user.user_id] = as_held[user.user_id]
                if user.user_id not in own_templates:
                    templates[user.uid] = written
        for user_id, uid in plan.deletes:  # one the device refused to delete is no longer there either
            users.pop(user_id, None)
            templates.pop(uid, None)
        sizes = bodies.parse_sizes((yield self._ok(Command.GET_FREE_SIZES)).data)
        fingers = sum(len(ts) for ts in templates.values())
        if sizes.users == len(users) and sizes.fingers == fingers:
            self._users, self._templates, self._plan.sizes = users, templates, sizes
            return
        yield self._read_tables(self._clock.seconds(), templates=False)
        if self._plan.sizes.fingers == fingers:
            self._templates = templates
        else:
            yield self._read_tables(self._clock.seconds(), templates=True)

    @defer.inlineCallbacks
    def _upload(self, chunk: list[tuple[User, list[Template]]], size: int):
        """One bulk upload (SAVE_USERTEMPS); a device that lacks it gets the users one by one
        (USER_WRQ) and no templates. Returns the users refused, and whether they went one by one
        (then the device still needs REFRESHDATA)."""
        users = [user for user, _ in chunk]
        if self._memory.bulk_upload:
            try:
                yield self._link.run("save_users", users, [t for _, ts in chunk for t in ts], record_size=size)
                return {}, False
            except DeviceRefused as exc:
                if exc.code not in (ReplyCode.ACK_UNKNOWN, ReplyCode.ACK_ERROR_CMD):
                    if exc.code is None:
                        raise
                    log.warn("ZK terminal {tid}: bulk upload refused ({e}); writing the users one by one", tid=self.terminal_id, e=exc)
                else:
                    self._memory.bulk_upload = False
                    log.warn("ZK terminal {tid} does not know the bulk upload ({e}): users are written one by one, "
                             "without fingerprint templates", tid=self.terminal_id, e=exc)
        refused = {}
        for user in users:
            reply = yield self._link.run("request", Command.USER_WRQ, encode_user(user, size))
            if not reply.ok:
                refused[user.user_id] = UserStatus.STORAGE_FULL if reply.code == ReplyCode.ACK_ERROR and self._full() else UserStatus.INVALID
        return refused, True

    def _full(self) -> bool:
        sizes = self._plan.sizes
        return sizes is not None and sizes.users_free <= 0

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)


class _WritePlan:
    """What one write pass does to the device, decided against the users it holds right now."""

    def __init__(self, users: dict[str, User], templates: dict[int, list[Template]], profile: DeviceProfile, capacity: int):
        self._users = users
        self._templates = templates
        self._profile = profile
        self._capacity = capacity or MAX_UID
        self._taken = {u.uid for u in users.values()}
        self._next_free = 1
        self.writes: list[tuple[User, list[Template]]] = []
        self.stale_templates: list[tuple[int, int]] = []
        self.deletes: list[tuple[str, int]] = []
        self.held_before = set(users)
        self.refusals: dict[str, str] = {}
        self._planned: dict[str, int] = {}  # uids given in this pass, by user id

    def put(self, record) -> UserResult:
        held = self._users.get(record.user_id)
        if record.disabled:  # a ZK record cannot say "disabled": such a person is not on the device
            return self.delete(record.user_id, quiet=True)
        uid = held.uid if held is not None else self._planned.get(record.user_id) or self._free_uid()
        if uid is None:
            return UserResult(record.user_id, UserStatus.STORAGE_FULL)
        self._planned[record.user_id] = uid
        try:
            user, templates = to_device(record, uid, held, self._profile)
        except Unfit as exc:
            self.refusals[record.user_id] = str(exc)
            return UserResult(record.user_id, UserStatus.INVALID)
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

    def delete(self, user_id: str, quiet: bool = False) -> UserResult:
        held = self._users.get(user_id)
        if held is None:
            return UserResult(user_id, UserStatus.OK if quiet else UserStatus.NOT_FOUND)
        self.deletes.append((user_id, held.uid))
        return UserResult(user_id, UserStatus.OK)

    def _free_uid(self) -> int | None:
        if len(self._taken) >= self._capacity:
            return None
        while self._next_free <= MAX_UID and self._next_free in self._taken:
            self._next_free += 1
        return self._next_free if self._next_free <= MAX_UID else None


