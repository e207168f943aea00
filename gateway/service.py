"""Gateway: the running service, wiring terminals' links to the event log and the sync core.

Start-up order: database (migrations), registry and settings from it, then the listeners.
A sweep every ``sweep_s`` seconds wakes the pushes of every lagging terminal, which is how
changes made by another process on the same database (a second gateway on PostgreSQL) and
pushes that failed earlier are picked up. Owed pulls retry on their own backoff and resume
when their terminal reconnects.
"""

from sqlalchemy.engine import make_url
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.activity import Activity
from gateway.bus import BusMaster
from gateway.config import GatewayConfig, parse_host_port, parse_serial
from gateway.database import Database
from gateway.eventlog import EventLog, last_stored_event_id
from gateway.http.site import GatewaySite
from gateway.metrics import Metrics
from gateway.puller import Puller
from gateway.pusher import Pusher
from gateway.settings import SyncSettings
from gateway.syncmode import SyncMode
from gateway.tcp import TerminalDialer, TerminalListener
from gateway.terminals import TerminalRegistry
from gateway.users import UserDirectory, last_change_seq

log = Logger(namespace="gateway")


class Gateway:
    sweep_s = 1.0

    def __init__(self, config: GatewayConfig, reactor):
        self.config = config
        self.reactor = reactor
        self.clock = reactor
        self.metrics = Metrics()
        self.db = Database(config.db, reactor)
        self.registry = TerminalRegistry(self.db, config.admission, config.default_secret, config.terminals)
        self.settings = SyncSettings(self.db, SyncMode(config.sync_mode), self._wake_pushes)
        self.eventlog = EventLog(self.db, self.clock, self.metrics, self._events_committed)
        self.metrics.events_waiting.set_function(lambda: self.eventlog.queued_events)
        self.pusher = Pusher(self.db, self.registry, self.settings, self.clock, self.metrics)
        self.puller = Puller(self.db, self.registry, self.eventlog, self.clock, self.metrics, self._wake_pushes)
        self.users = UserDirectory(self.db, self._wake_pushes)
        self.activity = Activity(self.db, self.clock)
        self.tcp_port = None
        self.http_port = None
        self.dialers: list = []
        self.buses: list[BusMaster] = []
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = self.clock

    def start(self) -> None:
        """Open the database and start listening; blocking work here runs before the reactor."""
        self.db.start()
        self.registry.load()
        self.settings.load()
        self.tcp_port = self.reactor.listenTCP(self.config.tcp_port, TerminalListener(self), interface=self.config.tcp_host)
        log.info("gateway listening for terminals on {host}:{port}, database {db}, sync mode {mode}",
                 host=self.config.tcp_host, port=self.tcp_port.getHost().port, db=_safe_url(self.config.db), mode=self.settings.mode)
        self.http_port = self.reactor.listenTCP(self.config.http_port, GatewaySite(self), interface=self.config.http_host)
        log.info("monitoring page at http://{host}:{port}/", host=self.config.http_host, port=self.http_port.getHost().port)
        for entry in self.config.terminals:
            if "dial" in entry:
                host, port = parse_host_port(entry["dial"])
                dialer = TerminalDialer(self, entry["id"], entry["dial"])
                self.dialers.append((dialer, self.reactor.connectTCP(host, port, dialer)))
        self.buses = [BusMaster(self, parse_serial(entry)) for entry in self.config.serial]
        for bus in self.buses:
            bus.start()
        self._sweep.start(self.sweep_s, now=False)
        self.activity.start()

    @defer.inlineCallbacks
    def stop(self):
        if self._sweep.running:
            self._sweep.stop()
        self.activity.stop()
        self.puller.stop()
        self.eventlog.stop()
        for dialer, connector in self.dialers:
            dialer.stopTrying()
            connector.disconnect()
        if self.tcp_port is not None:
            yield self.tcp_port.stopListening()
        if self.http_port is not None:
            yield self.http_port.stopListening()
        yield defer.gatherResults([bus.stop() for bus in self.buses])
        for term in self.registry.online():
            term.session.close("gateway stopping")
        self.db.stop()

    # -- what sessions report ----------------------------------------------------------------

    def last_stored_event_id(self, terminal_id: int):
        return self.db.read(last_stored_event_id, terminal_id)

    def events_received(self, session, events):
        return self.eventlog.submit(session.terminal_id, events, self.settings.mode.pulls_device_updates)

    def session_established(self, session) -> None:
        if self.registry.attach(session) is None:
            return  # refused or removed by an administrator during the handshake
        self.eventlog.add_link(session.link)
        for dialer, _ in self.dialers:
            if dialer.terminal_id == session.terminal_id:
                dialer.resetDelay()
        self.metrics.terminals_online.set(len(self.registry.online()))
        self.pusher.kick(session.terminal_id)
        self.puller.terminal_online(session.terminal_id)

    def session_ended(self, session) -> None:
        self.registry.detach(session)
        self.eventlog.remove_link(session.link)
        self.metrics.terminals_online.set(len(self.registry.online()))
        log.info("terminal {tid} disconnected", tid=session.terminal_id)

    # -- sync triggers -----------------------------------------------------------------------

    def _events_committed(self, committed) -> None:
        for terminal_id, user_ids in committed:
            self.puller.want(terminal_id, user_ids)

    def _wake_pushes(self):
        self.pusher.wake_all()

    def sweep(self):
        """Wake every lagging terminal's pushes now; fires once they have been started."""
        d = self.db.read(last_change_seq)
        d.addCallback(self._swept)
        d.addErrback(lambda f: log.warn("sweep could not read the database: {e}", e=f.getErrorMessage()))
        return d

    def _swept(self, seq: int) -> None:
        # Kicking every lagging terminal also retries pushes that failed earlier.
        for term in self.registry.online():
            self.metrics.sync_lag.labels(str(term.terminal_id)).set(max(0, seq - term.cursor))
            if term.cursor < seq:
                self.pusher.kick(term.terminal_id)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)
