"""End to end: PostgreSQL crashes (``pg_ctl stop -m immediate``) and restarts in the middle of an
enrolment storm served by two gateway worker processes; and it restarts for a few seconds while
every terminal reconnects at once.

What a person sees: `Fail to save to the server DB` while the server is down; then, with nobody
restarting anything, every terminal served again, every event stored exactly once and every
terminal holding every user as the server has it.
"""

import pytest
from sqlalchemy import create_engine, func, select
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from gateway.store.schema import events
from gateway.sync.monitor import SAVE_FAILED
from live_site import KeypadStorm, LiveTestCase, secret_of, wait_until
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal
from test_workers_e2e import TOKEN, holders
from tools.loadtest.gateway_process import GatewayProcess


class DatabaseCrashTests(LiveTestCase):
    timeout = 300

    @pytest.fixture(autouse=True)
    def _cluster(self, own_postgres, _pytest_tmp_path_and_database):
        self.cluster = own_postgres
        self.db_url = own_postgres.new_database()

    @defer.inlineCallbacks
    def _served(self, ids: list[int]):
        """Two workers serving ``ids``: the gateway, the terminals, their links and an engine on the database."""
        config = self.tmp_path / "gateway.toml"
        config.write_text(f'tcp_host = "127.0.0.1"\napi_token = "{TOKEN}"\n'
                          + "".join(f'\n[[terminals]]\nid = {t}\nsecret = "{secret_of(t)}"\n' for t in ids))
        gateway = GatewayProcess(self.tmp_path, self.db_url, config_file=config, workers=2)
        self.addCleanup(gateway.stop)
        yield wait_until(gateway.spawn().listening, "the workers listening", timeout=60)
        terminals = {t: Terminal(t, secret_of(t)) for t in ids}
        links = []
        for terminal in terminals.values():
            links.append(DialingTerminal(terminal, reactor, "127.0.0.1", gateway.tcp_port).start())
            self.addCleanup(links[-1].go_offline)
        engine = create_engine(self.db_url, pool_pre_ping=True)
        self.addCleanup(engine.dispose)
        yield wait_until(lambda: set(holders(engine)) == set(ids), "every terminal served by a worker", timeout=60)
        return gateway, terminals, links, engine

    @defer.inlineCallbacks
    def _recovered(self, gateway, workers, storm, storm_done, engine, ids):
        """Once the server is back: every terminal served and in sync, 0 lost, 0 stored twice, and
        the same worker processes (they recovered on their own)."""
        yield storm_done
        yield wait_until(lambda: set(holders(engine)) == set(ids), "every terminal served again", timeout=90)
        yield wait_until(storm.everywhere, "every terminal holding every user, its log acknowledged", timeout=120)
        storm.check_stored(self, engine)  # 0 lost, 0 stored twice, every terminal as the server
        self.assertEqual(sorted(gateway.worker_pids()), sorted(workers), "the workers recovered without a restart")

    @defer.inlineCallbacks
    def test_a_crash_mid_storm_loses_nothing_stores_nothing_twice_and_every_process_recovers_alone(self):
        ids = list(range(701, 707))
        gateway, terminals, _links, engine = yield self._served(ids)
        workers = gateway.worker_pids()

        storm = KeypadStorm(terminals, 30, seed=13)
        storm_done = storm.start(self)
        yield wait_until(storm.held, "two thirds of the storm enrolled", timeout=60)
        self.cluster.crash()
        storm.release()  # the last third is enrolled while the server is down
        yield wait_until(lambda: SAVE_FAILED in gateway.log_path.read_text(), "the outage visible in the gateway's log", timeout=60)
        self.cluster.resume()
        yield self._recovered(gateway, workers, storm, storm_done, engine, ids)
        with engine.connect() as conn:
            failed = conn.execute(select(func.count()).where(events.c.type == SAVE_FAILED)).scalar()
        self.assertGreaterEqual(failed, 1, "the outage's failures are stored once the server is back")

    @defer.inlineCallbacks
    def test_a_restart_of_a_few_seconds_while_every_terminal_reconnects_loses_nothing_and_all_come_back(self):
        ids = list(range(801, 821))
        gateway, terminals, links, engine = yield self._served(ids)
        workers = gateway.worker_pids()
        storm = KeypadStorm(terminals, 6, seed=17)
        storm_done = storm.start(self)
        yield wait_until(storm.held, "two thirds of the storm enrolled", timeout=60)
        # Every terminal but the first gone at once... (the first stays to show the outage: a terminal
        # that cannot be served while the server is down has nothing to fail to save)
        storming = links[1:]
        yield defer.gatherResults([link.go_offline() for link in storming])
        self.cluster.halt()
        storm.release()  # ...enrolling on their keypads meanwhile
        for link in storming:
            link.come_back()  # ...and all redialling while the server is down
        yield deferLater(reactor, 3, lambda: None)
        yield wait_until(lambda: SAVE_FAILED in gateway.log_path.read_text(), "the outage visible in the gateway's log", timeout=30)
        self.cluster.resume()
        yield self._recovered(gateway, workers, storm, storm_done, engine, ids)
