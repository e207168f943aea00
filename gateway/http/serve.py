"""How the gateway serves HTTP: from an API process of its own (the default), or on the ingest reactor.

Under a log storm the ingest reactor is busy with terminals; an API served there answers only
between their frames (p99 17 times the idle one in the 200-terminal storm). So ``gateway run``
binds the public port itself, hands the listening socket to a child process
(``python -m gateway.http``) and supervises it: restarted with backoff when it dies, stopped
with the gateway, its log events logged by the gateway as its own. The ingest process keeps
the whole API on an internal loopback port of its own, for two things only: the snapshot of its
memory the child reads when its requests need it (``/internal/snapshot``, gateway/http/snapshot.py;
``?metrics=1`` adds the metrics, for a scrape of the child's /metrics; ``reconciled=N`` leaves out
the reconciliations the child holds),
and writes, which the child forwards there so that they run exactly where they always ran.

Binding the public port here keeps a port in use a start-up failure of ``gateway run`` (one
line, exit 1), and a restarted child takes the same socket: connections made meanwhile wait in
its backlog instead of being refused.
"""

import os
import sys

import msgspec
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

from gateway.http import snapshot
from gateway.http.site import GatewaySite, Readable, Root

log = Logger(namespace="gateway.http")
RECORD_SEPARATOR = b"\x1e"  # before each JSON log record of twisted.logger.jsonFileLogObserver


class InProcess:
    """The site on the ingest reactor (``http_process = false``): one process, as for tests that look inside it."""

    def __init__(self, gateway):
        self.port = gateway.listen_http(GatewaySite(gateway))

    def stop(self):
        return self.port.stopListening()


class SnapshotResource(Readable):
    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request):
        request.setHeader("Content-Type", "application/json; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        metrics = request.args.get(b"metrics") == [b"1"]
        reconciled = request.args.get(b"reconciled", [b"0"])[0]
        # Anything but a count (a local peer's guess) asks for every reconciliation; 19 digits: int()
        # refuses thousands, and no count of findings reaches 10^19.
        count = int(reconciled) if reconciled.isdigit() and len(reconciled) <= 19 else 0
        # Up to twice a second: msgspec encodes 200 terminals in a seventh of json.dumps' time (79 vs 558 us).
        return msgspec.json.encode(snapshot.take(self.gateway, self.gateway.reactor.seconds(), metrics, count))


class InternalSite(GatewaySite):
    """The whole API plus ``/internal/snapshot``, on 127.0.0.1 only, for the API process."""

    def __init__(self, gateway):
        super().__init__(gateway, loopback_only=True)
        internal = Root()
        internal.putChild(b"snapshot", SnapshotResource(gateway))
        self.resource.putChild(b"internal", internal)


class ApiProcess:
    """The public port, bound here and served by a supervised child process."""

    restart_delay = staticmethod(backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0, jitter=lambda: 0.0))
    healthy_after_s = 30.0  # a child that ran this long starts the backoff over when it dies
    stop_timeout_s = 5.0

    def __init__(self, gateway):
        self.gateway = gateway
        self.reactor = gateway.reactor
        # Bound and listening, but never read by this reactor: the child accepts on it.
        self.port = gateway.listen_http(_Unread())
        self.port.stopReading()
        self.internal = self.reactor.listenTCP(0, InternalSite(gateway), interface="127.0.0.1")
        self.child: _Child | None = None
        self.restarts = 0
        self._stopping = False
        self._restart_call = None
        self._spawn()

    def _spawn(self) -> None:
        self._restart_call = None
        ingest_url = f"http://127.0.0.1:{self.internal.getHost().port}"
        argv = [sys.executable, "-m", "gateway.http", "--ingest", ingest_url, "--listen-fd", "3", "--gateway-pid", str(os.getpid())]
        self.child = _Child(msgspec.json.encode(self.gateway.config) + b"\n", self._ended, self.reactor.seconds())
        self.reactor.spawnProcess(self.child, sys.executable, argv, env=os.environ.copy(),
                                  childFDs={0: "w", 1: "r", 2: "r", 3: self.port.fileno()})
        log.info("API process started (pid {pid})", pid=self.child.transport.pid)

    def _ended(self, child: "_Child", reason) -> None:
        if self._stopping:
            return
        if self.reactor.seconds() - child.started_s >= self.healthy_after_s:
            self.restarts = 0
        delay = self.restart_delay(self.restarts)
        self.restarts += 1
        ended = reason.value
        why = f"killed by signal {ended.signal}" if getattr(ended, "signal", None) else f"exited with status {getattr(ended, 'exitCode', '?')}"
        log.warn("API process (pid {pid}) {why}; starting it again in {delay:.1f} s", pid=child.pid, why=why, delay=delay)
        self._restart_call = self.reactor.callLater(delay, self._spawn)

    @defer.inlineCallbacks
    def stop(self):
        self._stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        if self.child is not None:
            yield self.child.stop(self.reactor, self.stop_timeout_s)
        yield self.port.stopListening()
        yield self.internal.stopListening()


class _Unread(protocol.Factory):
    noisy = False


class _Child(protocol.ProcessProtocol):
    def __init__(self, config_line: bytes, on_ended, started_s: float):
        self.config_line = config_line
        self.on_ended = on_ended
        self.started_s = started_s
        self.pid = None
        self.ended = defer.Deferred()
        self._partial = b""

    def connectionMade(self):
        self.pid = self.transport.pid
        # Its configuration on standard input; the pipe stays open, and its end tells the child
        # the gateway is gone (even after a SIGKILL), so no API outlives its gateway.
        self.transport.writeToChild(0, self.config_line)

    def outReceived(self, data: bytes) -> None:
        """Its log events (JSON records), logged here as the gateway's own: wherever the gateway's log goes."""
        *records, self._partial = (self._partial + data).split(b"\n")  # each ends a line (JSON escapes its own)
        for record in records:
            record = record.lstrip(RECORD_SEPARATOR).strip()
            if record:
                globalLogPublisher(eventFromJSON(record.decode("utf-8", "replace")))

    def errReceived(self, data: bytes) -> None:
        """What it printed outside its log (a failure before logging started)."""
        for line in data.decode("utf-8", "replace").splitlines():
            log.warn("API process (pid {pid}): {line}", pid=self.pid, line=line)

    def processEnded(self, reason):
        self.ended.callback(None)
        self.on_ended(self, reason)

    def stop(self, reactor, timeout_s: float) -> defer.Deferred:
        if self.ended.called:
            return defer.succeed(None)
        self.transport.signalProcess("TERM")
        kill = reactor.callLater(timeout_s, self._kill)
        return self.ended.addBoth(lambda _: kill.active() and kill.cancel())

    def _kill(self):
        log.warn("API process (pid {pid}) did not stop within its time: killed", pid=self.pid)
        self.transport.signalProcess("KILL")
