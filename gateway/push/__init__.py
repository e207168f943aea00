"""ZKTeco PUSH (ADMS) devices: terminals that call the gateway over HTTP (docs/zk-push.md).

``listener.py`` is the HTTP side (twisted.web, its own port, optional TLS); ``door.py`` admits
devices by serial number and address; ``device.py`` is the ``PushDevice`` the sync core talks
to; ``settings.py`` the ``[push]`` section; ``kind.py`` registers them (gateway/kinds.py). The
conversation itself is protocol/zk/push/.
``PushService`` ties them: one ``PushDevice`` per admitted serial, made at its first request
and kept while the gateway runs (what it knows of the device outlives its online periods).
"""

import functools
import time

from msgspec import UNSET
from prometheus_client import Counter
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway.native.accept import LISTEN_BACKLOG
from gateway.push.device import PushDevice
from gateway.push.door import PushDoor
from gateway.push.listener import push_site
from gateway.push.queue import CommandStore
from gateway.push.settings import parse_push
from gateway.native.tls import server_options
from gateway.zk.mapping import PIN_THREADS
from gateway.zk.store import DatabaseStore
from protocol.zk.push.server import CommandsWanted, InitRequested, PushServer, PushTiming, Registered

log = Logger(namespace="gateway.push")


class PushService:
    def __init__(self, section: dict, reactor, *, registry, db, events, metrics):
        self.entry = entry = parse_push(section)
        self._reactor = reactor
        self._registry = registry
        self._db = db
        self._events = events
        self._store = DatabaseStore(db)  # what the server has seen of each device, as for ZK devices the gateway dials
        self._commands = CommandStore(db, events)
        self._refusals = metrics.failures.labels("push_refused")  # as the pusher counts a terminal's refusal
        self.door = PushDoor(registry, entry.devices, metrics.registry)
        self._skipped = Counter("gateway_push_lines_skipped", "Lines of PUSH uploads that did not parse, by table", ["table"],
                                registry=metrics.registry)
        self.timing = PushTiming(delay_s=entry.delay_s, error_delay_s=entry.error_delay_s, realtime=entry.realtime,
                                 timezone_h=entry.timezone_h, command_s=entry.command_s)
        self.devices: dict[str, PushDevice] = {}
        # PIN hashes of pulled and compared passwords (PBKDF2, about 2 ms each) on threads of their own, as ZK devices'
        self._pins = ThreadPool(0, PIN_THREADS, name="push-pins")
        # Command ids differ from one start to the next: a result for a command of the last run matches none of this one's.
        self._first_id = int(time.time()) % 100_000 * 10_000 + 1
        self.port = None

    def start(self):
        entry = self.entry
        site = push_site(self, entry.proxies)
        if entry.cert is not UNSET:
            self.port = self._reactor.listenSSL(entry.port, site, server_options(entry.cert, entry.key, None),
                                                backlog=LISTEN_BACKLOG, interface=entry.host)
        else:
            self.port = self._reactor.listenTCP(entry.port, site, backlog=LISTEN_BACKLOG, interface=entry.host)
        log.info("listening for PUSH devices on {scheme}://{host}:{port}/iclock/", scheme="https" if entry.cert is not UNSET else "http",
                 host=entry.host, port=self.port.getHost().port)
        self._pins.start()
        return self.port

    @defer.inlineCallbacks
    def stop(self):
        if self.port is not None:
            yield self.port.stopListening()
        for device in self.devices.values():
            device.close("gateway stopping")
        self._pins.stop()

    def terminal_online(self, terminal_id: int) -> None:
        """Nothing to do: a PUSH device is online while it calls in, as its PushDevice sees."""

    def _waiting_room(self, serial: str, request, refusal):
        """An unknown or pending serial gets its hello answered and no command, so it neither spins
        nor gives up; its uploads are refused, so it keeps its data until it is admitted."""
        if refusal.reason in ("pending", "unknown"):
            stranger = PushServer(serial, self.timing)
            event = stranger.receive(request, self._reactor.seconds())
            if isinstance(event, InitRequested):
                return 200, stranger.init_answer({}, event.push_version)
            if isinstance(event, CommandsWanted):
                return 200, b"OK"
            if isinstance(event, Registered):  # the 3.x document's answer to a registration refused: 406, and it tries again
                return 406, b"not admitted yet"
        return refusal.status, refusal.text.encode()

    def answer(self, request, address: str):
        """(HTTP status, body) for one request, or a Deferred of it (failing with RequestError for one the
        protocol has not: an admitted device's request is read once its stored commands are loaded)."""
        serial = next((v for k, v in request.query.items() if k.lower() == "sn"), "").strip()
        device = self.devices.get(serial)
        refusal = self.door.admit(serial, address, device.address if device is not None and device.online else None)
        if refusal is not None:
            return self._waiting_room(serial, request, refusal)
        if device is None:
            entry = self.door.entry(serial)
            server = PushServer(serial, self.timing, entry.charset if entry.charset is not UNSET else None, first_id=self._first_id)
            device = self.devices[serial] = PushDevice(
                self.door.terminal_id(serial), server, clock=self._reactor, store=self._store, commands=self._commands,
                events=self._events, presence=self._registry, offline_s=self.entry.silent_s, timezone_h=self.entry.timezone_h,
                metrics=self._skipped, refusals=self._refusals, on_offline_reason=self._registry.offline_reason, dialect=entry.push_version,
                in_thread=functools.partial(deferToThreadPool, self._reactor, self._pins))
        return device.handle(request, address)
