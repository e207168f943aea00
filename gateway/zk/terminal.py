"""ZkTerminal: one configured ZK device: its dialer, what the gateway keeps of it across
connections, and why it is offline.

Each TCP connection gets a fresh ``ZkClient``, ``ZkLink`` and ``ZkConnection``; the device's
memory (event ids, what the server has seen) outlives them. Why a device is offline goes to the
registry (the API and the page show it) and to the log, once per reason rather than once per
redial.
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
                 on_offline_reason=lambda terminal_id, reason: None, on_quirk=lambda quirk: None, on_refill=lambda terminal_id, why: None):
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
        self.dialer = ZkDialer(reactor, host, port, self._new_link, self._offline, link.transport)

    def start(self) -> None:
        self._stopping = False
        self.dialer.start()

    def stop(self) -> defer.Deferred:
        self._stopping = True
        return self.dialer.stop()

    def _new_link(self) -> ZkLink:
        connection = None

        def made():
            connection.start()

        def broken(reason: str):
            connection.link_broken(reason)
            self._offline(reason)

        link = ZkLink(self._link.client(self.comm_key), self._reactor,
                      on_realtime=lambda event: connection.realtime_event(event), on_broken=broken, on_connected=made, on_quirk=self._on_quirk)
        connection = self.connection = ZkConnection(self.terminal_id, link, self.memory, clock=self._reactor, store=self._store,
                                                    events=self._events, presence=self._presence, timing=self._timing, device_clock=self._device_clock, cards=self._cards,
                                                    on_online=self._online, on_refill=self._on_refill)
        return link

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
