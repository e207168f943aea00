"""Gateway: the running service, wiring terminals' links to the event log and the sync core.

Start-up order: database (migrations), registry and settings from it, then the listeners.
On PostgreSQL other gateway processes may share the database (``gateway run --workers N``, or
other hosts): what they commit wakes this one's pushers and changes its sync mode at once
(gateway/process/peers.py), and a terminal is served by one process at a time (gateway/process/claims.py).
A sweep every ``sweep_s`` seconds wakes the pushes of every lagging terminal: the safety net
for a notification lost while the listening connection was down, and for pushes that failed.
Owed pulls retry on their own backoff and resume when their terminal reconnects.
Reconciliation compares each terminal with the server when it connects and every few minutes.
"""

import json

from sqlalchemy.engine import make_url
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway.native.accept import LISTEN_BACKLOG, AcceptWatch
from gateway.activity import Activity
from gateway.native.bus import BusMaster
from gateway.process.claims import TerminalClaims
from gateway.config import GatewayConfig, parse_serial
from gateway.kinds import Serving, kinds
from gateway.store.database import Database
from gateway.native.doorman import DoorLimits, Doorman
from gateway.native.link_timers import LinkTimers
from gateway.sync.due import heard_groups
from gateway.sync.eventlog import EventLog
from gateway.http.serve import ApiProcess, InProcess
from gateway.metrics import Metrics
from gateway.process.lag import ReactorLag
from gateway.process.peers import Listener, Teller, connect_raw
from gateway.process.reports import ProcessReports
from gateway.store.notices import ADMISSIONS, CHANGES, DOORMAN, RECONCILE, RECONCILED, SETTINGS, SOURCE, TERMINALS
from gateway.store.retention import Retention
from gateway.sync.puller import Puller
from gateway.sync.pusher import Pusher
from gateway.http.queries import SyncState, sync_state
from gateway.sync.reconcile import Reconciler, Reconciliation
from gateway.native.session import SessionTiming, TerminalSession
from gateway.sync.settings import SyncSettings
from gateway.sync.syncmode import SyncMode
from gateway.native.tcp import TerminalListener
from gateway.terminals import TerminalRegistry
from gateway.native.tls import server_options
from gateway.sync.users import UserDirectory
from gateway.process.workers import SOLE, WorkerRole, listen_shared

log = Logger(namespace="gateway")


class Gateway:
    sweep_s = 1.0

    def __init__(self, config: GatewayConfig, reactor, role: WorkerRole = SOLE):
        """``role``: which of ``gateway run --workers N`` this process is; the first serves the
        HTTP API and whatever the gateway dials or masters (dialled terminals, buses, ZK devices)."""
        self.config = config
        self.reactor = reactor
        self.clock = reactor
        self.role = role
        self.metrics = Metrics()
        self.db = Database(config.db, reactor)
        # Other kinds' devices are made and kept by the first process alone; our own terminals
        # dial in to every process, so each knows them.
        served_kinds = [kind for kind in kinds().values() if role.primary or kind.native_sessions]
        configured = [terminal for kind in served_kinds for terminal in kind.configured(config.section(kind.section))]
        # Other processes may share a PostgreSQL database: hear them, and claim each terminal served.
        shared = self.db.engine.dialect.name == "postgresql"
        self.peers = Listener(lambda: connect_raw(self.db.engine, "listener"), reactor, self._peer_said, self._resynced) if shared else None
        self.claims = TerminalClaims(lambda: connect_raw(self.db.engine, "claims"), reactor, self._claim_lost,
                                     lambda cursors: self.registry.served_elsewhere(cursors)) if shared else None
        self.registry = TerminalRegistry(self.db, self.clock, config.admission, config.default_secret, configured,
                                         on_online=self._terminal_online, on_offline=self._terminal_offline,
                                         on_admitted=self._terminal_admitted, claims=self.claims)
        self.settings = SyncSettings(self.db, SyncMode(config.sync_mode), self._sync_mode_changed, self.clock)
        self.reactor_lag = ReactorLag(self.clock, self.metrics.reactor_lag)
        self.eventlog = EventLog(self.db, self.clock, self.metrics, self._events_committed,
                                 pulls_device_updates=lambda: self.settings.mode.pulls_device_updates,
                                 reactor_late_since=self.reactor_lag.late_since)
        self.metrics.events_waiting.set_function(lambda: self.eventlog.queued_events)
        self.pusher = Pusher(self.db, self.registry, self.settings, self.clock, self.metrics,
                             on_local_change_kept=lambda terminal_id, user_ids: self.puller.owe(terminal_id, user_ids),
                             commit_with=self.eventlog.commit_with_events)
        self.puller = Puller(self.db, self.registry, self.eventlog, self.clock, self.metrics, self._wake_pushes,
                             keep_local_changes=lambda: self.settings.mode.pulls_device_updates)
        self.reconciler = Reconciler(self.db, self.registry, self.settings, self.clock, self.metrics, self.puller.owe)
        self.users = UserDirectory(self.db, self.clock, self._wake_pushes)
        self.activity = Activity(self.db, self.clock)
        self.retention = Retention(self.db, self.clock, self.metrics, config.events_keep_days, config.events_export_dir)
        self.session_timing = SessionTiming(keepalive_s=config.keepalive_s)
        self.link_timers = LinkTimers(self.clock)
        self.doorman = Doorman(self.clock, self.metrics, DoorLimits(
            max_strangers=config.max_unauthenticated, max_strangers_per_source=config.max_unauthenticated_per_address,
            slow_after=config.auth_slow_after, lockout_after=config.auth_lockout_after, lockout_s=config.auth_lockout_s))
        self.accept_watch = AcceptWatch(self.clock, self.metrics, self.doorman.lines)
        if shared:
            self._tell_others_too(Teller(self.db, self.doorman.lines))
        self.reports = ProcessReports(self.db, self.clock, SOURCE, self.registry, self.metrics, reads=role.primary,
                                      read_by_others=not role.primary) if shared else None
        if self.reports is not None and role.primary:
            self.metrics.reported = self.reports.reported_families
        self.tcp_port = None
        self.tls_port = None
        self.http = None
        self.http_port = None
        self.serving: dict[str, Serving] = {}  # each kind's connections, made by the first process
        self.buses: list[BusMaster] = []
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = self.clock

    def start(self, sync_mode: SyncMode | None = None) -> None:
        """Open the database and start listening; blocking work here runs before the reactor.
        ``sync_mode``: given for this start, it replaces the stored mode before anyone connects."""
        self.db.start()
        self.registry.load()
        self.settings.load(sync_mode)
        for peer_work in (self.peers, self.claims, self.reports):
            if peer_work is not None:
                peer_work.start()
        self.tcp_port = self._listen(self.config.tcp_port, TerminalListener(self.new_session, self.doorman, self.clock), self.config.tcp_host)
        log.info("gateway listening for terminals on {host}:{port}, database {db}, sync mode {mode}",
                 host=self.config.tcp_host, port=self.tcp_port.getHost().port, db=_safe_url(self.config.db), mode=self.settings.mode)
        if self.role.primary:
            self._start_primary()
        # Every port bound: only now is what this start changes stored (a failed start stores nothing).
        self.registry.keep_configuration()
        self.settings.keep()
        self.accept_watch.start(port for port in (self.tcp_port, self.tls_port) if port is not None)
        self._sweep.start(self.sweep_s, now=False)
        self.reactor_lag.start()
        self.reconciler.start()

    def _start_primary(self) -> None:
        """What one process does for all: the HTTP API and page, buses, and every kind's dialled terminals and devices."""
        if self.config.tls is not None:
            self.tls_port = self._listen_tls(self.config.tls)
        self.http = (ApiProcess if self.config.http_process else InProcess)(self)
        self.http_port = self.http.port
        log.info("monitoring page at http://{host}:{port}/", host=self.config.http_host, port=self.http_port.getHost().port)
        self.buses = [BusMaster(parse_serial(entry), self.reactor, self.metrics, self.new_session) for entry in self.config.serial]
        for bus in self.buses:
            bus.start()
        self.serving = {kind.name: kind.serve(self.config.section(kind.section), self) for kind in kinds().values()}
        for serving in self.serving.values():
            serving.start()
        if not self.config.http_process:  # else the API process keeps the figures
            self.activity.start()
        self.retention.start()

    def listen_http(self, factory):
        """The public HTTP port, bound as the terminal port is (shared among workers)."""
        return self._listen(self.config.http_port, factory, self.config.http_host)

    def _listen(self, port: int, factory, host: str):
        """Workers share their ports (SO_REUSEPORT): the kernel spreads the connections, and
        the supervisor's reservation keeps a port chosen as 0 the same across restarts."""
        if self.role.count > 1:
            return listen_shared(self.reactor, port, factory, host)
        return self.reactor.listenTCP(port, factory, backlog=LISTEN_BACKLOG, interface=host)

    @defer.inlineCallbacks
    def stop(self):
        if self._sweep.running:
            self._sweep.stop()
        self.reactor_lag.stop()
        self.activity.stop()
        self.retention.stop()
        self.accept_watch.stop()
        self.reconciler.stop()
        self.puller.stop()
        self.pusher.stop()
        self.eventlog.stop()
        yield defer.gatherResults([serving.stop() for serving in self.serving.values()])
        for port in (self.tcp_port, self.tls_port):
            if port is not None:
                yield port.stopListening()
        if self.http is not None:
            yield self.http.stop()
        yield defer.gatherResults([bus.stop() for bus in self.buses])
        for term in self.registry.connected():
            term.connection.close("gateway stopping")
        self.doorman.lines.stop()
        for peer_work in (self.peers, self.claims, self.reports):
            if peer_work is not None:
                peer_work.stop()
        self.db.stop()

    def _listen_tls(self, entry: dict):
        options = server_options(entry["cert"], entry["key"], entry.get("client_ca"))
        host = entry.get("host", self.config.tcp_host)
        port = self.reactor.listenSSL(entry.get("port", 4371), TerminalListener(self.new_session, self.doorman, self.clock), options,
                                       backlog=LISTEN_BACKLOG, interface=host)
        log.info("listening for terminals over TLS on {host}:{port}{clients}", host=host, port=port.getHost().port,
                 clients=", client certificates required" if entry.get("client_ca") else "")
        return port

    def new_session(self, link, expected_terminal_id: int | None = None, timing: SessionTiming | None = None) -> TerminalSession:
        """A native-protocol session over ``link``, wired to this gateway's collaborators."""
        return TerminalSession(link, clock=self.clock, admission=self.registry, events=self.eventlog, presence=self.registry,
                               metrics=self.metrics, doorman=self.doorman, timers=self.link_timers, timing=timing or self.session_timing, expected_terminal_id=expected_terminal_id)

    # -- terminals coming and going ----------------------------------------------------------

    def _terminal_online(self, connection) -> None:
        self.eventlog.add_connection(connection)
        for serving in self.serving.values():
            serving.terminal_online(connection.terminal_id)
        self.metrics.terminals_online.set(self.registry.online_count())
        self.pusher.online(connection.terminal_id)
        self.puller.terminal_online(connection.terminal_id)
        self.reconciler.terminal_online(connection.terminal_id)
        if connection.info.clock_drift_s is not None:
            self.metrics.clock_drift.labels(str(connection.terminal_id)).set(connection.info.clock_drift_s)

    def _terminal_admitted(self, terminal_id: int) -> None:
        # Its wrong proofs were a terminal set up wrong, not a guesser: it gets in at its next try.
        self.doorman.forgive(terminal_id)
        # A bus greets a silent or refused address on a backoff of up to half a minute: greet now.
        for bus in self.buses:
            bus.greet_now(terminal_id)

    def _terminal_offline(self, connection) -> None:
        self.eventlog.remove_connection(connection)
        self.metrics.terminals_online.set(self.registry.online_count())
        self.metrics.forget_terminal(connection.terminal_id)
        log.info("terminal {tid} disconnected", tid=connection.terminal_id)

    # -- sync triggers -----------------------------------------------------------------------

    def _events_committed(self, committed) -> None:
        for terminal_id, user_ids in committed:
            self.puller.want(terminal_id, user_ids)

    def _wake_pushes(self, groups: frozenset[int] | None = None):
        """Users of ``groups`` changed (None: any): wake the pushes to the terminals they go to."""
        self.pusher.wake(groups)

    def _sync_mode_changed(self):
        """Pushes follow the new mode at once; pulls it made owed start now."""
        self.pusher.wake()
        for term in self.registry.connected():
            self.puller.terminal_online(term.terminal_id)

    # -- other processes on the same database ------------------------------------------------

    def _tell_others_too(self, teller: Teller) -> None:
        """The doorman's counts and the reconciler's findings are every process's: say them."""
        self.doorman.tell_others = lambda said: teller.tell(DOORMAN, said)
        self.reconciler.ask_others = lambda: teller.tell(RECONCILE, "")
        self.reconciler.tell_others = lambda terminal_id, found, repaired_total: teller.tell(
            RECONCILED, found.told(terminal_id, repaired_total, teller.room))

    def _peer_said(self, channel: str, payload: str) -> None:
        if channel == CHANGES:
            self.pusher.wake(heard_groups(payload))
        elif channel == SETTINGS:
            self.settings.reload().addErrback(lambda f: log.warn("cannot read the sync mode: {e}", e=f.getErrorMessage()))
        elif channel == TERMINALS:
            terminal_id, since_s = payload.split()
            self.registry.replaced_elsewhere(int(terminal_id), float(since_s))
        elif channel == ADMISSIONS:
            self.registry.reload(int(payload)).addErrback(
                lambda f: log.warn("cannot read terminal {tid}: {e}", tid=payload, e=f.getErrorMessage()))
        elif channel == DOORMAN:
            self.doorman.heard(payload)
        elif channel == RECONCILE:
            self.reconciler.reconcile_all()
        elif channel == RECONCILED:
            self.reconciler.heard(*Reconciliation.from_form(json.loads(payload)))

    def _resynced(self) -> None:
        """Listening (again): whatever was said meanwhile is read instead."""
        self.pusher.wake()
        self.settings.reload().addErrback(lambda f: log.warn("cannot read the sync mode: {e}", e=f.getErrorMessage()))
        self.registry.reload_all().addErrback(lambda f: log.warn("cannot read the terminals: {e}", e=f.getErrorMessage()))

    def _claim_lost(self, terminal_id: int) -> None:
        self.registry.claim_lost(terminal_id)

    def sweep(self):
        """Wake every lagging terminal's pushes now; fires once they have been started."""
        d = self.db.read(sync_state)
        d.addCallback(self._swept)
        d.addErrback(lambda f: log.warn("sweep could not read the database: {e}", e=f.getErrorMessage()))
        return d

    def _swept(self, state: SyncState) -> None:
        _, owed, unanswered, recent = state
        mode = self.settings.mode
        told_caught_up = self.metrics.told_caught_up
        # Kicking every lagging terminal also retries pushes that failed earlier. A keypad change
        # still to be pulled is lag too: the terminal and the server differ until it is merged.
        # Changes after a cursor that are not meant for the terminal are no lag (gateway/sync/due.py).
        for term in self.registry.connected():
            if recent.caught_up(term.cursor) and term.terminal_id not in owed and term.terminal_id not in unanswered \
                    and told_caught_up(term.terminal_id):
                continue  # nothing to tell, no round due: every terminal of an idle fleet
            behind = recent.behind(term.cursor, term.access_groups, mode)
            self.metrics.set_sync_lag(term.terminal_id, behind + owed.get(term.terminal_id, 0) + unanswered.get(term.terminal_id, 0))
            if recent.round_due(term.cursor, term.access_groups, mode):
                self.pusher.sweep(term.terminal_id)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)
