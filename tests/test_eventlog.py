"""EventLog: group commits, acknowledgement only after commit, retry, backpressure (unit tests)."""

from twisted.internet import defer, task
from twisted.python.failure import Failure

from gateway.store.database import DatabaseFailure
from gateway.sync.eventlog import EventLog
from gateway.metrics import Metrics
from gateway.sync.monitor import SAVE_FAILED, sync_event_row
from protocol.events import Event, EventCode, Origin


class ControlledDatabase:
    """A database whose commits the test completes or fails by hand."""

    def __init__(self):
        self.commits = []

    def write(self, work, *args):
        d = defer.Deferred()
        self.commits.append((args, d))
        return d


class Connection:
    """The part of a terminal connection backpressure uses."""

    def __init__(self):
        self.paused = False

    def pause_events(self):
        self.paused = True

    def resume_events(self):
        self.paused = False


STORED = ({}, [])  # what a commit of events answers: the logs they went to, anomalies to report


def events(first, n, user="u1", origin=Origin.DEVICE):
    return [Event(i, i, EventCode.UPDATE_SUCCESS, origin, user) for i in range(first, first + n)]


def make_log():
    db, clock, committed = ControlledDatabase(), task.Clock(), []
    return EventLog(db, clock, Metrics(), committed.extend), db, clock, committed


def test_submissions_queued_during_a_commit_share_the_next_one():
    log, db, clock, _ = make_log()
    log.submit(1, events(1, 2))
    log.submit(2, events(1, 3))
    log.submit(3, events(1, 1))
    assert len(db.commits) == 1  # the first went alone; the other two wait for it
    db.commits[0][1].callback(STORED)
    clock.advance(log.commit_window_s)
    assert len(db.commits) == 2
    (batch, _failures, _at_ms, _logs, _riders), _ = db.commits[1]
    assert [s.terminal_id for s in batch] == [2, 3]


def test_acknowledgement_waits_for_the_commit():
    log, db, _, committed = make_log()
    acks = []
    log.submit(1, events(5, 3)).addCallback(acks.append)
    assert acks == []
    db.commits[0][1].callback(STORED)
    assert acks == [7]
    assert committed == [(1, {"u1"})]


def test_failed_commit_acknowledges_nothing_records_the_failure_and_retries():
    log, db, clock, _ = make_log()
    acks = []
    log.submit(1, events(1, 2)).addCallback(acks.append)
    db.commits[0][1].errback(Failure(DatabaseFailure("database is locked")))
    assert acks == []
    clock.advance(log.retry_after(0))
    (batch, failure_rows, _at_ms, _logs, _riders), d = db.commits[1]
    assert [s.terminal_id for s in batch] == [1]
    assert [r["type"] for r in failure_rows] == [SAVE_FAILED]
    d.callback(STORED)
    assert acks == [2]


def test_links_pause_above_high_water_and_resume_below_low_water():
    log, db, clock, _ = make_log()
    log.high_water, log.low_water = 10, 5
    link = Connection()
    log.add_connection(link)
    log.submit(1, events(1, 4))
    log.submit(2, events(1, 8))
    assert link.paused
    db.commits[0][1].callback(STORED)
    assert link.paused  # 8 still wait
    clock.advance(log.commit_window_s)
    db.commits[1][1].callback(STORED)
    assert not link.paused


def test_server_origin_events_owe_no_pull():
    log, db, _, committed = make_log()
    log.submit(1, events(1, 2, origin=Origin.SERVER))
    db.commits[0][1].callback(STORED)
    assert committed == [(1, set())]


def test_events_are_acknowledged_even_if_what_follows_the_commit_fails():
    db, clock = ControlledDatabase(), task.Clock()

    def broken_pull_trigger(_committed):
        raise RuntimeError("puller bug")

    log = EventLog(db, clock, Metrics(), broken_pull_trigger)
    acks = []
    log.submit(1, events(1, 3)).addCallback(acks.append)
    db.commits[0][1].callback(STORED)
    assert acks == [3]
    log.submit(1, events(4, 1))
    clock.advance(log.commit_window_s)
    assert len(db.commits) == 2  # and the log goes on committing


def moves(conn, *args):
    """Stands for the pusher's cursor moves: the controlled database never runs the work."""


def test_writes_riding_on_the_next_group_commit_share_it_and_settle_with_it():
    log, db, clock, _ = make_log()
    settled = []
    log.submit(1, events(1, 2))
    log.commit_with_events(moves, "first").addCallback(settled.append)
    log.submit(2, events(1, 1))
    assert len(db.commits) == 1 and settled == []  # the ride waits for the commit after the one under way
    db.commits[0][1].callback(STORED)
    clock.advance(log.commit_window_s)
    (batch, _failures, _at_ms, _logs, riders), d = db.commits[1]
    assert [s.terminal_id for s in batch] == [2] and riders == [(moves, ("first",))]
    d.callback(STORED)
    assert settled == [None] and len(db.commits) == 2  # settled, and no commit left to make


def test_a_ride_alone_is_a_commit_and_fails_with_it_not_retried():
    log, db, clock, _ = make_log()
    failed = []
    log.commit_with_events(moves, "alone").addErrback(failed.append)
    ((batch, _failures, _at_ms, _logs, riders), d), = db.commits
    assert batch == [] and riders == [(moves, ("alone",))]
    d.errback(Failure(DatabaseFailure("database is locked")))
    assert failed and failed[0].check(DatabaseFailure)  # its owner decides: the pusher moves the cursor later
    clock.advance(60)
    assert len(db.commits) == 1  # nothing to retry: no events were waiting


def test_commits_start_a_window_apart_and_a_lone_submission_after_a_quiet_spell_commits_at_once():
    log, db, clock, _ = make_log()
    log.submit(1, events(1, 1))
    db.commits[0][1].callback(STORED)
    clock.advance(log.commit_window_s / 4)
    log.submit(2, events(1, 1))
    log.submit(3, events(1, 1))
    assert len(db.commits) == 1  # within the window of the first: they wait for it, together
    clock.advance(log.commit_window_s)
    (batch, *_), d = db.commits[1]
    assert [s.terminal_id for s in batch] == [2, 3]
    d.callback(STORED)
    clock.advance(10)
    log.submit(4, events(1, 1))
    assert len(db.commits) == 3  # after a quiet spell: at once, no wait added


def test_a_submission_made_by_an_acknowledgement_starts_one_commit_and_stop_leaves_none_pending():
    log, db, clock, _ = make_log()
    queued = []  # more events from the terminal, submitted as soon as the first are acknowledged
    log.submit(1, events(1, 1)).addCallback(lambda _: queued.append(log.submit(1, events(2, 1))))
    log.submit(2, events(1, 1))  # waits for the first commit
    db.commits[0][1].callback(STORED)
    assert queued and len(clock.getDelayedCalls()) == 1, "one commit window, not one per flush"
    clock.advance(log.commit_window_s)
    assert len(db.commits) == 2
    (batch, *_), d = db.commits[1]
    assert [s.terminal_id for s in batch] == [2, 1]  # one commit for both, in the order they came
    log.submit(3, events(1, 1))
    d.callback(STORED)
    log.stop()
    assert clock.getDelayedCalls() == [], "nothing left to fire after the gateway stopped"


def test_a_commit_that_lands_after_stop_and_what_comes_after_start_nothing_more():
    """The gateway stops while a commit is in the database and terminals are still closing:
    neither the commit landing nor a failure row arriving may schedule another commit."""
    log, db, clock, _ = make_log()
    log.submit(1, events(1, 1))
    log.submit(2, events(1, 1))  # waits for the first
    log.stop()
    db.commits[0][1].callback(STORED)
    log.record_failure_later(sync_event_row(SAVE_FAILED, 3, "9001", "closing", at_ms=0))
    log.submit(3, events(1, 1))
    clock.advance(log.commit_window_s * 10)
    assert len(db.commits) == 1 and clock.getDelayedCalls() == []


def test_a_commit_that_fails_after_stop_schedules_no_retry():
    log, db, clock, _ = make_log()
    log.submit(1, events(1, 1))
    log.stop()
    db.commits[0][1].errback(Failure(DatabaseFailure("the server is shutting down")))
    assert clock.getDelayedCalls() == [] and len(db.commits) == 1


def test_a_commit_held_up_by_a_short_lock_is_said_in_the_log_though_nothing_failed():
    from twisted.logger import globalLogPublisher

    log, db, clock, _ = make_log()
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        log.submit(1, events(1, 3))
        clock.advance(0.2)
        db.commits[0][1].callback(STORED)  # a quick commit: nothing said
        log.submit(1, events(4, 2))
        clock.advance(3.0)  # shorter than SQLite's busy timeout: the commit waits, then succeeds
        db.commits[1][1].callback(STORED)
    finally:
        globalLogPublisher.removeObserver(said)
    slow = [e for e in said if "took" in e.get("log_format", "")]
    assert [(e["n"], e["s"]) for e in slow] == [(2, 3.0)]
    assert log.unsaved.rows() == []  # no "Fail to save": nothing failed


def test_a_commit_held_up_by_a_busy_reactor_is_said_to_be_the_gateway_s_overload_not_the_database_s():
    from twisted.logger import globalLogPublisher

    db, clock = ControlledDatabase(), task.Clock()
    late = {"s": 0.0}
    log = EventLog(db, clock, Metrics(), lambda _: None, reactor_late_since=lambda since_s: late["s"])
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        log.submit(1, events(1, 3))
        clock.advance(3.0)
        late["s"] = 2.8  # the writer was done in milliseconds; its result waited for the reactor
        db.commits[0][1].callback(STORED)
        log.submit(1, events(4, 2))
        clock.advance(3.0)
        late["s"] = 0.1  # the reactor kept time: the database held the commit
        db.commits[1][1].callback(STORED)
    finally:
        globalLogPublisher.removeObserver(said)
    slow = [e["log_format"].split(": ")[1].split(" (")[0] for e in said if "took" in e.get("log_format", "")]
    assert slow == ["the gateway was overloaded", "the database was busy"]
