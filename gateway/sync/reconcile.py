"""Reconciler: anti-entropy between what a terminal holds and what the server says it should hold.

The changes feed delivers every change once, and a cursor says a terminal applied it; nothing in
that proves the terminal still holds it (a wiped store, a unit swapped, a bug). So on connect and
on a schedule the reconciler lists the terminal's users with their digests (LIST_USERS) and
compares them with the server's records the sync mode targets at it:

- what the gateway owns it repairs, counts (metric, monitoring event) and reports: a user
  missing or held in another version gets the server's record; a user the server deleted is
  deleted; a user only the terminal holds, in a mode that pulls, is pulled;
- what the rules allow to differ it remembers per terminal and shows, and never repairs behind
  the operator's back: a user deleted at that terminal's keypad (a keypad delete deletes nothing
  on the server, and pushing the user back would undo what a person did at the door), a user
  enrolled or changed at its keypad while the mode does not pull (pulled once it does), a user a
  narrowed mode no longer targets.

It judges only once every event the terminal logged is stored (a keypad delete still on its way
would look like a user to push back), and leaves alone users still in flight: changed after the
terminal's cursor (the pusher is delivering them) or with a pull owed (the puller is fetching
them). Connections that cannot list their users (``ListingUnsupported``) are skipped with a note.
Each process compares the terminals it serves; with several processes on one database, each
tells the others what it found (``tell_others``, ``heard``) and an operator's "compare now" asks
them all (``reconcile_everywhere``).
A terminal that holds part of a record (a ZK device) is compared on that part
(``TerminalConnection.digest_of``).
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import or_, select
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.sync.connection import ListingUnsupported
from gateway.sync.monitor import APPLIED_BY_DEVICE, DELETED_BY_SERVER, RECONCILED, UNREPAIRED_DIFFERENCE, record_sync_events, sync_event_row
from gateway.sync.changes import NOT_PULLED, TERMINAL_DELETE
from gateway.sync.history import RECONCILIATION, noted, record_unless_noted
from gateway.sync.puller import owed_pulls
from gateway.sync.pusher import delivery_rows, request_chunks
from gateway.store.schema import events, users
from gateway.sync.syncmode import parse_groups
from gateway.sync.users import last_change_seq, stored_users
from protocol.events import EventCode, Origin
from protocol.records import record_digest

log = Logger(namespace="gateway.reconcile")

# Why a terminal may differ from the server without the gateway repairing it.
DELETED_AT_KEYPAD = "deleted at the terminal's keypad"
ONLY_ON_TERMINAL = "enrolled at the terminal, not pulled in this sync mode"
CHANGED_AT_KEYPAD = "changed at the terminal's keypad, not pulled in this sync mode"
NOT_TARGETED = "not meant for this terminal in this sync mode (an operator removes it)"

# The rule behind a difference left as it is, for the user's history.
_RULE_OF = {DELETED_AT_KEYPAD: TERMINAL_DELETE, ONLY_ON_TERMINAL: NOT_PULLED, CHANGED_AT_KEYPAD: NOT_PULLED}

_USER_EVENTS = [EventCode.ENROLL_SUCCESS.name, EventCode.UPDATE_SUCCESS.name, EventCode.DELETE_SUCCESS.name]


@dataclass
class Reconciliation:
    """The last comparison of one terminal with the server, as the API shows it."""

    at_ms: int
    compared: int = 0  # users looked at on either side
    repaired: Counter = field(default_factory=Counter)  # pushed | deleted | pulled
    differences: dict[str, str] = field(default_factory=dict)  # user -> why it differs, left as it is
    note: str = ""  # why it could not run
    # Differences not listed here, by why: another process found more than its notification holds.
    unlisted: Counter = field(default_factory=Counter)

    def as_json(self, repaired_total: int) -> dict:
        return dict(
            at_ms=self.at_ms,
            compared=self.compared,
            repaired=dict(self.repaired),
            repaired_total=repaired_total,
            differences=len(self.differences) + self.unlisted.total(),
            why=dict(Counter(self.differences.values()) + self.unlisted),
            note=self.note or None,
        )

    def form(self, terminal_id: int, repaired_total: int) -> dict:
        """All of it in JSON's terms, for another process (``from_form``): the API process's
        snapshot, a notification to the other gateway processes (``told``)."""
        return dict(terminal_id=terminal_id, at_ms=self.at_ms, compared=self.compared, repaired=dict(self.repaired),
                    repaired_total=repaired_total, differences=dict(self.differences), note=self.note, unlisted=dict(self.unlisted))

    @classmethod
    def from_form(cls, form: dict) -> tuple[int, "Reconciliation", int]:
        """(terminal id, the reconciliation, users repaired on it since its process started)."""
        found = cls(form["at_ms"], form["compared"], Counter(form["repaired"]), form["differences"], form["note"], Counter(form["unlisted"]))
        return form["terminal_id"], found, form["repaired_total"]

    def told(self, terminal_id: int, repaired_total: int, limit: int) -> str:
        """``form`` as text of at most ``limit`` bytes: differences that do not fit are counted by
        why (``unlisted``), not listed."""
        form = self.form(terminal_id, repaired_total)
        listed, unlisted = form["differences"], Counter(form["unlisted"])
        while True:
            text = json.dumps(dict(form, unlisted=unlisted), separators=(",", ":"))
            if len(text.encode()) <= limit or not listed:
                return text
            for user_id in list(listed)[len(listed) // 2:]:
                unlisted[listed.pop(user_id)] += 1


@dataclass(frozen=True)
class ServerUser:
    change_seq: int
    digest: bytes | None  # None: deleted on the server
    access_groups: frozenset[int]
    holder_terminal: int | None  # the terminal whose own copy this version is: the pusher never sends it there


class Reconciler:
    page = 500  # entries per LIST_USERS: 500 ids of 64 bytes fit one frame
    interval_s = 300.0
    after_connect_s = 1.0
    at_once = 2  # comparisons running together: a fleet reconnecting at once must not read every user a thousand times over
    events_wait_s = 0.5  # between asks whether the terminal's own events are all stored
    events_asks = 20
    reports_wait_s = 20.0  # how long reconcile_everywhere waits for the other processes' findings

    def __init__(self, db, registry, settings, clock, metrics, owe_pulls):
        self._db = db
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._owe_pulls = owe_pulls  # (terminal_id, user_ids): make the puller fetch them
        self.last: dict[int, Reconciliation] = {}  # kept once complete and never changed after: new findings replace them
        self.repaired_total: Counter = Counter()  # terminal -> users repaired since start
        self.findings_kept = 0  # findings kept so far, found here or heard: what changed since a count is ``kept_after`` it
        self._kept_at: dict[int, int] = {}  # terminal -> the count its latest findings were kept at, oldest first
        self._running: dict[int, defer.Deferred] = {}  # terminal -> its comparison under way
        self._slots = defer.DeferredSemaphore(self.at_once)
        self._waits: set[defer.Deferred] = set()  # pauses between asks, cancelled when the gateway stops
        self._stopped = False
        self._view: tuple[int, dict[str, ServerUser]] | None = None  # the server's users as of a change sequence number
        self._timers: dict[int, object] = {}
        self._loop = task.LoopingCall(self.reconcile_all)
        self._loop.clock = clock
        # Other gateway processes on the same database (gateway/process/service.py wires these):
        # asked to compare the terminals they serve, and told what comparing ours found.
        self.ask_others: Callable[[], None] = lambda: None
        self.tell_others: Callable[[int, Reconciliation, int], None] = lambda terminal_id, found, repaired_total: None
        self._heard_ms: dict[int, int] = {}  # terminal served elsewhere -> when its last findings were heard

    def start(self) -> None:
        self._loop.start(self.interval_s, now=False)

    def stop(self) -> None:
        self._stopped = True
        if self._loop.running:
            self._loop.stop()
        for wait in list(self._waits):
            wait.cancel()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def terminal_online(self, terminal_id: int) -> None:
        timer = self._timers.pop(terminal_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers[terminal_id] = self._clock.callLater(self.after_connect_s, self._due, terminal_id)

    def _due(self, terminal_id: int) -> None:
        self._timers.pop(terminal_id, None)
        self.reconcile(terminal_id)

    @defer.inlineCallbacks
    def reconcile_all(self):
        """One terminal after the other: a comparison lists every user, so they do not run all at once."""
        for term in list(self._registry.connected()):
            yield self.reconcile(term.terminal_id)

    @defer.inlineCallbacks
    def reconcile_everywhere(self):
        """``reconcile_all`` here, and in every other process for the terminals it serves: fires
        once their findings are heard too, or after ``reports_wait_s`` (those not heard by then
        keep what was heard of them before, with its time)."""
        asked_ms = self._now_ms()
        self.ask_others()
        yield self.reconcile_all()
        deadline = self._clock.seconds() + self.reports_wait_s
        while self._clock.seconds() < deadline and any(
                self._heard_ms.get(t.terminal_id, 0) < asked_ms for t in self._registry.terminals.values() if t.elsewhere):
            yield self._pause(0.1)

    def heard(self, terminal_id: int, found: Reconciliation, repaired_total: int) -> None:
        """What another process found comparing a terminal it serves, shown here as if found here."""
        if self._registry.connection(terminal_id) is not None:
            return  # served here now: what this process finds is newer
        self._kept(terminal_id, found, repaired_total)
        self._heard_ms[terminal_id] = self._now_ms()

    def kept_after(self, count: int) -> list[int]:
        """The terminals whose latest findings were kept after the first ``count``, oldest first: the
        API process's snapshot carries only these, since the reconciliations change every few
        minutes and the snapshot twice a second. The API process lives and dies with this one
        (gateway/http/process.py), so its count is always one of this process's."""
        newer = []
        for terminal_id, kept_at in reversed(self._kept_at.items()):
            if kept_at <= count:
                break
            newer.append(terminal_id)
        return newer[::-1]

    def _kept(self, terminal_id: int, found: Reconciliation, repaired_total: int) -> None:
        self.last[terminal_id] = found
        self.repaired_total[terminal_id] = repaired_total
        self.findings_kept += 1
        self._kept_at.pop(terminal_id, None)  # to the end: the order is the order they were kept in
        self._kept_at[terminal_id] = self.findings_kept

    def reconcile(self, terminal_id: int) -> defer.Deferred:
        """Compare one online terminal with the server and repair what the gateway owns; fires
        with the ``Reconciliation`` (None if it is not online). Asked while one runs, it runs
        again after it: what the caller changed meanwhile may have been listed already."""
        running = self._running.get(terminal_id)
        if running is not None:
            after = defer.Deferred()
            running.addBoth(lambda result: (after.callback(None), result)[1])
            return after.addCallback(lambda _: self.reconcile(terminal_id))
        term = self._registry.terminals.get(terminal_id)
        if term is None or term.connection is None:
            return defer.succeed(None)
        d = self._running[terminal_id] = self._slots.run(self._run, term, term.connection)
        d.addErrback(self._failed, terminal_id)
        d.addBoth(self._finished, terminal_id)
        return d

    def _finished(self, result, terminal_id: int):
        self._running.pop(terminal_id, None)
        return result

    def _failed(self, failure, terminal_id: int) -> None:
        if self._stopped:
            return None  # the gateway stops: the next start compares again
        self._metrics.failures.labels("reconcile").inc()
        log.warn("could not reconcile terminal {tid}: {e}", tid=terminal_id, e=failure.getErrorMessage())

    @defer.inlineCallbacks
    def _run(self, term, connection):
        # A turn of the reactor first: when a thousand links drop at once, the comparisons queued
        # for a slot all end at once, and each would start the next inside its own stack.
        yield self._pause(0)
        found = Reconciliation(self._now_ms())
        mode = self._settings.mode
        if not mode.pushes:
            found.note = "not compared: sync mode disabled, nothing is pushed to terminals automatically"
            return self._keep(term.terminal_id, found)
        # A keypad delete or edit whose event is still on its way would look like a difference
        # to repair: judge only once every event the terminal logged is stored.
        pending = yield self._events_stored(connection)
        if pending:
            found.note = f"not compared: {pending} of its events are still on their way to the gateway"
            return self._keep(term.terminal_id, found)
        cursor = term.cursor  # what the terminal has applied; later changes are the pusher's
        try:
            held = yield self._list(connection)
        except ListingUnsupported as exc:
            found.note = f"not compared: the terminal cannot list its users ({exc})"
            return self._keep(term.terminal_id, found)
        server = yield self._server_users()
        owed = set((yield self._db.read(owed_pulls, term.terminal_id)))
        first = compare(server, held, owed, cursor, term.terminal_id, lambda groups: mode.targets(groups, term.access_groups),
                        mode.pulls_device_updates)
        found.compared += first.compared
        found.differences.update(first.differences)
        # A terminal that holds part of a record (ZK) digests that part: what it holds may be
        # just the part of the server's record it would hold.
        alike: set[str] = set()
        if first.differing or first.missing:
            records = yield self._db.read(stored_users, first.differing + first.missing)
            alike = {u for u, row in records.items() if row.record is not None and connection.digest_of(row.record) == held.get(u)}
        at_keypad = yield self._db.read(_keypad_changes, term.terminal_id, first.missing + first.differing + first.delete)
        push, delete, pull, left = decide(first, alike, at_keypad, mode.pulls_device_updates)
        found.differences.update(left)
        yield self._repair(term.terminal_id, connection, push, delete, pull, held, found)
        return self._keep(term.terminal_id, found)

    @defer.inlineCallbacks
    def _events_stored(self, connection):
        """0 once the terminal holds no event the gateway has not stored; else how many after the last ask."""
        for _ in range(self.events_asks):
            pending = yield connection.events_pending()
            if not pending:
                return 0
            yield self._pause(self.events_wait_s)
        return pending

    def _pause(self, seconds: float) -> defer.Deferred:
        if self._stopped:  # a comparison whose terminal answered after the stop waits for nothing
            return defer.fail(defer.CancelledError())
        wait = task.deferLater(self._clock, seconds, lambda: None)
        self._waits.add(wait)
        wait.addBoth(lambda result: (self._waits.discard(wait), result)[1])
        return wait

    @defer.inlineCallbacks
    def _server_users(self):
        """Every user the server knows, read again only after a change: terminals compared one
        after the other share one read."""
        seq = yield self._db.read(last_change_seq)
        if self._view is None or self._view[0] != seq:
            self._view = (seq, (yield self._db.read(_server_users)))
        return self._view[1]

    @defer.inlineCallbacks
    def _list(self, connection):
        held, after = {}, ""
        while True:
            try:
                page = yield connection.list_digests(after, self.page)
            except NotImplementedError as exc:
                raise ListingUnsupported(str(exc) or "no LIST_USERS") from None
            held.update(page.digests)
            if not page.more or not page.digests:
                return held
            after = max(page.digests)

    @defer.inlineCallbacks
    def _repair(self, terminal_id: int, connection, push: list[str], delete: list[str], pull: list[str], held: dict, found):
        rows, now_ms = [], self._now_ms()
        if push:
            # The records as they are now, not as they were when compared: a change since is the pusher's.
            current = yield self._db.read(_current_records, push, self._registry.terminals[terminal_id].cursor, terminal_id)
            why = {u: "missing on the terminal" if u not in held else "the terminal held another version" for u in current}
            for chunk in request_chunks(list(current.values()), connection.push_bytes, 64):
                results = yield connection.put_users(chunk, self._settings.mode.pulls_device_updates)
                rows += self._repaired(terminal_id, results, APPLIED_BY_DEVICE, "pushed", why, found, now_ms)
        if delete:
            for i in range(0, len(delete), 64):
                results = yield connection.delete_users(delete[i:i + 64])
                why = {u: "deleted on the server, still on the terminal" for u in delete}
                rows += self._repaired(terminal_id, results, DELETED_BY_SERVER, "deleted", why, found, now_ms)
        if pull:
            self._owe_pulls(terminal_id, pull)
            found.repaired["pulled"] += len(pull)
            rows += [sync_event_row(RECONCILED, terminal_id, u, "only on the terminal: pulled", at_ms=now_ms) for u in pull]
        new = {u: why for u, why in found.differences.items() if self.last.get(terminal_id, Reconciliation(0)).differences.get(u) != why}
        rows += [sync_event_row(UNREPAIRED_DIFFERENCE, terminal_id, u, why, at_ms=now_ms) for u, why in sorted(new.items())]
        history = [noted(u, RECONCILIATION, _RULE_OF[why], why, now_ms, terminal_id) for u, why in sorted(new.items()) if why in _RULE_OF]
        if rows:
            yield self._db.write(_record_findings, rows, history)

    def _repaired(self, terminal_id: int, results, applied_type: str, kind: str, why: dict, found, now_ms: int) -> list[dict]:
        """Rows for what the terminal answered a repair: each user it applied is one repair."""
        delivered, kept = delivery_rows(terminal_id, results, applied_type, self._metrics, now_ms)
        if kept:
            self._owe_pulls(terminal_id, kept)
        rows = []
        for row in delivered:
            if row["type"] == applied_type:
                found.repaired[kind] += 1
                self._metrics.reconcile_repairs.labels(kind).inc()
                rows.append(sync_event_row(RECONCILED, terminal_id, row["user_id"], f"{why.get(row['user_id'], '')}: {kind}", at_ms=now_ms))
        return delivered + rows

    def _keep(self, terminal_id: int, found: Reconciliation) -> Reconciliation:
        repaired = sum(found.repaired.values())
        self._kept(terminal_id, found, self.repaired_total[terminal_id] + repaired)
        self.tell_others(terminal_id, found, self.repaired_total[terminal_id])
        self._metrics.reconcile_differences.labels(str(terminal_id)).set(len(found.differences))
        if found.note:
            log.info("terminal {tid}: {note}", tid=terminal_id, note=found.note)
        elif repaired or found.differences:
            log.info("terminal {tid} reconciled: {n} users compared, {repaired} repaired ({kinds}), {d} differ as the rules allow",
                     tid=terminal_id, n=found.compared, repaired=repaired, kinds=dict(found.repaired), d=len(found.differences))
        return found

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)


def _server_users(conn) -> dict[str, ServerUser]:
    """Every user the server knows, deletion tombstones included."""
    rows = conn.execute(select(users.c.user_id, users.c.change_seq, users.c.record, users.c.access_groups, users.c.holder_terminal))
    return {r.user_id: ServerUser(r.change_seq, record_digest(r.record) if r.record is not None else None, parse_groups(r.access_groups),
                                  r.holder_terminal)
            for r in rows}


def _keypad_changes(conn, terminal_id: int, user_ids: list[str]) -> dict[str, str]:
    """Of these users, those whose last user event at this terminal was made at its keypad, with
    that event's type (a record the server sent since would be the last one instead)."""
    last: dict[str, tuple] = {}
    for i in range(0, len(user_ids), 500):
        stmt = select(events.c.id, events.c.user_id, events.c.type, events.c.sub_code).where(
            events.c.user_id.in_(user_ids[i:i + 500]), events.c.terminal_id == terminal_id, events.c.type.in_(_USER_EVENTS)
        )
        for row in conn.execute(stmt):
            if row.user_id not in last or row.id > last[row.user_id][0]:
                last[row.user_id] = (row.id, row.type, row.sub_code)
    return {user_id: type_ for user_id, (_, type_, sub_code) in last.items() if sub_code == Origin.DEVICE}


@dataclass
class Comparison:
    """What the listing and the server's users say before the keypad's history is asked."""

    compared: int = 0
    differing: list[str] = field(default_factory=list)  # targeted, held in another version
    missing: list[str] = field(default_factory=list)  # targeted, not held
    delete: list[str] = field(default_factory=list)  # deleted on the server, still held
    pull: list[str] = field(default_factory=list)  # only on the terminal, in a mode that pulls
    differences: dict[str, str] = field(default_factory=dict)  # left as they are, and why


def compare(server: dict, held: dict[str, bytes], owed: set[str], cursor: int, terminal_id: int, targets, pulls: bool) -> Comparison:
    """The users a terminal and the server disagree on, by what each holds. ``server``: user id ->
    its row (``digest`` None for a tombstone, ``change_seq``, ``access_groups``, ``holder_terminal``);
    ``targets(groups)``: whether the sync mode sends users of these groups to this terminal. A
    user whose keypad change is being pulled (``owed``) or whose newer version the pusher is
    delivering is not judged; a version the pusher never sends this terminal is, whatever the
    cursor: one taken whole from it (a device wiped right after its enrolments were pulled would
    miss them), one not meant for it (in mode specific its cursor stays behind such changes: a
    user moved to another group and deleted would stay on it)."""
    found = Comparison()
    for user_id in sorted(set(server) | set(held)):
        if user_id in owed:
            continue
        mine = server.get(user_id)
        if mine is not None and mine.change_seq > cursor and mine.holder_terminal != terminal_id and targets(mine.access_groups):
            continue
        found.compared += 1
        targeted = mine is not None and mine.digest is not None and targets(mine.access_groups)
        if targeted and held.get(user_id) != mine.digest:
            (found.differing if user_id in held else found.missing).append(user_id)
        elif user_id in held and not targeted:
            if mine is not None and mine.digest is None:
                found.delete.append(user_id)
            elif mine is not None:
                found.differences[user_id] = NOT_TARGETED
            elif pulls:
                found.pull.append(user_id)
            else:
                found.differences[user_id] = ONLY_ON_TERMINAL
    return found


def decide(first: Comparison, alike: set[str], at_keypad: dict[str, str], pulls: bool
           ) -> tuple[list[str], list[str], list[str], dict[str, str]]:
    """(push, delete, pull, left as they are) once it is known which differences are only the
    part a terminal holds (``alike``) and what a person did last at its keypad (``at_keypad``:
    user id -> event type): a delete there stays deleted, a change is pulled where the mode pulls
    and left as it is where it does not."""
    differing = [u for u in first.differing if u not in alike]
    missing = [u for u in first.missing if u not in alike]
    push, pull, left = [], list(first.pull), {}
    for user_id in missing:
        if at_keypad.get(user_id) == EventCode.DELETE_SUCCESS.name:
            left[user_id] = DELETED_AT_KEYPAD
        else:
            push.append(user_id)
    for user_id in differing + first.delete:
        if at_keypad.get(user_id) not in (None, EventCode.DELETE_SUCCESS.name):
            if pulls:
                pull.append(user_id)
            else:
                left[user_id] = CHANGED_AT_KEYPAD if user_id in differing else ONLY_ON_TERMINAL
        elif user_id in differing:
            push.append(user_id)
    delete = [u for u in first.delete if at_keypad.get(u) in (None, EventCode.DELETE_SUCCESS.name)]
    return push, delete, pull, left


def _current_records(conn, user_ids: list[str], cursor: int, terminal_id: int) -> dict[str, bytes]:
    """The records to push as they are now: those the terminal's cursor passed (a newer one is
    the pusher's), and those taken whole from it, which the pusher never sends back."""
    stmt = select(users.c.user_id, users.c.record).where(
        users.c.user_id.in_(user_ids), users.c.record.is_not(None),
        or_(users.c.change_seq <= cursor, users.c.holder_terminal == terminal_id),
    )
    return {r.user_id: r.record for r in conn.execute(stmt)}


def _record_findings(conn, rows: list[dict], history: list[dict]) -> None:
    record_sync_events(conn, rows)
    record_unless_noted(conn, history)
