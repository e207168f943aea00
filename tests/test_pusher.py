"""Pusher (unit): pushes fit the link they go over; terminals at one cursor share a feed read."""

from types import SimpleNamespace

from twisted.internet import defer, task

from gateway.sync.connection import UserResult
from gateway.metrics import Metrics
from gateway.sync.monitor import APPLIED_BY_DEVICE, DELETED_BY_SERVER
from gateway.sync.pusher import FeedEntry, FeedPage, Pusher, request_chunks
from gateway.sync.syncmode import SyncMode
from gateway.terminals import Terminal
from protocol.messages import UserStatus
from protocol.records import UserRecord, UserRecordWire


def sizes(records, limit, max_users=64):
    return [[len(r) for r in chunk] for chunk in request_chunks(records, limit, max_users)]


def test_records_are_grouped_up_to_the_byte_limit():
    assert sizes([b"x" * 400] * 5, limit=1000) == [[400, 400], [400, 400], [400]]


def test_a_record_longer_than_the_limit_goes_alone():
    assert sizes([b"x" * 100, b"x" * 5000, b"x" * 100], limit=1000) == [[100], [5000], [100]]


def test_no_request_carries_more_than_max_users():
    assert sizes([b"x"] * 5, limit=10_000, max_users=2) == [[1, 1], [1, 1], [1]]


class CountingDatabase:
    """Reads the test answers by hand."""

    def __init__(self):
        self.reads = []

    def read(self, work, *args):
        d = defer.Deferred()
        self.reads.append((args, d))
        return d


def test_terminals_at_the_same_cursor_share_one_feed_read():
    db = CountingDatabase()
    online = {t: Terminal(t, connection=object()) for t in (1, 2, 3)}
    online[3].cursor = 7
    registry = SimpleNamespace(terminals=online, connected=lambda: list(online.values()))
    clock = task.Clock()
    pusher = Pusher(db, registry, SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    pusher.wake()
    assert sorted(args for args, _ in db.reads) == [(0, Pusher.scan_limit), (7, Pusher.scan_limit)]
    for _, d in db.reads:
        d.callback(FeedPage())  # nothing new: every round ends
    pusher.wake()
    clock.advance(Pusher.round_interval_s)
    assert len(db.reads) == 4  # a later wake reads again


def test_a_terminal_joining_a_read_begun_before_its_wake_reads_again_after():
    db = CountingDatabase()
    first, second = Terminal(1, connection=object()), Terminal(2, connection=object())
    registry = SimpleNamespace(terminals={1: first, 2: second}, connected=lambda: [second])
    clock = task.Clock()
    pusher = Pusher(db, registry, SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    pusher.kick(1)  # a read of cursor 0 begins...
    pusher.wake()  # ...then a change is committed: terminal 2 joins a read that may miss it
    assert len(db.reads) == 1
    db.reads[0][1].callback(FeedPage())
    clock.advance(Pusher.round_interval_s)
    assert [args for args, _ in db.reads] == [(0, Pusher.scan_limit)] * 2  # so 2 reads the feed again


def held_back() -> FeedPage:
    page = FeedPage()
    page.held_back = True  # committed changes wait above the watermark (a transaction still runs below them)
    return page


def test_a_feed_read_held_back_by_the_watermark_is_made_again_soon():
    db, clock = CountingDatabase(), task.Clock()
    term = Terminal(1, connection=object())
    registry = SimpleNamespace(terminals={1: term}, connected=lambda: [term])
    pusher = Pusher(db, registry, SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    pusher.kick(1)
    db.reads[0][1].callback(held_back())
    assert len(db.reads) == 1  # no wake-up will come for it: the pusher reads again on its own
    clock.advance(Pusher.recheck_s)
    assert len(db.reads) == 2
    db.reads[1][1].callback(FeedPage())
    clock.advance(Pusher.recheck_s * 10)
    assert len(db.reads) == 2  # not held back any more: nothing until the next change


def test_a_terminals_rounds_begin_an_interval_apart_and_changes_meanwhile_share_the_next():
    db, clock = CountingDatabase(), task.Clock()
    term = Terminal(1, connection=object())
    pusher = Pusher(db, SimpleNamespace(terminals={1: term}, connected=lambda: [term]), SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    pusher.wake()
    db.reads[0][1].callback(FeedPage())
    for _ in range(3):  # three changes committed soon after
        clock.advance(Pusher.round_interval_s / 10)
        pusher.wake()
    assert len(db.reads) == 1
    clock.advance(Pusher.round_interval_s)
    assert len(db.reads) == 2  # one round for the three
    db.reads[1][1].callback(FeedPage())
    clock.advance(10)
    pusher.wake()
    assert len(db.reads) == 3  # after a quiet spell: at once


def test_the_sweep_leaves_a_terminal_alone_while_its_round_is_under_way():
    db, clock = CountingDatabase(), task.Clock()
    term = Terminal(1, connection=object())
    pusher = Pusher(db, SimpleNamespace(terminals={1: term}, connected=lambda: [term]), SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    pusher.kick(1)
    pusher.sweep(1)  # it lags only until this round's cursor move is committed
    db.reads[0][1].callback(FeedPage())
    clock.advance(Pusher.round_interval_s * 2)
    assert len(db.reads) == 1  # no second round for nothing
    pusher.sweep(1)
    assert len(db.reads) == 2  # idle and still lagging: the sweep kicks it


def test_stopping_the_pusher_cancels_a_pending_read_again():
    db, clock = CountingDatabase(), task.Clock()
    term = Terminal(1, connection=object())
    pusher = Pusher(db, SimpleNamespace(terminals={1: term}, connected=lambda: [term]), SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    pusher.kick(1)
    db.reads[0][1].callback(held_back())
    pusher.stop()
    assert clock.getDelayedCalls() == []


class AnsweringTerminal:
    """A connection that answers puts and deletes with the statuses a test gives."""

    push_bytes = 60_000

    def __init__(self, put_status, delete_status=UserStatus.OK):
        self.put_status, self.delete_status = put_status, delete_status

    def put_users(self, records, keep_local_changes):
        return defer.succeed([UserResult(UserRecordWire.parse(r).user_id, self.put_status) for r in records])

    def delete_users(self, user_ids):
        return defer.succeed([UserResult(u, self.delete_status) for u in user_ids])


class WritingDatabase(CountingDatabase):
    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, work, *args):
        self.writes.append(args)
        return defer.succeed(None)


def deliver(entries, put_status, delete_status=UserStatus.OK, details=False):
    db, kept = WritingDatabase(), []
    term = Terminal(1, connection=AnsweringTerminal(put_status, delete_status))
    registry = SimpleNamespace(terminals={1: term}, connected=lambda: [term])
    pusher = Pusher(db, registry, SimpleNamespace(mode=SyncMode.ALL_WITH_DEVICE_UPDATES), task.Clock(), Metrics(),
                    on_local_change_kept=lambda terminal_id, users: kept.append((terminal_id, users)))
    pusher.kick(1)
    db.reads[0][1].callback(FeedPage(entries))
    ((moves,),) = db.writes
    return [(row["type"], row["user_id"]) + ((row["detail"],) if details else ()) for _, _, rows in moves for row in rows], kept


def test_a_deletion_on_the_server_is_reported_as_one():
    entries = [FeedEntry("u1", 1, UserRecordWire.build(UserRecord("u1", name="A")), frozenset(), None),
               FeedEntry("u2", 2, None, frozenset(), None)]
    rows, _ = deliver(entries, UserStatus.OK)
    assert rows == [(APPLIED_BY_DEVICE, "u1"), (DELETED_BY_SERVER, "u2")]


def test_a_deletion_the_terminal_did_not_hold_is_done_and_says_so_not_a_refusal():
    """A retried deletion the terminal applied late is answered NOT_FOUND: the user is gone, as wanted."""
    entries = [FeedEntry("u2", 2, None, frozenset(), None)]
    rows, _ = deliver(entries, UserStatus.OK, delete_status=UserStatus.NOT_FOUND, details=True)
    assert rows == [(DELETED_BY_SERVER, "u2", "the terminal did not hold this user: nothing left to delete")]


def test_a_terminal_keeping_its_own_change_makes_a_pull_owed():
    entries = [FeedEntry("u1", 1, UserRecordWire.build(UserRecord("u1", name="A")), frozenset(), None)]
    rows, kept = deliver(entries, UserStatus.LOCAL_CHANGE_PENDING)
    assert rows == [] and kept == [(1, ["u1"])]


def test_a_lone_request_that_fails_leaves_the_cursor_and_says_why():
    from twisted.logger import globalLogPublisher

    from protocol.errors import RemoteError

    class RefusingTerminal(AnsweringTerminal):
        def put_users(self, records, keep_local_changes):
            return defer.fail(RemoteError(7, "storage full"))

    db, lines, metrics = WritingDatabase(), [], Metrics()
    term = Terminal(1, connection=RefusingTerminal(UserStatus.OK))
    pusher = Pusher(db, SimpleNamespace(terminals={1: term}, connected=lambda: [term]), SimpleNamespace(mode=SyncMode.ALL),
                    task.Clock(), metrics)
    globalLogPublisher.addObserver(lines.append)
    try:
        pusher.kick(1)
        db.reads[0][1].callback(FeedPage([FeedEntry("u1", 3, UserRecordWire.build(UserRecord("u1", name="A")), frozenset(), None)]))
    finally:
        globalLogPublisher.removeObserver(lines.append)
    assert db.writes == [] and term.cursor == 0
    said = [line["e"] for line in lines if line.get("log_namespace") == "gateway.pusher"]
    assert said and "storage full" in said[0]  # the request's own error, not a wrapper's
    assert metrics.failures.labels("push")._value.get() == 1


class StalledTerminal(AnsweringTerminal):
    """A connection whose puts the test answers, or fails, by hand."""

    def __init__(self):
        super().__init__(UserStatus.OK)
        self.puts = []

    def put_users(self, records, keep_local_changes):
        d = defer.Deferred()
        self.puts.append(([UserRecordWire.parse(r).user_id for r in records], d))
        return d


def stalled():
    db, clock, conn = WritingDatabase(), task.Clock(), StalledTerminal()
    term = Terminal(1, connection=conn)
    pusher = Pusher(db, SimpleNamespace(terminals={1: term}, connected=lambda: [term]), SimpleNamespace(mode=SyncMode.ALL), clock, Metrics())
    return db, clock, conn, term, pusher


def change(user_id, seq):
    return FeedEntry(user_id, seq, UserRecordWire.build(UserRecord(user_id, name="A")), frozenset(), None)


def unanswered(conn):
    from gateway.native.session import RequestTimeout

    conn.puts[-1][1].errback(RequestTimeout("terminal 1: PUT_USERS unanswered after 15 s"))


def next_round_after(db, clock, pusher) -> float:
    """How long until the next round reads the feed, while the sweep and changes keep kicking."""
    reads, waited = len(db.reads), 0.0
    while len(db.reads) == reads:
        assert waited < 100
        pusher.sweep(1)
        pusher.wake()
        clock.advance(0.25)
        waited += 0.25
    return waited


def test_unanswered_rounds_wait_longer_each_time_up_to_a_cap_and_an_acknowledged_one_ends_the_wait():
    db, clock, conn, term, pusher = stalled()
    pusher.kick(1)
    waits = []
    for _ in range(8):
        db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
        unanswered(conn)
        waits.append(next_round_after(db, clock, pusher))
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]  # round_interval_s doubled, then the cap
    assert db.writes == [] and term.cursor == 0  # nothing acknowledged: the cursor stays
    assert [args for args, _ in db.reads] == [(0, Pusher.scan_limit)] * 9  # each round from the same cursor
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    conn.puts[-1][1].callback([UserResult("u1", UserStatus.OK)])
    assert term.cursor == 3
    clock.advance(10)
    pusher.wake()  # a change after the quiet spell goes at once: no wait is left
    db.reads[-1][1].callback(FeedPage([change("u2", 4)]))
    unanswered(conn)
    assert next_round_after(db, clock, pusher) == 1  # the wait starts again at its least


def test_a_change_committed_during_the_wait_reaches_the_terminal_after_it():
    db, clock, conn, term, pusher = stalled()
    pusher.kick(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    unanswered(conn)
    clock.advance(0.5)
    pusher.wake()  # u2 is committed while the terminal's next round waits
    clock.advance(0.25)
    assert len(db.reads) == 1
    clock.advance(0.25)
    ((args, read),) = db.reads[1:]
    assert args == (0, Pusher.scan_limit)
    read.callback(FeedPage([change("u1", 3), change("u2", 5)]))
    users, answer = conn.puts[-1]
    assert users == ["u1", "u2"]  # nothing dropped: the unanswered change and the new one
    answer.callback([UserResult("u1", UserStatus.OK), UserResult("u2", UserStatus.OK)])
    assert term.cursor == 5


def test_a_refused_round_does_not_make_the_next_wait():
    from protocol.errors import RemoteError

    db, clock, conn, term, pusher = stalled()
    pusher.kick(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    conn.puts[-1][1].errback(RemoteError(7, "storage full"))  # answered in time: no overload to shed
    assert next_round_after(db, clock, pusher) == Pusher.round_interval_s


def test_a_round_of_several_requests_ends_when_the_last_has_settled_not_at_the_first_unanswered():
    from gateway.native.session import RequestTimeout

    db, clock, conn, term, pusher = stalled()
    pusher.batch_users = 1  # one request per user: the link queues those behind the first
    pusher.kick(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3), change("u2", 4)]))
    (_, first), (_, second) = conn.puts
    first.errback(RequestTimeout("terminal 1: PUT_USERS unanswered after 15 s"))
    clock.pump([0.25] * 40)
    pusher.sweep(1)
    assert len(db.reads) == 1  # u2 is still on its way: no round sends it again beside itself
    second.callback([UserResult("u2", UserStatus.OK)])
    assert term.cursor == 0 and next_round_after(db, clock, pusher) == Pusher.backoff_first_s


def test_a_new_link_or_an_answer_in_time_ends_the_wait_and_a_stopped_pusher_begins_no_round():
    from protocol.errors import RemoteError

    db, clock, conn, term, pusher = stalled()
    pusher.kick(1)
    for _ in range(3):
        db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
        unanswered(conn)
        next_round_after(db, clock, pusher)
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    unanswered(conn)  # a wait of 8 s now
    pusher.online(1)  # the terminal reconnected: its old link's wait is gone
    clock.advance(Pusher.round_interval_s)
    assert len(db.reads) == 5
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    conn.puts[-1][1].errback(RemoteError(7, "storage full"))  # answered in time
    clock.advance(Pusher.round_interval_s)
    pusher.sweep(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    unanswered(conn)
    assert next_round_after(db, clock, pusher) == Pusher.backoff_first_s  # doubling begins afresh
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    pusher.stop()
    unanswered(conn)  # a round ending after stop schedules nothing
    assert clock.getDelayedCalls() == []


def test_a_new_link_during_a_round_that_then_fails_gets_its_round_without_the_sweep():
    db, clock, conn, term, pusher = stalled()
    pusher.kick(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    pusher.online(1)  # the terminal reconnected while the old link's round was under way
    conn.puts[-1][1].errback(ConnectionError("terminal 1: link closed"))
    clock.advance(Pusher.round_interval_s)
    assert len(db.reads) == 2


def test_an_unanswered_request_decides_a_round_a_refusal_beside_it_does_not():
    from gateway.native.session import RequestTimeout
    from protocol.errors import RemoteError

    db, clock, conn, term, pusher = stalled()
    pusher.batch_users = 1
    pusher.kick(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3), change("u2", 4)]))
    (_, first), (_, second) = conn.puts
    first.errback(RemoteError(7, "storage full"))
    second.errback(RequestTimeout("terminal 1: PUT_USERS unanswered after 15 s"))
    assert next_round_after(db, clock, pusher) == Pusher.backoff_first_s


def test_an_old_links_unanswered_round_ending_after_a_new_link_came_makes_the_new_one_wait_nothing():
    db, clock, conn, term, pusher = stalled()
    pusher.kick(1)
    db.reads[-1][1].callback(FeedPage([change("u1", 3)]))
    term.connection = StalledTerminal()  # the terminal reconnected while the old link's round was under way
    pusher.online(1)
    unanswered(conn)  # the old link's request is given up on only now
    assert next_round_after(db, clock, pusher) == Pusher.round_interval_s
