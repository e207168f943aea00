"""Pusher (unit): pushes fit the link they go over; terminals at one cursor share a feed read."""

from types import SimpleNamespace

from twisted.internet import defer, task

from gateway.metrics import Metrics
from gateway.pusher import Pusher, request_chunks
from gateway.syncmode import SyncMode
from gateway.terminals import Terminal


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
    pusher = Pusher(db, registry, SimpleNamespace(mode=SyncMode.ALL), task.Clock(), Metrics())
    pusher.wake_all()
    assert sorted(args for args, _ in db.reads) == [(0, Pusher.scan_limit), (7, Pusher.scan_limit)]
    for _, d in db.reads:
        d.callback([])  # nothing new: every round ends
    pusher.wake_all()
    assert len(db.reads) == 4  # a later wake reads again


def test_a_terminal_joining_a_read_begun_before_its_wake_reads_again_after():
    db = CountingDatabase()
    first, second = Terminal(1, connection=object()), Terminal(2, connection=object())
    registry = SimpleNamespace(terminals={1: first, 2: second}, connected=lambda: [second])
    pusher = Pusher(db, registry, SimpleNamespace(mode=SyncMode.ALL), task.Clock(), Metrics())
    pusher.kick(1)  # a read of cursor 0 begins...
    pusher.wake_all()  # ...then a change is committed: terminal 2 joins a read that may miss it
    assert len(db.reads) == 1
    db.reads[0][1].callback([])
    assert [args for args, _ in db.reads] == [(0, Pusher.scan_limit)] * 2  # so 2 reads the feed again
