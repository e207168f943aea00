"""ZkConnection: one connected ZK device as the sync core sees it (a ``TerminalConnection``).

The puller, the pusher and the event log work for ZK devices unchanged: changes found at the
device by polling become device-origin events through the event sink, exactly like a native
terminal's keypad changes, and ``fetch_users`` answers the pull from the tables the poll read;
``put_users`` and ``delete_users`` write the device. This module is the adapter: connecting and
learning the device, the poll schedule and the table reads, pulls and the reconciliation
listing. Its parts by idea: change detection (gateway/zk/copies.py), attendance
(gateway/zk/attendance.py), write passes (gateway/zk/writes.py) and their plans and uids
(gateway/zk/plan.py). Every device conversation runs one at a time (one lock): a device serves
one request at a time. A released session (``[[zk]] session = "released"``) dials the device for
each conversation and lets it go after, so the site's own ZK software can use it between polls;
the connection stays online for the sync core meanwhile.

A device that answers what the protocol does not allow, or a table that does not parse even
with the keypad held, loses its connection with the reason; a half-read table is never used.
"""

from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.sync.connection import DigestPage, EventSink, FetchedUsers, Presence, TerminalInfo
from gateway.store.database import DatabaseFailure
from gateway.zk.attendance import AttendanceReading
from gateway.zk.clock import SET_AFTER_S, DeviceClock
from gateway.zk.copies import NO_TEMPLATES, ChangeDetection
from gateway.zk.driver import BUSY, DeviceLost, DeviceRefused, ZkLink
from gateway.zk.mapping import (CardField, DeviceProfile, device_record, held_digest, held_view, holdable_copy, id_width, pin_hash, pin_pair,
                                template_format, to_server)
from gateway.zk.poller import ChangeTracker, PollPlan, PollTiming
from gateway.zk.store import ZkStore
from gateway.zk.writes import Write, WritePasses, server_record
from protocol.errors import MessageError
from protocol.events import Event, EventCode
from protocol.records import UserRecord, UserRecordWire, record_digest
from protocol.zk import bodies
from protocol.zk.commands import Command, EventFlag, ReplyCode
from protocol.zk.errors import BodyError
from protocol.zk.records import Template, User, decode_time, encode_time

log = Logger(namespace="gateway.zk")

REALTIME_EVENTS = EventFlag.ATTLOG | EventFlag.ENROLLUSER | EventFlag.ENROLLFINGER


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
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # device records not taken, by (kind, user id): the reason reported
    # The mark is stored after the punches it covers: after a restart, the first punches found
    # new are checked against the event log, so a crash between the two stores none twice.
    attendance_unsure: bool = False


class ZkConnection(ChangeDetection, AttendanceReading, WritePasses):
    push_bytes = 256 * 1024  # the pusher's batches of 64 users go whole; uploads are cut by upload_users

    def __init__(self, terminal_id: int, link: ZkLink, memory: DeviceMemory, *, clock, store: ZkStore, events: EventSink,
                 presence: Presence, timing: ZkTiming, device_clock: DeviceClock = DeviceClock(), cards: CardField = CardField(),
                 on_online=lambda connection: None,
                 on_refill=lambda terminal_id, why: None, on_lost=lambda reason: None, redial=None, in_thread):
        """``redial``: for a released session, makes the link of each later conversation (a
        Deferred firing with a connected ZkLink, or failing with DeviceLost); None: the session
        is held. ``on_lost(reason)`` hears once that the connection is over. ``in_thread(f,
        *args)``: a Deferred of ``f(*args)`` run off the reactor thread (PIN hashes)."""
        self.terminal_id = terminal_id
        self.info = TerminalInfo()
        self.closed = False
        self.online = False
        self._link = link
        self._memory = memory
        self._clock = clock
        self._store = store
        self._events = events
        self._presence = presence
        self._timing = timing
        self._on_online = on_online
        self._device_clock = device_clock
        self._on_refill = on_refill  # (terminal id, why): the device lost what the server had put there
        self._on_lost = on_lost
        self._redial = redial
        self._in_thread = in_thread
        self._released = False  # the link was let go on purpose, between conversations
        self._redialling = False  # a released session is dialling: a link that fails now is a busy device
        self._busy_since: float | None = None  # since when a released session found the device busy
        self._serial: str | None = None  # ~SerialNumber, as this connection read it
        self._plan = PollPlan(timing.poll)
        self._profile = DeviceProfile(cards=cards)
        self._users: dict[str, User] = {}  # by user id, from the last complete read
        self._uids_in_use: set[int] = set()  # every uid of that read: a second copy of a user id's too
        self._users_read: tuple[User, ...] | None = None  # the read ``_users`` is, while nothing else changed it
        self._held: tuple[object, object, dict[str, bytes]] | None = None  # _held_copies' last: (users, templates, held)
        self._templates: dict[int, list[Template]] = {}  # by uid
        self._digests: dict[str, tuple[User, list[Template], bytes]] = {}  # by user id: _held_copies' last
        self._lock = defer.DeferredLock()  # one device conversation at a time
        self._writes: list[Write] = []
        self._poll_timer = None
        self._paused = False

    @property
    def description(self) -> str:
        return self._link.description

    @property
    def current_link(self) -> ZkLink:
        """The link of the last conversation (a released session's may be closed)."""
        return self._link

    @property
    def last_heard_s(self) -> float:
        return self._link.last_heard_s

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Connect, learn the device, read it whole, then come online and poll."""
        return self._begin().addErrback(self._failed, "connecting")

    @defer.inlineCallbacks
    def _begin(self):
        yield self._connect()
        yield self._learn()
        replaced = yield self._remember()
        # A new unit's serial number is stored only once what the server had seen of the old one is
        # forgotten: stored before, a failure in between would leave the new unit taken for the old
        # one, its missing people for keypad deletions.
        if replaced and (yield self._refill(replaced)):
            self._save_serial()
        if self._redial is None:
            yield self._register_events()  # a released session is not there to hear them
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
        if self._redial is not None:
            yield self._lock.run(self._let_go)

    def close(self, reason: str) -> None:
        if self._released:
            self._lost(reason)  # no link to end
        else:
            self._link.end(reason)

    def replaced(self, by: str) -> None:
        """Never while the device is configured once: one driver dials it (a native terminal
        claiming its id is refused), but the interface asks."""
        self.close(f"replaced by {by}")

    def link_broken(self, reason: str, link: ZkLink | None = None) -> None:
        """A link is gone (ZkLink's ``on_broken``): unless it was let go on purpose (a released
        session) or is no longer this connection's, the connection is over."""
        if (link is not None and link is not self._link) or self._released or self._redialling:
            return
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        """Stop polling, go offline, say so once."""
        if self.closed:
            return
        self.closed = True
        if self._poll_timer is not None and self._poll_timer.active():
            self._poll_timer.cancel()
        if self.online:
            self._presence.offline(self)
        # Writes no pass took yet (a released session waiting for a busy device) fail now: their
        # retry does nothing once closed, and the pusher's round would stay under way for good.
        waiting, self._writes = self._writes, []
        for write in waiting:
            write.done.errback(DeviceLost(f"ZK terminal {self.terminal_id}: {reason}"))
        self._on_lost(reason)

    # -- a released session ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _over_link(self, work, *args):
        """``work`` (a poll, a write pass) with the device: a released session dials it first and
        lets it go after, unless more work waits. Returns BUSY, without doing ``work``, when a
        released session cannot have the device (another client holds it, say)."""
        if self._released and not (yield self._reopen()):
            return BUSY
        result = yield work(*args)
        yield self._let_go()
        return result

    @defer.inlineCallbacks
    def _reopen(self):
        """Dial and CONNECT for a released session's conversation: True once connected. A device
        that cannot be had is busy (False) for up to ``timeout_s``; after that, unreachable
        (DeviceLost: the connection is over, and the terminal dials it anew with backoff)."""
        self._redialling = True
        try:
            self._link = yield self._redial()
            if self.closed:  # closed while it dialled (the gateway stopping)
                self._link.end("closed")
                return False
            yield self._connect()
        except (DeviceLost, DeviceRefused) as exc:
            self._link.end(str(exc))
            now = self._clock.seconds()
            if self._busy_since is None:
                self._busy_since = now
                log.info("ZK terminal {tid} is busy ({e}): the next conversation tries again", tid=self.terminal_id, e=exc)
            if now - self._busy_since < self._timing.request_s:
                return False
            raise DeviceLost(f"not to be had for {now - self._busy_since:.0f} s: {exc}") from None
        finally:
            self._redialling = False
        self._released, self._busy_since = False, None
        return True

    @defer.inlineCallbacks
    def _let_go(self):
        """A released session's EXIT, so the device frees its session at once; a device that does
        not answer it is let go all the same (the next conversation dials anew)."""
        if self._redial is None or self._released or self._writes or self.closed:
            return
        self._released = True
        yield self._link.run("disconnect").addErrback(lambda _: None)
        self._link.end("let go between polls (session = \"released\")")

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
    def _connect(self):
        """CONNECT (AUTH with the comm key), then ``SDKBuild=1``."""
        try:
            yield self._link.run("connect")
        except DeviceRefused as exc:
            if exc.code == ReplyCode.ACK_UNAUTH:
                raise DeviceRefused("the device refused the comm key (comm_key of its [[zk]] entry)", exc.code) from None
            raise
        yield self._sdk_build()

    @defer.inlineCallbacks
    def _sdk_build(self):
        """``SDKBuild=1``, as ZKTeco's SDK says after connecting: firmwares that hold extended
        records (72-byte users, long ids) give them to a client that has said it. A device that
        refuses the option is used as it is."""
        reply = yield self._link.run("request", Command.OPTIONS_WRQ, bodies.option_assignment("SDKBuild", "1"))
        if not reply.ok:
            log.info("ZK terminal {tid} does not take SDKBuild=1 ({reply})", tid=self.terminal_id, reply=reply)

    @defer.inlineCallbacks
    def _learn(self):
        version = yield self._link.run("request", Command.GET_VERSION)
        firmware = bodies.parse_version(version.data) if version.ok else ""
        options = {}
        for name in ("~DeviceName", "~Platform", "~SerialNumber", "~ZKFPVersion", "~PIN2Width"):
            options[name] = yield self._option(name)
        sizes = bodies.parse_sizes((yield self._ok(Command.GET_FREE_SIZES)).data)
        self._serial = options["~SerialNumber"]
        model = " ".join(v for v in (options["~DeviceName"], options["~SerialNumber"]) if v) or options["~Platform"] or "ZK device"
        drift_s = yield self._read_clock()
        self.info = TerminalInfo(model=model, firmware=firmware, max_users=sizes.users_capacity, clock_drift_s=drift_s)
        self._profile = DeviceProfile(template_format=template_format(options["~ZKFPVersion"]), cards=self._profile.cards,
                                      id_width=id_width(options["~PIN2Width"]))

    @defer.inlineCallbacks
    def _read_clock(self):
        """How far the device's clock is ahead of the gateway's (None: it would not say); set
        first when ``set_clock`` says so and it is off."""
        reply = yield self._link.run("request", Command.GET_TIME)
        try:
            if not reply.ok:
                raise BodyError(f"GET_TIME answered {reply}")
            device_local = decode_time(bodies.parse_u32(reply.data))
        except BodyError as exc:
            log.info("ZK terminal {tid}: its clock cannot be read ({e})", tid=self.terminal_id, e=exc)
            return None
        clock, now = self._device_clock, self._clock.seconds()
        drift_s = clock.drift_s(device_local, now)
        if clock.set_clock and abs(drift_s) >= SET_AFTER_S:
            yield self._ok(Command.SET_TIME, bodies.u32(encode_time(clock.local(now))))
            log.info("ZK terminal {tid}: its clock was {d:+.0f} s off the gateway's; set", tid=self.terminal_id, d=drift_s)
            return 0.0
        return drift_s

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
        after everything the previous link stored (docs/zk.md). Returns why the device is another
        unit than at its last connection (another serial number), or "" when it is the same."""
        memory = self._memory
        held = yield self._store.holdings(self.terminal_id)
        memory.tracker = ChangeTracker(held.seen, held.owed)
        replaced = ""
        if self._serial and held.serial and self._serial != held.serial:
            replaced = f"its serial number is {self._serial}, no longer {held.serial}: another unit"
        if self._serial and not held.serial:
            self._save_serial()
        if not memory.loaded:
            through = yield self._events.stored_through(self.terminal_id)
            memory.next_event_id = max(memory.next_event_id, through + 1)
            memory.attendance_stored, memory.attendance_last = held.attendance_stored, held.attendance_last
            memory.attendance_unsure = memory.loaded = True
        return replaced

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
        d = self._lock.run(self._poll_when_due)
        d.addErrback(self._failed, "poll failed")
        d.addCallback(lambda next_in: None if self.closed else self._schedule_poll(self._timing.poll.poll_s if next_in is None else next_in))

    def _poll_when_due(self):
        """A poll, unless a write pass read the device less than ``poll_s`` ago (this poll may
        have waited for that pass on the lock): then nothing, and the seconds until one is due."""
        wait = self._plan.poll_in(self._clock.seconds())
        if wait > 0:
            return defer.succeed(wait)
        return self._over_link(self._poll).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def _poll(self, first: bool = False):
        """The counts; then the tables they or the schedule call for; news becomes events."""
        if self.closed:
            return
        plan = self._plan
        sizes = bodies.parse_sizes((yield self._ok(Command.GET_FREE_SIZES)).data)
        now = self._clock.seconds()
        read_tables = first or plan.users_due(sizes, now) or plan.templates_due(sizes, now, False)
        if read_tables:
            yield self._read_whole(self._read_tables, now, True if first else None, sizes=sizes)
            self._announce()
        plan.urgent = False
        yield self._attendance_if_due(sizes, now, None if read_tables else sizes)

    def _attendance_if_due(self, sizes: bodies.Sizes, now: float, fresh: bodies.Sizes | None = None) -> defer.Deferred:
        """The attendance log, when ``sizes`` (the counts read last) and the schedule call for it;
        ``fresh``: counts read by the request just before, which the read takes instead of asking."""
        if not self._plan.attendance_due(sizes, now):
            return defer.succeed(None)
        return self._read_whole(self._read_attendance, now, sizes=fresh)

    @defer.inlineCallbacks
    def _read_whole(self, read, *args, sizes: bodies.Sizes | None = None):
        """A table read; when the count and the table disagree (someone enrolled or punched
        between the two) read again with the keypad held: what fails then is the device's fault.
        ``sizes``: counts read by the request just before, for the first read only."""
        try:
            yield read(*args, sizes=sizes)
        except DeviceRefused as exc:
            if exc.code is not None:
                raise
            yield self._keypad_held(read, *args)

    @defer.inlineCallbacks
    def _keypad_held(self, work, *args, before_release=None):
        """``work`` between DISABLEDEVICE and ENABLEDEVICE; the device is enabled again whatever
        happens. ``before_release(result)``, if given, hears the work's result before ENABLEDEVICE."""
        yield self._ok(Command.DISABLEDEVICE)
        try:
            result = yield work(*args)
            if before_release is not None:
                before_release(result)
        except Exception:
            failure = Failure()
            if not self.closed:
                yield self._link.run("request", Command.ENABLEDEVICE).addErrback(lambda _: None)
            failure.raiseException()
        yield self._ok(Command.ENABLEDEVICE)
        return result

    @defer.inlineCallbacks
    def _read_tables(self, now: float, templates: bool | None = None, sizes: bodies.Sizes | None = None):
        """Read the users, and the templates when asked (None: when due); keep them only whole.
        ``sizes``: counts read by the request just before, which the user table's read takes."""
        read = yield self._link.run("read_users", sizes=sizes)
        if read.users is self._users_read:  # the client found the same bytes: most polls
            users, user_set_changed = self._users, False
        else:
            users = self._one_uid_each(read.users)
            user_set_changed = {(u.uid, u.user_id) for u in read.users} != {(u.uid, u.user_id) for u in self._users.values()}
        by_uid = None
        if templates or (templates is None and self._plan.templates_due(read.sizes, now, user_set_changed)):
            by_uid: dict[int, list[Template]] = {}
            for t in (yield self._link.run("read_templates")).templates:
                by_uid.setdefault(t.uid, []).append(t)
            self._plan.templates_at = now
        if users is not self._users:
            self._uids_in_use = {u.uid for u in read.users}
        self._users, self._users_read = users, read.users
        if by_uid is not None:
            self._templates = by_uid
        self._profile = replace(self._profile, record_size=read.record_size)
        self._plan.users_at = now
        self._plan.sizes = read.sizes


    def _event(self, at_ms: int, code: EventCode, sub_code: int, user_id: str) -> Event:
        event_id = self._memory.next_event_id
        self._memory.next_event_id += 1
        return Event(event_id, at_ms, int(code), int(sub_code), user_id)

    def _submit(self, events: list[Event]) -> defer.Deferred:
        """Events to the log; they are committed even if this link drops meanwhile (the log retries)."""
        return self._events.submit(self.terminal_id, events)

    def _save_serial(self) -> None:
        self._store.save_serial(self.terminal_id, self._serial).addErrback(self._log_unsaved, "its serial number")

    def _save_seen(self, seen: dict[str, bytes | None]) -> defer.Deferred:
        return self._store.save_seen(self.terminal_id, seen).addErrback(self._log_unsaved, "what the server has seen")

    def _log_unsaved(self, failure: Failure, what: str) -> None:
        # At worst a change is announced again after a restart: one more pull, nothing lost.
        log.warn("ZK terminal {tid}: could not store {what}: {e}", tid=self.terminal_id, what=what, e=failure.getErrorMessage())

    # -- TerminalConnection: pulls -----------------------------------------------------------------

    def holdable(self, record: UserRecord) -> UserRecord:
        return holdable_copy(record, self._profile)

    def fetch_users(self, user_ids: list[str]) -> defer.Deferred:
        """The device's copies, from the last complete read (the one whose change asked for the
        pull). Passwords whose PIN hash is not known yet are hashed first, off the reactor thread
        (PBKDF2, about 2 ms each: a storm's every enrolment with a password), and the pull keeps
        them: a pull of more than the cache holds would lose its first."""
        users = [user for user in map(self._users.get, user_ids) if user is not None]
        return self._pin_hashes({pair for pair in map(pin_pair, users) if pair is not None}).addCallback(
            lambda hashes: self._fetched(user_ids, hashes))

    def _pin_hashes(self, pairs: set[tuple[str, str]]) -> defer.Deferred:
        return pin_hash.made(pairs, self._in_thread)

    def _fetched(self, user_ids: list[str], hashes: dict[tuple[str, str], bytes]) -> FetchedUsers:
        records, missing, seen = [], [], {}
        for user_id in user_ids:
            user = self._users.get(user_id)
            if user is None:
                missing.append(user_id)
                continue
            templates = self._templates.get(user.uid, [])
            try:
                records.append(to_server(user, templates, self._profile, hashes))
            except MessageError as exc:
                log.warn("ZK terminal {tid}: user {user} cannot be pulled: {e}", tid=self.terminal_id, user=user_id, e=exc)
                missing.append(user_id)
                continue
            seen[user_id] = held_digest(user, templates)
            self._memory.tracker.seen_now(user_id, seen[user_id])
        if seen:
            self._save_seen(seen)
        return FetchedUsers(records, missing)

    def list_digests(self, after_user_id: str, limit: int) -> defer.Deferred:
        """The people the device holds as the last complete read found them (a poll reads the user
        table every ``poll_s`` while it is small: a wipe is found there, and refilled), each with
        the digest of the part of a server record it holds (``held_view``), which ``digest_of``
        gives the server's record: equal when the device holds what the gateway would write.
        No device conversation: a hundred devices compared one after the other cost the gateway
        CPU only. People the server cannot take are left out."""
        return defer.succeed(self._digest_page(after_user_id, limit))

    def _digest_page(self, after_user_id: str, limit: int) -> DigestPage:
        ids = sorted(u for u, known in self._digests.items() if u > after_user_id and known[3] is None)
        page = {}
        for user_id in ids[:limit]:
            user = self._users[user_id]
            view = held_view(device_record(user, self._templates.get(user.uid, NO_TEMPLATES), self._profile), self._profile)
            page[user_id] = record_digest(UserRecordWire.build(view))
        return DigestPage(page, len(ids) > limit)

    def digest_of(self, record: bytes) -> bytes | None:
        view = held_view(server_record(record), self._profile)
        return None if view is None else record_digest(UserRecordWire.build(view))

    def events_pending(self) -> defer.Deferred:
        """Nothing waits on the device: the driver makes events from what it read, and submits them at once."""
        return defer.succeed(0)

    def pause_events(self) -> None:
        self._paused = True

    def resume_events(self) -> None:
        self._paused = False


    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)
