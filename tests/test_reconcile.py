"""Reconciler (unit, a real SQLite file, task.Clock): when it does not judge, it says why."""

import json
from collections import Counter
from types import SimpleNamespace

from twisted.internet import defer, task

from gateway.sync.connection import DigestPage, ListingUnsupported, UserResult
from gateway.store.database import Database
from gateway.metrics import Metrics
from gateway.sync.reconcile import DELETED_AT_KEYPAD, ONLY_ON_TERMINAL, Reconciler, Reconciliation
from gateway.sync.syncmode import SyncMode
from gateway.sync.users import store_record
from gateway.terminals import Terminal
from protocol.messages import UserStatus
from protocol.records import UserRecord, UserRecordWire, record_digest


class Now:
    """Database work run at once on the test's thread."""

    def __init__(self, url):
        self.database = Database(url, reactor=None)
        self.database.open()

    def read(self, work, *args):
        return defer.succeed(self.database.run_now(work, *args))

    write = read


class Listing:
    """A terminal that holds no user; ``pending`` events of its own not stored yet."""

    def __init__(self, pending=0, lists=True):
        self.pending, self.lists = pending, lists
        self.asked = 0

    def events_pending(self):
        self.asked += 1
        return defer.succeed(self.pending)

    def list_digests(self, after, limit):
        if not self.lists:
            return defer.fail(ListingUnsupported("this family has no user listing"))
        return defer.succeed(DigestPage({}, False))


def reconciler(tmp_path, connection, mode=SyncMode.ALL):
    term = Terminal(7, connection=connection)
    terminals = {7: term}
    registry = SimpleNamespace(terminals=terminals, connected=lambda: [term], connection=lambda t: getattr(terminals.get(t), "connection", None))
    clock = task.Clock()
    db = Now(f"sqlite:///{tmp_path / 'g.db'}")
    return Reconciler(db, registry, SimpleNamespace(mode=mode), clock, Metrics(), lambda t, users: None), clock


def test_a_terminal_that_cannot_list_its_users_is_skipped_with_a_note(tmp_path):
    rec, clock = reconciler(tmp_path, Listing(lists=False))
    d = rec.reconcile(7)
    clock.advance(0)
    found = d.result
    assert "cannot list its users" in found.note and not found.repaired


def test_it_waits_for_the_terminals_own_events_and_says_so_when_they_keep_coming(tmp_path):
    connection = Listing(pending=3)
    rec, clock = reconciler(tmp_path, connection)
    d = rec.reconcile(7)
    clock.pump([0] + [rec.events_wait_s] * rec.events_asks)
    found = d.result
    assert connection.asked == rec.events_asks
    assert found.note == "not compared: 3 of its events are still on their way to the gateway"


def test_nothing_is_compared_while_sync_is_disabled(tmp_path):
    connection = Listing()
    rec, clock = reconciler(tmp_path, connection, SyncMode.DISABLED)
    d = rec.reconcile(7)
    clock.advance(0)
    found = d.result
    assert "sync mode disabled" in found.note and connection.asked == 0


class Answering(Listing):
    """A terminal whose answer to "events pending?" comes when the test says."""

    def events_pending(self):
        self.asked += 1
        self.answer = defer.Deferred()
        return self.answer


def test_a_comparison_whose_terminal_answers_after_the_stop_begins_no_wait(tmp_path):
    """The gateway stopped while the terminal was asked: its answer must not start a new pause."""
    terminal = Answering()
    rec, clock = reconciler(tmp_path, terminal)
    d = rec.reconcile(7)
    clock.advance(0)
    rec.stop()
    terminal.answer.callback(3)  # events still pending: without the stop, a pause of events_wait_s
    assert d.called and not clock.getDelayedCalls()


def test_stopping_cancels_a_wait_for_events(tmp_path):
    rec, clock = reconciler(tmp_path, Listing(pending=1))
    d = rec.reconcile(7)
    clock.advance(0)
    rec.stop()
    assert d.called and not clock.getDelayedCalls()


class Dropping:
    """Terminals whose links are about to drop: an ask waits until ``drop()``, then fails at once."""

    def __init__(self):
        self.waiting: list[defer.Deferred] = []
        self.dropped = False

    def events_pending(self):
        if self.dropped:
            return defer.fail(ConnectionError("link lost"))
        self.waiting.append(defer.Deferred())
        return self.waiting[-1]

    def drop(self):
        self.dropped = True
        for d in self.waiting:
            d.errback(ConnectionError("link lost"))


def test_a_thousand_comparisons_failing_at_once_end_one_by_one_not_inside_each_other(tmp_path):
    # A site's network blip: the comparisons queued behind the running ones all fail at once.
    links = Dropping()
    terms = {t: Terminal(t, connection=links) for t in range(1, 3001)}
    registry = SimpleNamespace(terminals=terms, connected=lambda: list(terms.values()))
    clock = task.Clock()
    metrics = Metrics()
    rec = Reconciler(Now(f"sqlite:///{tmp_path / 'g.db'}"), registry, SimpleNamespace(mode=SyncMode.ALL), clock, metrics, lambda t, u: None)
    ended = [rec.reconcile(t) for t in terms]
    clock.advance(0)
    links.drop()
    clock.advance(0)
    assert all(d.called for d in ended)
    assert metrics.failures.labels("reconcile")._value.get() == len(terms)


def test_what_a_comparison_found_reaches_another_process_whole_or_with_the_overflow_counted_by_why():
    found = Reconciliation(5, compared=300, repaired=Counter(pushed=2),
                           differences={f"user-{n:03}": DELETED_AT_KEYPAD if n % 3 else ONLY_ON_TERMINAL for n in range(200)})
    whole = Reconciliation.from_form(json.loads(found.told(7, 9, limit=100_000)))
    assert whole == (7, found, 9)
    terminal_id, cut, total = Reconciliation.from_form(json.loads(text := found.told(7, 9, limit=2000)))
    assert len(text.encode()) <= 2000 and (terminal_id, total) == (7, 9)
    assert 0 < len(cut.differences) < 200 and all(found.differences[u] == why for u, why in cut.differences.items())
    assert cut.as_json(9) == found.as_json(9)  # the API's totals and reasons are the same either way


def test_findings_heard_from_another_process_are_shown_unless_this_process_serves_the_terminal(tmp_path):
    rec, clock = reconciler(tmp_path, Listing())
    here, elsewhere = Reconciliation(1, note="found here"), Reconciliation(2, note="found elsewhere")
    rec.last[7] = here
    rec.heard(7, elsewhere, 4)
    rec.heard(8, elsewhere, 4)
    assert rec.last == {7: here, 8: elsewhere} and rec.repaired_total[8] == 4


def test_the_terminals_reconciled_since_a_count_of_findings_are_those_kept_after_it_oldest_first(tmp_path):
    rec, clock = reconciler(tmp_path, Listing())
    assert rec.kept_after(0) == []
    rec.heard(8, Reconciliation(1), 0)
    rec.heard(9, Reconciliation(2), 0)
    rec.reconcile(7)  # found here
    clock.advance(0)
    assert rec.findings_kept == 3 and rec.kept_after(0) == [8, 9, 7] and rec.kept_after(1) == [9, 7] and rec.kept_after(3) == []
    rec.heard(8, Reconciliation(3), 2)  # a terminal reconciled again is newer than those kept before
    assert rec.kept_after(1) == [9, 7, 8] and rec.kept_after(3) == [8] and rec.kept_after(4) == []


def test_reconciling_everywhere_asks_the_others_and_waits_a_bounded_time_for_their_findings(tmp_path):
    rec, clock = reconciler(tmp_path, Listing())
    rec._registry.terminals[8] = Terminal(8, elsewhere=True)
    rec.heard(8, Reconciliation(0), 0)  # findings from before the ask do not answer it
    clock.advance(10)
    asked = []
    rec.ask_others = lambda: asked.append(clock.seconds())
    d = rec.reconcile_everywhere()
    clock.advance(0)
    assert asked == [10] and rec.last[7].at_ms == 10_000 and not d.called
    clock.advance(1)
    rec.heard(8, Reconciliation(10_500, compared=3), 0)
    clock.advance(0.1)
    assert d.called and rec.last[8].compared == 3
    # A process that never answers holds the caller no longer than reports_wait_s.
    rec._heard_ms.clear()
    d = rec.reconcile_everywhere()
    clock.pump([0.1] * int(rec.reports_wait_s * 10 + 2))
    assert d.called


class Receiving(Listing):
    """A wiped terminal: it lists nothing and takes what it is sent."""

    push_bytes = 60_000

    def __init__(self):
        super().__init__()
        self.put = []

    def put_users(self, records, keep_local_changes):
        self.put += [UserRecordWire.parse(r).user_id for r in records]
        return defer.succeed([UserResult(UserRecordWire.parse(r).user_id, UserStatus.OK) for r in records])

    def digest_of(self, record):
        return record_digest(record)


def test_a_wiped_terminal_gets_back_a_user_it_gave_before_its_cursor_passed_that_version(tmp_path):
    """The pusher never sends a terminal its own copy: the repair must, cursor or not."""
    wiped = Receiving()
    rec, clock = reconciler(tmp_path, wiped, SyncMode.ALL_WITH_DEVICE_UPDATES)
    rec._db.database.run_now(lambda conn: store_record(conn, UserRecord("a", name="Enrolled At 7"), 1_000, holder_terminal=7))
    done = []
    rec.reconcile(7).addCallback(done.append)
    clock.advance(0)
    assert wiped.put == ["a"] and done[0].repaired["pushed"] == 1
