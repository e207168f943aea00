"""The ZKTeco kind of terminal: devices the gateway dials and polls, listed in ``[[zk]]``."""

import functools
from zoneinfo import ZoneInfo

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gateway.kinds import ConfiguredTerminal, ServingEach
from gateway.zk.clock import DeviceClock
from gateway.zk.config import ZkEntry, ZkSession, parse_zk
from gateway.zk.connection import ZkTiming
from gateway.zk.driver import LinkSettings
from gateway.zk.mapping import PIN_THREADS, CardField
from gateway.zk.store import DatabaseStore
from gateway.zk.poller import PollTiming
from gateway.zk.terminal import ZkTerminal


class ZkKind:
    name = "zk"
    description = "a ZKTeco device the gateway connects to itself"
    section = "zk"
    native_sessions = False

    def configured(self, entries: list[dict] | None) -> list[ConfiguredTerminal]:
        return [_configured(parse_zk(entry, n)) for n, entry in enumerate(entries or [], start=1)]

    def serve(self, entries: list[dict] | None, gateway) -> ServingEach:
        store = DatabaseStore(gateway.db)  # one for every device: their digests go in group commits
        pins = ThreadPool(0, PIN_THREADS, name="zk-pins")  # threads made when a PIN is hashed
        in_thread = functools.partial(deferToThreadPool, gateway.reactor, pins)
        return ZkServing([
            ZkTerminal(e.id, e.host, e.port, e.comm_key, gateway.reactor, store=store, events=gateway.eventlog, presence=gateway.registry,
                       timing=ZkTiming(request_s=e.timeout_s, poll=PollTiming.every(e.poll_s)), link=LinkSettings.of(e),
                       device_clock=DeviceClock(ZoneInfo(e.timezone) if e.timezone else None, e.set_clock),
                       cards=CardField.parse(e.card), on_offline_reason=gateway.registry.offline_reason,
                       on_quirk=lambda quirk: gateway.metrics.zk_quirks.labels(kind=quirk.kind).inc(),
                       on_refill=lambda terminal_id, why: gateway.reconciler.reconcile(terminal_id),
                       released=e.session is ZkSession.RELEASED, in_thread=in_thread)
            for e in (parse_zk(entry) for entry in entries or [])
        ], pins)


class ZkServing(ServingEach):
    """The devices' connections, and the threads their PIN hashes are made on (PBKDF2, about 2 ms
    each, thousands in a storm): a pool of their own, started before the connections and stopped
    after them. Twisted's default pool also resolves the host names devices are dialled at (and
    the API's PINs), which a storm's hashes would keep waiting."""

    def __init__(self, services: list, threads: ThreadPool):
        super().__init__(services)
        self.threads = threads

    def start(self) -> None:
        self.threads.start()
        super().start()

    def stop(self):
        return super().stop().addBoth(self._stopped)

    def _stopped(self, result):
        self.threads.stop()
        return result


def _configured(entry: ZkEntry) -> ConfiguredTerminal:
    return ConfiguredTerminal(entry.id, ZK.name, entry.name, frozenset(entry.groups))


ZK = ZkKind()
