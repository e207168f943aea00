"""Reconciler (unit, a real SQLite file, task.Clock): when it does not judge, it says why."""

from types import SimpleNamespace

from twisted.internet import defer, task

from gateway.sync.connection import DigestPage, ListingUnsupported
from gateway.store.database import Database
from gateway.metrics import Metrics
from gateway.sync.reconcile import Reconciler
from gateway.sync.syncmode import SyncMode
from gateway.terminals import Terminal


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
    registry = SimpleNamespace(terminals={7: term}, connected=lambda: [term])
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
