"""Change detection on what a ZK device holds: each person's copy as the server would take it,
compared with what the server has seen (gateway/zk/poller.py, ``ChangeTracker``); changes become
device-origin events, records the server cannot take are refused and reported once, and a
device found holding nobody is refilled, not emptied on the server. docs/zk.md, "Change
detection" and "Reconciliation".
"""

from twisted.internet import defer
from twisted.logger import Logger

from gateway.sync.monitor import RECORD_REFUSED, sync_event_row
from gateway.zk.mapping import held_digest, keyable_text, refusal
from protocol.events import EventCode, Origin
from protocol.zk.records import Template, User

log = Logger(namespace="gateway.zk")

NO_TEMPLATES: list[Template] = []  # never changed: one object, so a digest kept for it stays valid


class ChangeDetection:
    """The change-detection part of a ZkConnection (gateway/zk/connection.py), whose tables,
    memory and store it uses."""

    def _one_uid_each(self, read: tuple[User, ...]) -> dict[str, User]:
        """The users read, by user id. A user id held by two uids (a device should refuse that,
        some do not) is taken at its lowest uid, and the others are reported and left alone."""
        users: dict[str, User] = {}
        doubles: dict[str, list[int]] = {}
        for user in sorted(read, key=lambda u: u.uid):
            if user.user_id in users:
                doubles.setdefault(user.user_id, [users[user.user_id].uid]).append(user.uid)
            else:
                users[user.user_id] = user
        for user_id, uids in doubles.items():
            self._refuse(("uids", user_id), user_id, f"user id {ascii(user_id)} is held by uids {', '.join(map(str, uids))}: the gateway reads and "
                                  f"writes uid {uids[0]} and leaves the others as they are")
        return users

    def _held_copies(self) -> dict[str, bytes]:
        """Each person's digest on the device. Kept from the last call for a person whose user
        record is equal and whose templates are the same list: most polls change nobody. A
        person the server cannot take (``refusal``) is reported once and never news: the server
        keeps what it had seen of them. The same tables as at the last call (a poll that found
        the same bytes) give the same digests, unless someone there is refused (their digest is
        what the server has seen, which moves)."""
        last = self._held
        if last is not None and last[0] is self._users and last[1] is self._templates:
            return last[2]
        held, digests = {}, {}
        seen = self._memory.tracker.seen
        for user_id, user in self._users.items():
            templates = self._templates.get(user.uid, NO_TEMPLATES)
            known = self._digests.get(user_id)
            if known is None or (known[0] is not user and known[0] != user) or known[1] is not templates:
                refused = refusal(user, self._profile.cards)
                known = (user, templates, None if refused else held_digest(user, templates), refused)
            digests[user_id] = known
            if known[3] is not None:
                self._refuse(("record", user_id), user_id, known[3])
                if user_id in seen:
                    held[user_id] = seen[user_id]
                continue
            self._memory.refused.pop(("record", user_id), None)
            held[user_id] = known[2]
        self._digests = digests
        any_refused = any(known[3] is not None for known in digests.values())
        self._held = None if any_refused else (self._users, self._templates, held)
        return held

    def _note_written(self, written: dict[str, bytes | None]) -> None:
        """People a write pass wrote (their digest) or deleted (None), as ``_held_copies`` would
        find them: the reconciliation's listing (``list_digests``) holds them at once, without
        every person's copy compared again after each pass."""
        for user_id, digest in written.items():
            if digest is None:
                self._digests.pop(user_id, None)
                continue
            user = self._users[user_id]
            self._digests[user_id] = (user, self._templates.get(user.uid, NO_TEMPLATES), digest, refusal(user, self._profile.cards))

    def _refill(self, why: str) -> defer.Deferred:
        """Forget what the server had seen on the device (durably) and ask for a refill; fires
        with whether the forgetting is stored."""
        log.warn("ZK terminal {tid} is refilled: {why}", tid=self.terminal_id, why=why)
        tracker = self._memory.tracker
        gone = {user_id: None for user_id in tracker.seen}
        tracker.seen.clear()
        tracker.reported.clear()
        stored = self._store.save_seen(self.terminal_id, gone).addCallbacks(
            lambda _: True, lambda failure: self._log_unsaved(failure, "what the server has seen") or False)
        self._on_refill(self.terminal_id, why)
        return stored

    def _refuse(self, what: tuple[str, str], user_id: str, reason: str) -> None:
        """A record of the device the server does not take: reported once (monitoring event, one log line)."""
        if self._memory.refused.get(what) == reason:
            return
        self._memory.refused[what] = reason
        self._report(user_id, reason)

    def _report(self, user_id: str | None, reason: str) -> None:
        log.warn("ZK terminal {tid}: {type}: {reason}", tid=self.terminal_id, type=RECORD_REFUSED, reason=reason)
        shown = user_id if user_id is not None and keyable_text(user_id) else None  # an id that is no plain text stays in the detail, escaped
        row = sync_event_row(RECORD_REFUSED, self.terminal_id, shown, reason, at_ms=self._now_ms())
        self._store.report([row]).addErrback(self._log_unsaved, "a monitoring event")

    def _announce(self) -> None:
        """Changes made at the device since the server last saw it become device-origin events.
        A device that holds nobody while the server had seen people there was wiped (or is a new
        unit): that is no keypad deletion of each, so nothing is announced; the server forgets
        what it had seen there and the device is refilled (reconciliation)."""
        tracker = self._memory.tracker
        if not self._users and tracker.seen:
            self._digests = {}  # nobody's copy: the listing (list_digests) reads these
            self._refill(f"it holds nobody, where the server had seen {len(tracker.seen)} people")
            return
        changes = tracker.changes(self._held_copies())
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
