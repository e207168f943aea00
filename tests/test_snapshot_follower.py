"""The API process reads the ingest process's snapshot when a request needs it, and unasked only
while the live stream listens (unit: task.Clock, the snapshot's HTTP answers made by hand; a late
answer on a real loopback server)."""

import msgspec
from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gateway.http.process import IngestUnavailable, SnapshotFollower
from gateway.http.snapshot import Mirror
from gateway.http.shared import SharedReads

SNAPSHOT = msgspec.json.encode(dict(taken_s=1.0, terminals=[], reconciled=0, reconciliations=[], unsaved=[], sync_mode="all", lockouts=[]))


class Answer:
    code, phrase, length = 200, b"OK", len(SNAPSHOT)

    def deliverBody(self, protocol):
        protocol.dataReceived(SNAPSHOT)
        protocol.connectionLost(Failure(ResponseDone()))


class Ingest:
    """The agent the follower asks: each request waits until the test answers it."""

    def __init__(self):
        self.asked: list[defer.Deferred] = []
        self.urls: list[bytes] = []

    def request(self, method, url, headers=None, body=None):
        self.urls.append(url)
        self.asked.append(defer.Deferred())
        return self.asked[-1]

    def answer(self) -> None:
        self.asked[-1].callback(Answer())

    def fail(self) -> None:
        self.asked[-1].errback(ConnectionRefusedError("gateway restarting"))


def following():
    clock, ingest = task.Clock(), Ingest()
    follower = SnapshotFollower(clock, "http://127.0.0.1:1", Mirror(), agent=ingest)
    follower.read()
    ingest.answer()
    follower.start()
    return clock, ingest, follower


def fired(d: defer.Deferred) -> bool:
    found = []
    d.addBoth(found.append)
    return bool(found)


def test_nobody_asking_means_no_read():
    clock, ingest, _ = following()
    clock.pump([0.5] * 120)
    assert len(ingest.asked) == 1  # the first, at start


def test_a_read_asks_only_for_the_reconciliations_kept_since_those_the_mirror_holds():
    clock, ingest, follower = following()
    follower.mirror.reconciled = 17
    follower.read()
    follower.read(metrics=True)  # waits for the next read
    ingest.answer()
    assert [url for url in ingest.urls[-2:]] == [b"http://127.0.0.1:1/internal/snapshot?reconciled=17",
                                                b"http://127.0.0.1:1/internal/snapshot?reconciled=0&metrics=1"]


def test_a_young_copy_answers_at_once_an_older_one_is_read_again_meanwhile_and_an_old_one_first():
    clock, ingest, follower = following()
    clock.advance(0.3)
    assert fired(follower.fresh()) and len(ingest.asked) == 1
    clock.advance(0.4)  # 0.7 s old: answered from it, a newer one asked for
    assert fired(follower.fresh()) and len(ingest.asked) == 2
    assert fired(follower.fresh()) and len(ingest.asked) == 2  # one read at a time
    ingest.answer()
    clock.advance(1.5)  # older than a second: the request waits for a new one
    waiting = follower.fresh()
    assert not fired(waiting) and len(ingest.asked) == 3
    ingest.answer()
    assert fired(waiting) and follower.age_s() == 0


def test_a_request_does_not_wait_for_a_read_the_busy_gateway_is_slow_to_answer():
    clock, ingest, follower = following()
    clock.advance(0.7)
    assert fired(follower.fresh()) and len(ingest.asked) == 2
    clock.advance(2)  # the read is still under way
    assert fired(follower.fresh()) and len(ingest.asked) == 2


def test_after_a_quiet_spell_every_request_waits_for_the_read_the_first_began():
    clock, ingest, follower = following()
    clock.advance(60)  # nobody asked for a minute
    first, second = follower.fresh(), follower.fresh()  # the page's requests, sent together
    assert not fired(first) and not fired(second) and len(ingest.asked) == 2
    ingest.answer()
    assert fired(first) and fired(second) and follower.age_s() == 0


def test_the_live_stream_keeps_it_read_while_it_listens():
    clock, ingest, follower = following()
    listeners = follower.mirror.eventlog.unsaved.listeners
    listeners.append(lambda event: None)
    for n in range(2, 6):
        clock.advance(0.5)
        assert len(ingest.asked) == n
        ingest.answer()
    listeners.clear()
    clock.pump([0.5] * 10)
    assert len(ingest.asked) == 5


def test_a_gateway_that_does_not_answer_leaves_requests_the_last_copy_at_once():
    clock, ingest, follower = following()
    clock.advance(2)
    waiting = follower.fresh()
    ingest.fail()
    assert fired(waiting)  # served the last one, with its age
    clock.advance(2)
    assert fired(follower.fresh()) and len(ingest.asked) == 3  # not waited for, but tried again
    ingest.answer()
    clock.advance(2)
    assert not fired(follower.fresh())  # it answers again: a request waits for a fresh copy again


class Reads:
    def __init__(self):
        self.begun: list[defer.Deferred] = []

    def read(self, query):
        self.begun.append(defer.Deferred())
        return self.begun[-1]


def test_requests_together_share_a_read_no_older_than_the_snapshot():
    clock, db = task.Clock(), Reads()
    since = [0.0]
    shared = SharedReads(db, clock, lambda: since[0])
    query = object()
    first, second = shared.read(query), shared.read(query)
    db.begun[0].callback("state")
    assert len(db.begun) == 1 and fired(first) and fired(second)
    assert fired(shared.read(query)) and len(db.begun) == 1  # kept for the requests after
    clock.advance(1)
    since[0] = 0.5  # a newer snapshot: the state must be read again
    later = shared.read(query)
    assert not fired(later) and len(db.begun) == 2
    db.begun[1].errback(RuntimeError("database is locked"))
    assert fired(later)
    shared.read(query)  # a failure is not kept
    assert len(db.begun) == 3


def test_a_shared_read_is_not_kept_past_its_age_while_no_snapshot_comes():
    clock, db = task.Clock(), Reads()
    shared = SharedReads(db, clock, lambda: 0.0)  # the gateway stopped answering: no newer snapshot
    query = object()
    shared.read(query)
    db.begun[0].callback("state")
    clock.advance(SharedReads.max_age_s / 2)
    assert fired(shared.read(query)) and len(db.begun) == 1
    clock.advance(SharedReads.max_age_s)
    shared.read(query)  # the database still answers: read it again
    assert len(db.begun) == 2


def test_answers_built_before_a_newer_snapshot_are_let_go():
    clock, since = task.Clock(), [0.0]
    shared = SharedReads(Reads(), clock, lambda: since[0])
    shared.made_from(("terminals", 0, None), ("state",), lambda: {"terminals": ["a long list"]})
    clock.advance(1)
    since[0] = 1.0
    shared.made_from(("terminals", 5, 10), ("newer",), lambda: {"terminals": []})
    assert list(shared._made) == [("terminals", 5, 10)]


def test_an_answer_is_built_once_per_read_it_shows():
    clock, since = task.Clock(), [0.0]
    shared = SharedReads(Reads(), clock, lambda: since[0])
    built = []

    def build():
        built.append(1)
        return {"terminals": []}

    state = ("state",)
    assert shared.made_from("list", state, build) is shared.made_from("list", state, build)
    assert len(built) == 1
    newer = ("newer state",)
    shared.made_from("list", newer, build)  # from another read
    clock.advance(1)
    since[0] = 1.0  # a newer snapshot
    shared.made_from("list", newer, build)
    assert len(built) == 3


def test_an_answers_json_text_is_encoded_once_and_let_go_with_it():
    clock, since = task.Clock(), [0.0]
    shared = SharedReads(Reads(), clock, lambda: since[0])
    encoded = []

    def encode(value):
        encoded.append(value)
        return msgspec.json.encode(value)

    state = ("state",)
    page = shared.made_from("list", state, lambda: {"terminals": [1]})
    assert shared.text_of(page, encode) is shared.text_of(shared.made_from("list", state, dict), encode)
    assert len(encoded) == 1
    clock.advance(1)
    since[0] = 1.0  # a newer snapshot: the page is made and encoded anew
    newer = shared.made_from("list", ("newer state",), lambda: {"terminals": [2]})
    assert shared.text_of(newer, encode) == b'{"terminals":[2]}' and len(encoded) == 2
    shared.text_of(page, encode)  # the older page was let go with its text: encoded again
    assert len(encoded) == 3
    other = {"terminals": [1]}  # an answer made_from did not make: encoded each time
    shared.text_of(other, encode), shared.text_of(other, encode)
    assert len(encoded) == 5


def test_the_terminals_list_is_encoded_once_per_snapshot_and_anew_after_one(monkeypatch):
    """Through the API's resource: the same bytes while the snapshot is unchanged, without
    encoding them again; the terminal's new cursor once a newer one is in."""
    from types import SimpleNamespace

    from twisted.web.test.requesthelper import DummyRequest

    from gateway.config import GatewayConfig
    from gateway.http import api
    from gateway.http.api import BoundedBody
    from gateway.http.site import GatewaySite
    from gateway.terminals import Terminal

    clock, since = task.Clock(), [0.0]
    terminal = Terminal(101, name="Door", cursor=3)
    recent = SimpleNamespace(behind=lambda cursor, groups, mode: 5 - cursor)
    db = SimpleNamespace(read=lambda query: defer.succeed((5, {}, {}, recent)))  # sync_state's answer
    gateway = SimpleNamespace(config=GatewayConfig(), reactor=clock, db=db, eventlog=SimpleNamespace(unsaved=None),
                              registry=SimpleNamespace(terminals={101: terminal}), settings=SimpleNamespace(mode="all"),
                              reconciler=SimpleNamespace(last={}, repaired_total={}), metrics=None)
    site = GatewaySite(gateway, since=lambda: since[0])
    encoded = []
    monkeypatch.setattr(api, "_ENCODER", SimpleNamespace(encode=lambda value: encoded.append(value) or msgspec.json.encode(value)))

    def listed() -> bytes:
        request = DummyRequest([b"api", b"terminals"])
        request.path = request.uri = b"/api/terminals"
        request.content, request._serverName = BoundedBody(), b"127.0.0.1"
        site.getResourceFor(request).render(request)
        assert request.finished and request.responseCode in (None, 200)
        return b"".join(request.written)

    first = listed()
    assert listed() == first and len(encoded) == 1
    terminal.cursor = 5
    clock.advance(1)
    since[0] = 1.0  # the snapshot that shows the new cursor
    assert b'"cursor":5,"lag":0' in listed() and len(encoded) == 2


class SlowIngest(Resource):
    """The ingest process under load: ``early`` bytes of its snapshot's answer now (headers and
    the body's first bytes, or nothing), the rest ``late_s`` later, unless the reader has gone."""

    isLeaf = True

    def __init__(self, early: int, late_s: float):
        super().__init__()
        self.early, self.late_s = early, late_s
        self.answered: list[defer.Deferred] = []

    def render_GET(self, request):
        request.setHeader(b"Content-Length", str(len(SNAPSHOT)).encode())
        if not self.late_s:
            return SNAPSHOT
        if self.early:
            request.write(SNAPSHOT[:self.early])
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def rest():
            if not gone:
                request.write(SNAPSHOT[self.early:])
                request.finish()
        self.answered.append(task.deferLater(reactor, self.late_s, rest))
        return NOT_DONE_YET


class LateAnswerTests(unittest.TestCase):
    """On a real loopback HTTP server: a snapshot that comes after the read timed out."""

    @defer.inlineCallbacks
    def late_answer(self, early: int):
        ingest = SlowIngest(early, late_s=0.3)
        port = reactor.listenTCP(0, Site(ingest), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        follower = SnapshotFollower(reactor, f"http://127.0.0.1:{port.getHost().port}", Mirror())
        follower.timeout_s = 0.1
        self.addCleanup(follower._agent._pool.closeCachedConnections)
        with capturedLogs() as logged:
            with self.assertRaises(IngestUnavailable):
                yield follower.read()
            yield ingest.answered[0]  # the late rest of the answer was due
            yield task.deferLater(reactor, 0.1, lambda: None)  # and would have arrived
        said = [(e["log_level"], e["log_namespace"]) for e in logged if e["log_level"] > LogLevel.info]
        self.assertEqual(said, [(LogLevel.warn, "gateway.http.process")])  # the failed read, once: nothing else
        ingest.late_s = 0
        yield follower.read()
        self.assertLess(follower.age_s(), 1.0)  # read, on the connection the pool opens anew

    def test_a_body_that_comes_after_the_timeout_is_dropped_quietly_and_the_next_read_works(self):
        return self.late_answer(early=10)

    def test_an_answer_that_comes_after_the_timeout_is_dropped_quietly_and_the_next_read_works(self):
        return self.late_answer(early=0)
