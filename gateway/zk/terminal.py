"""ZkTerminal: one configured ZK device: its dialer, what the gateway keeps of it across
connections, and why it is offline.

Each TCP connection gets a fresh ``ZkClient``, ``ZkLink`` and ``ZkConnection``; the device's
memory (event ids, what the server has seen) outlives them. Why a device is offline goes to the
registry (the API and the page show it) and to the log, once per reason rather than once per
redial. A held session is kept connected by the dialer's ClientService; a released one
(``session = "released"``) is one ZkConnection over a link per conversation, dialled again after
a failure with the same backoff.
"""

from twisted.internet import defer
from twisted.logger import Logger

from gateway.zk.clock import DeviceClock
from gateway.zk.connection import DeviceMemory, ZkConnection, ZkTiming
from gateway.zk.mapping import CardField
from gateway.zk.store import ZkStore
from gateway.zk.driver import LinkSettings, ZkDialer, ZkLink

log = Logger(namespace="gateway.zk")


class ZkTerminal:
    def __init__(self, terminal_id: int, host: str, port: int, comm_key: int, reactor, *, store: ZkStore, events, presence,
                 timing: ZkTiming, link: LinkSettings = LinkSettings(), device_clock: DeviceClock = DeviceClock(), cards: CardField = CardField(),
                 on_offline_reason=lambda terminal_id, reason: None, on_quirk=lambda quirk: None, on_refill=lambda terminal_id, why: None,
                 in_thread, released: bool = False):
        """``in_thread(f, *args)``: a Deferred of ``f(*args)`` run on the ZK devices' own threads
        (PIN hashes; gateway/zk/kind.py)."""
        self.terminal_id = terminal_id
        self.where = f"{host}:{port}"
        self.comm_key = comm_key
        self.memory = DeviceMemory()
        self.connection: ZkConnection | None = None
        self._reactor = reactor
        self._store = store
        self._events = events
        self._presence = presence
        self._timing = timing
        self._link = link
        self._on_quirk = on_quirk
        self._device_clock = device_clock
        self._cards = cards
        self._on_offline_reason = on_offline_reason
        self._on_refill = on_refill
        self._reason: str | None = None
        self._stopping = False
        self._released = released
        self._in_thread = in_thread
        self._dialling: defer.Deferred | None = None  # a released session's first link, being dialled
        self._retry = None  # the wait before dialling it again
        self.dialer = ZkDialer(reactor, host, port, self._new_link, self._offline, link.transport)

    def start(self) -> None:
        self._stopping = False
        if self._released:
            self._dial_session()
        else:
            self.dialer.start()

    def stop(self) -> defer.Deferred:
        self._stopping = True
        if not self._released:
            return self.dialer.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._dialling is not None:
            self._dialling.cancel()
        connection = self.connection
        if connection is None or connection.closed:
            return defer.succeed(None)
        link = connection.current_link
        connection.close("the gateway is stopping")
        return link.lost

    def _new_link(self) -> ZkLink:
        """A new connection's link (its ZkConnection starts once it is connected)."""
        link = self._link_for(lambda: connection)
        connection = self.connection = ZkConnection(
            self.terminal_id, link, self.memory, clock=self._reactor, store=self._store, events=self._events, presence=self._presence,
            timing=self._timing, device_clock=self._device_clock, cards=self._cards, on_online=self._online, on_refill=self._on_refill,
            on_lost=self._lost, redial=self._redial if self._released else None, in_thread=self._in_thread)
        link.on_connected = connection.start
        return link

    def _link_for(self, connection) -> ZkLink:
        """A link whose events go to ``connection()``."""
        link = ZkLink(self._link.client(self.comm_key), self._reactor, on_realtime=lambda event: connection().realtime_event(event),
                      on_broken=lambda reason: connection().link_broken(reason, link), on_quirk=self._on_quirk)
        return link

    def _redial(self) -> defer.Deferred:
        """The link of a released session's next conversation."""
        connection = self.connection
        return self.dialer.dial(lambda: self._link_for(lambda: connection))

    def _dial_session(self) -> None:
        """A released session's first link; on failure, again after the backoff."""
        d = self._dialling = self.dialer.dial(self._new_link)

        def dialled(_):
            self._dialling = None

        def failed(failure):
            self._dialling = None
            if not failure.check(defer.CancelledError):
                self._lost(failure.getErrorMessage())

        d.addCallbacks(dialled, failed)

    def _lost(self, reason: str) -> None:
        """The connection is over (or could not be made): say why; a released session dials again."""
        self._offline(reason)
        if self._released and not self._stopping:
            self._retry = self._reactor.callLater(self.dialer.retry_after(), self._dial_session)

    def _online(self, _connection) -> None:
        self.dialer.online()
        self._reason = None

    def _offline(self, reason: str) -> None:
        if self._stopping:
            return
        self._on_offline_reason(self.terminal_id, reason)
        if reason != self._reason:
            log.warn("ZK terminal {tid} at {where} offline: {reason}", tid=self.terminal_id, where=self.where, reason=reason)
        self._reason = reason
