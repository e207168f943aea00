"""The API process: the HTTP API, page, /metrics and live stream, served on a reactor of their own.

``gateway run`` starts it (gateway/http/serve.py) with the public listening socket as file
descriptor 3, its configuration as one JSON line on standard input, and the ingest process's
internal address. Reads go to the database on this process's own reader threads; what only the
ingest process knows comes from its snapshot, read when a request needs it and this process's
copy is older than ``SnapshotFollower.interval_s`` (so a terminal's online state is at most
``SnapshotFollower.max_age_s`` old, plus the time the ingest reactor takes to answer;
``gateway_api_snapshot_age_seconds`` says how old), and unasked only while the live stream has
listeners. The metrics ride only on a read a scrape of
/metrics asks for: building them every half second cost more than the rest of the snapshot. Writes are
forwarded to the ingest process, which runs them as it always did (they touch its memory: a
refused terminal's link is closed, pushes are woken), and answered once a snapshot taken after
them is in, so whoever wrote reads what they wrote; a gateway that does not answer a write (stopped, restarting) makes it a 503.
Standard input closing means the gateway is
gone: this process stops too.
"""

import argparse
import ctypes
import io
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, replace

import msgspec
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from twisted.internet import defer, task
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

from gateway.activity import Activity
from gateway.config import GatewayConfig
from gateway.store.database import Database
from gateway.http.api import ApiError, Route
from gateway.http.site import GatewaySite, api_routes
from gateway.http.snapshot import Mirror
from gateway.logs import start_logging
from gateway.process.heap import freeze_startup

log = Logger(namespace="gateway.http.process")


class IngestUnavailable(Exception):
    """The ingest process did not answer in time (busy, stopped or restarting)."""


class SnapshotFollower:
    """Reads the ingest process's snapshot into a ``Mirror`` when a request needs it, one read at a time.

    Nothing is read while nobody asks: an idle gateway spent 5 ms a second in this process and
    the snapshot's cost in the ingest process on reads no request used (issue 24). A request
    that needs the mirror (``fresh``) is answered from it at once while it is younger than
    ``max_age_s``, a read of a newer one begun once it is older than ``interval_s``, so a client
    that polls more than once a second never waits for the busy ingest reactor; an older copy
    is read again first, unless a read is under way already. Only while the live stream has
    listeners, which get the monitoring events waiting for the database as they arrive, is it
    read every ``interval_s`` unasked.
    """

    interval_s = 0.5
    max_age_s = 1.0
    timeout_s = 5.0

    def __init__(self, reactor, ingest_url: str, mirror: Mirror, agent=None):
        self._reactor = reactor
        self._url = f"{ingest_url}/internal/snapshot".encode()
        self._agent = agent or Agent(reactor, pool=HTTPConnectionPool(reactor))
        self.mirror = mirror
        self.received_s: float | None = None  # on this process's clock
        self._reading = False
        self._began_young = False  # the read under way began while the copy was at most max_age_s old
        self._current: list[defer.Deferred] = []  # waiting for the read under way
        self._next: list[defer.Deferred] = []  # asked for after it began: they wait for the one after
        self._metrics_next = False  # the next read brings the metrics too
        self._failing = False
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(self.interval_s, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def read(self, metrics: bool = False) -> defer.Deferred:
        """Fires once a snapshot asked for from now on is in the mirror (IngestUnavailable if none
        came in time); ``metrics``: one with the metrics."""
        d = defer.Deferred()
        self._metrics_next |= metrics
        if self._reading:
            self._next.append(d)
        else:
            self._current.append(d)
            self._begin()
        return d

    def fresh(self) -> defer.Deferred:
        """Fires when the mirror may answer a request: at once if it is younger than ``max_age_s``,
        or a read is under way (a busy ingest reactor is slow to answer: the request does not
        wait for it, as no request waited before reads were made on demand) and began while the
        copy was at most ``max_age_s`` old, or the ingest
        process did not answer the last read (the last one is served, with its age); else once
        a new one is in or the read failed."""
        age = self.age_s()
        if age < self.interval_s:
            return defer.succeed(None)
        if age < self.max_age_s or self._failing or (self._reading and self._began_young):
            self._refresh()
            return defer.succeed(None)
        if self._reading:  # begun on a copy already too old (after a quiet spell): its answer is the one to wait for
            d = defer.Deferred()
            self._current.append(d)
            return d.addErrback(lambda f: f.trap(IngestUnavailable))
        return self.read().addErrback(lambda f: f.trap(IngestUnavailable))

    def since_s(self) -> float:
        """When the mirror's snapshot came in, on this process's clock (now before the first):
        a database read begun since is no older than what the mirror shows."""
        return self.received_s if self.received_s is not None else self._reactor.seconds()

    def _begin(self) -> None:
        self._reading = True
        self._began_young = self.age_s() <= self.max_age_s
        url = self._url + b"?reconciled=%d" % self.mirror.reconciled + (b"&metrics=1" if self._metrics_next else b"")
        self._metrics_next = False
        d = self._agent.request(b"GET", url)
        d.addCallback(_body_of)
        d.addTimeout(self.timeout_s, self._reactor)
        d.addCallback(self._received)
        d.addBoth(self._finished)

    def _received(self, answer) -> None:
        code, raw = answer
        if code != 200:
            raise IngestUnavailable(f"the gateway answered {code} for its snapshot")
        self.mirror.update(raw)
        self.received_s = self._reactor.seconds()

    def _finished(self, result) -> None:
        failed = isinstance(result, Failure)
        if failed != self._failing:  # said once when it starts and once when it ends, not every read
            self._failing = failed
            if failed:
                log.warn("cannot read the gateway's state: {e}; serving the last one read", e=_why(result, self.timeout_s))
            else:
                log.info("reading the gateway's state again")
        error = IngestUnavailable(f"the gateway did not answer: {_why(result, self.timeout_s)}") if failed else None
        waiting, self._current = self._current, []
        for d in waiting:
            d.errback(error) if failed else d.callback(None)
        self._reading = False
        if self._next:
            self._current, self._next = self._next, []
            self._begin()

    def _refresh(self) -> None:
        """A read begun unless one is under way; nobody waits for it."""
        if not self._reading:
            self.read().addErrback(lambda f: f.trap(IngestUnavailable))

    def _tick(self) -> None:
        if self.mirror.eventlog.unsaved.listeners:
            self._refresh()

    def age_s(self) -> float:
        return self._reactor.seconds() - self.received_s if self.received_s is not None else float("inf")


class WriteForwarder:
    """Writes run in the ingest process: the request, already authorized and checked here, goes there as it came."""

    timeout_s = 600.0  # as long as a write may take there: a reconciliation of every terminal, under a storm

    def __init__(self, reactor, ingest_url: str, follower: SnapshotFollower):
        self._reactor = reactor
        self._url = ingest_url.encode()
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor))
        self._follower = follower

    def forward(self, call) -> defer.Deferred:
        request = call.request
        headers = Headers({b"Content-Type": [b"application/json"]})
        authorization = request.getHeader("authorization")
        if authorization:
            headers.addRawHeader(b"Authorization", authorization.encode("latin-1"))
        raw = request.content.getvalue()
        body = FileBodyProducer(io.BytesIO(raw)) if raw else None
        d = self._agent.request(request.method, self._url + request.uri, headers, body)
        d.addCallback(_body_of)
        d.addTimeout(self.timeout_s, self._reactor)
        return d.addCallbacks(self._answered, self._unanswered, errbackArgs=(request,))

    def _answered(self, answer):
        code, raw = answer
        value = json.loads(raw)
        if code >= 400:
            raise ApiError(code, value["error"])
        # Answered once the mirror shows the write (a terminal admitted, the new sync mode).
        return self._follower.read().addBoth(lambda _: value)

    def _unanswered(self, failure, request):
        failure.trap(Exception)
        why = _why(failure, self.timeout_s)
        log.warn("{method} {path}: the gateway did not answer: {why}", method=request.method.decode("latin-1"),
                 path=request.path.decode("latin-1"), why=why)
        raise ApiError(503, "the gateway did not answer (busy or restarting): see whether the change was made, then retry")


def served(route: Route, follower: SnapshotFollower, forwarder: WriteForwarder) -> Route:
    """The route as this process serves it: a write forwarded to the gateway, a read of its
    memory once the mirror is fresh enough."""
    if route.writes:
        return replace(route, view=forwarder.forward)
    if route.reads_memory:
        return replace(route, view=lambda call, view=route.view: follower.fresh().addCallback(lambda _: view(call)))
    return route


def _why(failure, timeout_s: float) -> str:
    """What ended a request to the gateway, for the log."""
    reasons = getattr(failure.value, "reasons", [failure])  # the Agent wraps what ended it
    if any(reason.check(defer.CancelledError, defer.TimeoutError) for reason in reasons):
        return f"no answer within {timeout_s:g} s"
    return failure.getErrorMessage() or failure.type.__name__


def _body_of(response) -> defer.Deferred:
    """Fires with the response's code and body. Cancelled (a timeout), it closes the connection
    and drops what still comes: Twisted's ``readBody`` cannot close it (the body's transport has no
    ``abortConnection``), errbacks instead, and a late body then fired its Deferred a second time
    (AlreadyCalledError, logged CRITICAL by Twisted's HTTP client)."""
    body = _Body(response.code)
    response.deliverBody(body)
    return body.done


class _Body(Protocol):
    def __init__(self, code: int):
        self._code = code
        self._parts: list[bytes] = []
        self.done = defer.Deferred(lambda _: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason=None) -> None:
        if self.done.called:  # cancelled: the connection closed, or the body came late
            return
        if reason.check(ResponseDone):
            self.done.callback((self._code, b"".join(self._parts)))
        else:
            self.done.errback(reason)


class ApiMetrics:
    """/metrics: the ingest process's exposition, read for each scrape; the last one read, with
    its age, when the gateway does not answer within ``wait_s``."""

    wait_s = 2.0

    def __init__(self, reactor, follower: SnapshotFollower):
        self._reactor = reactor
        self._follower = follower
        self.registry = CollectorRegistry()
        Gauge("gateway_api_snapshot_age_seconds", "Seconds since the API process last read the gateway's state (terminals online, "
              "sync mode, lockouts)", registry=self.registry).set_function(follower.age_s)
        Gauge("gateway_api_metrics_age_seconds", "Age of the gateway's metrics shown here: more than a moment when the gateway did "
              "not answer this scrape in time", registry=self.registry).set_function(self._metrics_age_s)

    def _metrics_age_s(self) -> float:
        mirror = self._follower.mirror
        if mirror.metrics_taken_s is None or mirror.taken_s is None:
            return float("inf")
        return self._follower.age_s() + mirror.taken_s - mirror.metrics_taken_s

    def exposition(self) -> defer.Deferred:
        d = self._follower.read(metrics=True)
        d.addTimeout(self.wait_s, self._reactor)
        d.addErrback(lambda f: f.trap(IngestUnavailable, defer.TimeoutError))
        return d.addCallback(lambda _: self._follower.mirror.metrics_text.encode() + generate_latest(self.registry))


@dataclass
class MirroredGateway:
    """What the views read, in the API process: its own database readers and activity figures,
    and the ingest process's memory through the mirror."""

    config: GatewayConfig
    reactor: object
    db: Database
    activity: Activity
    mirror: Mirror
    metrics: ApiMetrics

    @property
    def registry(self):
        return self.mirror.registry

    @property
    def reconciler(self):
        return self.mirror.reconciler

    @property
    def doorman(self):
        return self.mirror.doorman

    @property
    def settings(self):
        return self.mirror.settings

    @property
    def eventlog(self):
        return self.mirror.eventlog


@implementer(IReadDescriptor)
class ParentWatch:
    """Standard input, which the gateway holds open for as long as it lives."""

    def __init__(self, on_gone):
        self._on_gone = on_gone

    def fileno(self) -> int:
        return 0

    def doRead(self):
        if not os.read(0, 4096):
            return ConnectionError("the gateway closed standard input")
        return None

    def connectionLost(self, reason) -> None:
        self._on_gone()

    def logPrefix(self) -> str:
        return "gateway"


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(gateway_pid: int) -> None:
    """On Linux the kernel kills this process the moment the gateway dies, and so closes the
    listening socket at once: a gateway restarted right after a SIGKILL binds its port again.
    Elsewhere the end of standard input does it, a moment later."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != gateway_pid:  # it died before that took hold
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.http", description="The gateway's API process; `gateway run` starts it.")
    parser.add_argument("--ingest", required=True, metavar="URL", help="the gateway's internal HTTP address")
    parser.add_argument("--listen-fd", type=int, required=True, metavar="FD", help="the listening socket to serve")
    parser.add_argument("--gateway-pid", type=int, required=True, metavar="PID", help="the gateway's process id: this one ends with it")
    args = parser.parse_args(argv)
    die_with(args.gateway_pid)
    config = msgspec.json.decode(sys.stdin.buffer.readline(), type=GatewayConfig)
    task.react(_serve, [config, args.ingest, args.listen_fd])


async def _serve(reactor, config: GatewayConfig, ingest_url: str, listen_fd: int) -> None:
    start_logging(json_records=True)  # the gateway writes them to its log, as its own
    db = Database(config.db, reactor)
    db.start()  # the gateway has migrated it: this only checks
    reactor.addSystemEventTrigger("after", "shutdown", db.stop)
    mirror = Mirror()
    follower = SnapshotFollower(reactor, ingest_url, mirror)
    forwarder = WriteForwarder(reactor, ingest_url, follower)
    activity = Activity(db, reactor)
    gateway = MirroredGateway(config, reactor, db, activity, mirror, ApiMetrics(reactor, follower))
    site = GatewaySite(gateway, [served(route, follower, forwarder) for route in api_routes()], since=follower.since_s)
    try:
        # Nothing is answered before the first snapshot: connections wait in the backlog. It brings
        # the metrics, so that /metrics has them even if the gateway stops answering.
        await follower.read(metrics=True)
    except IngestUnavailable as exc:
        log.warn("serving before a first snapshot of the gateway: {e}", e=exc)
    follower.start()  # reads unasked only while the live stream has listeners
    freeze_startup()
    activity.start()
    reactor.addSystemEventTrigger("before", "shutdown", follower.stop)
    reactor.addSystemEventTrigger("before", "shutdown", activity.stop)
    with socket.socket(fileno=os.dup(listen_fd)) as listening:
        family = listening.family
    port = reactor.adoptStreamPort(listen_fd, family, site)
    os.close(listen_fd)  # the port has its own copy
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)
    reactor.addReader(ParentWatch(lambda: (port.stopListening(), reactor.running and reactor.stop())))
    log.info("API process {pid} serving the page and API at http://{host}:{port}/", pid=os.getpid(),
             host=config.http_host, port=port.getHost().port)
    await defer.Deferred()  # until SIGTERM, or the gateway closing standard input
