"""Write passes: what the pusher sends a ZK device, written with its keypad held.

The pusher's concurrent PUT_USERS and DELETE_USERS for a device join into one pass: read the
users again (a keypad change is never overwritten unseen), plan (gateway/zk/plan.py), upload in
bulk, delete, REFRESHDATA, read back what the device now holds, and announce what was written as
the server's. docs/zk.md, "The driver".
"""

import functools
from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.sync.connection import UserResult
from gateway.zk.driver import BUSY, DeviceLost, DeviceRefused
from gateway.zk.mapping import held_digest, pin_pair
from gateway.zk.plan import KEYPAD_LOOKS, WritePlan
from protocol.events import EventCode, Origin
from protocol.messages import UserStatus
from protocol.records import UserRecordWire
from protocol.zk import bodies
from protocol.zk.commands import Command, ReplyCode
from protocol.zk.records import Template, User, decode_user, encode_user

log = Logger(namespace="gateway.zk")

# The pusher sends one stored record to every device: parsed once, not once per device (records
# are frozen, so the parsed one is safely shared).
server_record = functools.lru_cache(maxsize=1024)(UserRecordWire.parse)


@dataclass
class Write:
    records: list[bytes] | None  # a put; None for a delete
    user_ids: list[str]
    keep_local_changes: bool
    done: defer.Deferred = field(default_factory=defer.Deferred)


class WritePasses:
    """The write part of a ZkConnection (gateway/zk/connection.py), whose link, lock, tables and
    memory it uses."""

    def put_users(self, records: list[bytes], keep_local_changes: bool) -> defer.Deferred:
        return self._queue_write(Write(records, [], keep_local_changes))

    def delete_users(self, user_ids: list[str]) -> defer.Deferred:
        return self._queue_write(Write(None, list(user_ids), False))

    def _queue_write(self, write: Write) -> defer.Deferred:
        if self.closed:
            return defer.fail(DeviceLost(f"ZK terminal {self.terminal_id}: link closed"))
        self._writes.append(write)
        if len(self._writes) == 1:  # the first of a pass: the pass takes every write queued by then
            self._run_write_pass()
        return write.done

    def _run_write_pass(self) -> None:
        d = self._lock.run(self._over_link, self._write_pass)
        d.addCallback(self._write_pass_done).addErrback(self._failed, "write failed")

    def _write_pass_done(self, result) -> None:
        """A released session that found the device busy tries the pass again a poll later."""
        if result is BUSY and not self.closed:
            self._clock.callLater(self._timing.poll.poll_s, lambda: None if self.closed else self._run_write_pass())

    @defer.inlineCallbacks
    def _write_pass(self):
        writes, self._writes = self._writes, []
        answered = False

        def answer(results):
            """Before ENABLEDEVICE: the writes are on the device and read back, so the pusher's
            acknowledgement (and its cursor's commit) need not wait a round trip more."""
            nonlocal answered
            answered = True
            for write, outcome in zip(writes, results):
                write.done.callback(outcome)

        try:
            hashes = yield self._pins_hashed(writes)
            yield self._keypad_held(self._apply_writes, writes, hashes, before_release=answer)
        except Exception:
            failure = Failure()
            if not answered:
                for write in writes:
                    write.done.errback(failure)
            if not failure.check(DeviceLost):
                raise failure.value from None
            return
        if self._plan.sizes is not None:  # the pass stands for a poll (PollPlan.poll_in): punches too
            yield self._attendance_if_due(self._plan.sizes, self._clock.seconds())

    def _pins_hashed(self, writes: list[Write]) -> defer.Deferred:
        """The PIN hashes of the passwords the plan will compare with the server's PINs
        (``to_device``: a PIN set at the device is kept while it matches), those not hashed yet
        made off the reactor thread before the keypad is held: after a restart, each is PBKDF2
        (about 2 ms) once. The pass keeps them: the shared cache may let them go while it waits
        on the device (a storm hashes thousands meanwhile). A password the pass's own read
        finds later is hashed in place."""
        pairs = set()
        for write in writes:
            for raw in write.records or ():
                try:
                    record = server_record(raw)
                except Exception:  # reported by the plan
                    continue
                held = self._users.get(record.user_id)
                pair = pin_pair(held) if held is not None and record.pin_hash is not None else None
                if pair is not None:
                    pairs.add(pair)
        return self._pin_hashes(pairs)

    @defer.inlineCallbacks
    def _apply_writes(self, writes: list[Write], hashes: dict[tuple[str, str], bytes]):
        """Plan the writes against what the device holds, and carry them out. The counts come
        first: a pass that only adds people, on a device whose counts have not moved since a read
        less than ``poll_s`` ago on a session held since, plans against that read and reads no
        table (three requests fewer: most passes of a storm). Otherwise the users are read, and a
        plan that gives new people uids is checked against the counts once more just before the
        upload: a keypad that enrolled meanwhile (a device that ignores DISABLEDEVICE) has its
        people read and the plan made again, so no uid a keypad took since the read is written
        (docs/zk.md, "What maps to what", uids)."""
        sizes = yield self._counts()
        plan = None
        read_at = self._plan.users_at
        # A released session's device was the site's software's since the last conversation: it
        # may have written people at uids of its own choosing (and deleted as many), so it is read.
        held_since_read = self._redial is None and read_at is not None
        if held_since_read and self._counts_unmoved(sizes) and self._clock.seconds() - read_at < self._timing.poll.poll_s:
            plan, results = self._plan_writes(writes, hashes)
            if plan.rewrites_held():
                plan = None  # a read-modify-write: the device's records as they are now
        read_now = plan is None
        for look in range(1, KEYPAD_LOOKS + 1):
            if plan is not None:
                break
            yield self._read_tables(self._clock.seconds(), sizes=sizes)
            self._announce()  # a keypad change found now is pulled, not overwritten
            plan, results = self._plan_writes(writes, hashes)
            if plan.adds_people() and look < KEYPAD_LOOKS:
                sizes = yield self._counts()
                if not self._counts_unmoved(sizes):
                    plan = None  # the keypad enrolled or deleted since the read: read again
        failed = yield self._carry_out(plan, read_now)
        results = [[r if r.user_id not in failed else UserResult(r.user_id, *failed[r.user_id]) for r in outcome] for outcome in results]
        return results

    def _counts(self) -> defer.Deferred:
        return self._ok(Command.GET_FREE_SIZES).addCallback(lambda reply: bodies.parse_sizes(reply.data))

    def _counts_unmoved(self, sizes: bodies.Sizes) -> bool:
        """The users and fingers counted as in the last read of the tables (with the writes since)."""
        known = self._plan.sizes
        return known is not None and (sizes.users, sizes.fingers) == (known.users, known.fingers)

    def _plan_writes(self, writes: list[Write], hashes: dict[tuple[str, str], bytes]) -> tuple["WritePlan", list[list[UserResult]]]:
        """The plan of ``writes`` against the users last read, and each write's results.
        ``hashes``: the pass's PIN hashes (``_pins_hashed``)."""
        unfetched = self._memory.tracker.unfetched()
        plan = WritePlan(self._users, self._templates, self._profile, self._plan.sizes.users_capacity if self._plan.sizes else 0,
                         self._uids_in_use, chunk=self._timing.upload_users, hashes=hashes)
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
        return plan, results

    @defer.inlineCallbacks
    def _carry_out(self, plan: "WritePlan", read_now: bool):
        """Write what ``plan`` holds; read back what the device now holds. Returns the users the
        device refused, with their status. ``read_now``: this pass read the users (else it
        planned against an earlier read)."""
        if not (plan.writes or plan.deletes):
            return {}
        refused: dict[str, tuple[int, str]] = {}  # user id -> status, why
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
                refused[user_id] = (UserStatus.NOT_FOUND, "")
        if refresh:
            yield self._ok(Command.REFRESHDATA)
        # What was written, as the device holds it (a 28-byte record holds less).
        as_held = {user.user_id: decode_user(encode_user(user, size)) for user, _ in plan.writes if user.user_id not in refused}
        read_back = yield self._read_back(plan, as_held, own_templates, read_now)
        refused.update((yield self._undo_cut_ids(plan, refused)))
        seen: dict[str, bytes | None] = {}
        for user, templates in plan.writes:
            if user.user_id in refused:
                continue
            held = self._users.get(user.user_id)
            if held is None:
                refused[user.user_id] = (UserStatus.STORAGE_FULL, "not on the device after the write")
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
        self._note_written(seen)
        if seen:
            self._save_seen(seen)
            now_ms = self._now_ms()
            self._submit([self._event(now_ms, EventCode.DELETE_SUCCESS if digest is None else
                                      EventCode.UPDATE_SUCCESS if user_id in plan.held_before else EventCode.ENROLL_SUCCESS,
                                      Origin.SERVER, user_id) for user_id, digest in seen.items()])
        if read_back:
            self._announce()  # what the read-back found besides the writes (a keypad that was not held)
        return refused

    @defer.inlineCallbacks
    def _undo_cut_ids(self, plan: "WritePlan", refused: dict[str, tuple[int, str]]):
        """Users written as new that the device holds under another user id: a firmware that cuts
        ids longer than it holds (and did not say ~PIN2Width) stored ``1000123`` as ``00123``,
        which would come back as a phantom person. Each (only a record whose id is a cut of the one
        written: another person's record is never deleted) is deleted again (it is the gateway's own
        write), refused with the reason, and the width learnt for this connection's writes."""
        by_uid = {user.uid: user for user in self._users.values()}
        cut: dict[str, tuple[int, str]] = {}
        for user, _ in plan.writes:
            stored = by_uid.get(user.uid)
            if user.user_id in refused or user.user_id in self._users or stored is None or stored.user_id in plan.held_before:
                continue
            if not _cut_of(stored.user_id, user.user_id):
                continue  # another person's record in that slot (the keypad's): never deleted; ours is reported missing
            yield self._ok(Command.DELETE_USER, bodies.uid_body(user.uid))
            self._users = {user_id: held for user_id, held in self._users.items() if user_id != stored.user_id}
            self._templates = {uid: held for uid, held in self._templates.items() if uid != user.uid}
            self._users_read = None
            width = len(stored.user_id.encode("utf-8", "surrogateescape"))
            if width < len(user.user_id.encode("utf-8")):
                self._profile = replace(self._profile, id_width=width)
            cut[user.user_id] = (UserStatus.INVALID, f"the device stored user id {ascii(user.user_id)} as {ascii(stored.user_id)} "
                                                     f"(it cuts ids; ~PIN2Width did not say so): deleted from the device again")
            log.warn("ZK terminal {tid}: {why}", tid=self.terminal_id, why=cut[user.user_id][1])
        if cut:
            yield self._ok(Command.REFRESHDATA)
        return cut

    @defer.inlineCallbacks
    def _read_back(self, plan: "WritePlan", as_held: dict[str, User], own_templates: set[str], read_now: bool):
        """What the device holds after the writes. The keypad is held, so when the counts are what
        the writes leave, it is what was read before with the writes applied; else (a device that
        does not lock its keypad, a write it dropped) the users are read again, and the templates
        when their count is off too. A keypad change the counts do not show is a difference from
        what was written, which the next poll finds and announces (``_carry_out``). A device that did
        not say how long an id it holds (~PIN2Width) is read again whenever new people went to it:
        the counts do not show an id it cut (``_undo_cut_ids``). A pass that did not read the
        users (``read_now`` false) leaves the time of the last read: a keypad edit, which the counts
        do not show, is found by a read within ``poll_s`` of the last. Returns whether it read
        the users (else nothing but the writes changed, and there is nothing to announce)."""
        unsure_ids = self._profile.id_width is None and any(user.user_id not in plan.held_before for user, _ in plan.writes)
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
        if sizes.users == len(users) + len(self._uids_in_use) - len(self._users) and sizes.fingers == fingers and not unsure_ids:
            self._uids_in_use = (self._uids_in_use - {uid for _, uid in plan.deletes}) | {u.uid for u in users.values()}
            self._users, self._templates, self._plan.sizes = users, templates, sizes
            self._users_read = None  # what was read with the writes applied, no read
            if read_now:
                self._plan.users_at = self._clock.seconds()  # as good as a read: a poll is not due for poll_s
            return False
        yield self._read_tables(self._clock.seconds(), templates=False, sizes=sizes)
        if self._plan.sizes.fingers == fingers:
            self._templates = templates
        else:
            yield self._read_tables(self._clock.seconds(), templates=True)
        return True

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
                full = reply.code == ReplyCode.ACK_ERROR and self._full()
                refused[user.user_id] = (UserStatus.STORAGE_FULL if full else UserStatus.INVALID, f"USER_WRQ answered {reply}")
        return refused, True

    def _full(self) -> bool:
        sizes = self._plan.sizes
        return sizes is not None and sizes.users_free <= 0


def _cut_of(stored: str, written: str) -> bool:
    """Whether ``stored`` is ``written`` cut short (firmwares keep its head or its tail)."""
    return len(stored) < len(written) and (written.startswith(stored) or written.endswith(stored))
