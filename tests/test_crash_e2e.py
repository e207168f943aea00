"""End to end: the gateway process is killed (SIGKILL) in the middle of an enrolment storm.

After a restart on the same database nothing may be missing and nothing stored twice: every
event each terminal logged is in the events table exactly once, and every terminal holds every
user, identical to the server's record.
"""

from sqlalchemy import create_engine, func, select
from twisted.internet import defer, reactor

from gateway.store.schema import events
from live_site import KeypadStorm, LiveTestCase, secret_of, wait_until
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal
from tools.loadtest.gateway_process import GatewayProcess

TERMINALS = (201, 202, 203, 204)
USERS_PER_TERMINAL = 60


class CrashTests(LiveTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_sigkill_mid_storm_loses_nothing_and_stores_nothing_twice(self):
        workdir = self.tmp_path
        db_url = f"sqlite:///{workdir / 'gateway.db'}"
        config = workdir / "gateway.toml"
        config.write_text('tcp_host = "127.0.0.1"\n\n' + "".join(f'[[terminals]]\nid = {t}\nsecret = "{secret_of(t)}"\n\n' for t in TERMINALS))
        gateway = GatewayProcess(workdir, db_url, config_file=config)
        self.addCleanup(gateway.stop)
        yield wait_until(gateway.spawn().listening, "the gateway listening")

        terminals = {t: Terminal(t, secret_of(t)) for t in TERMINALS}
        for terminal in terminals.values():
            self.addCleanup(DialingTerminal(terminal, reactor, "127.0.0.1", gateway.tcp_port).start().go_offline)
        engine = create_engine(db_url)
        self.addCleanup(engine.dispose)

        storm = KeypadStorm(terminals, USERS_PER_TERMINAL, seed=11)
        storm_done = storm.start(self)
        yield wait_until(lambda: _stored_events(engine) > 80, "the storm reaching the database", timeout=30)
        gateway.kill()
        storm.release()
        # A start reads what the killed one left (owed pulls, unacknowledged events): slow on a busy machine.
        yield wait_until(gateway.spawn().listening, "the gateway listening again, on the same port", timeout=60)
        yield storm_done
        yield wait_until(storm.everywhere, "every terminal holding every user, its log acknowledged", timeout=60)
        storm.check_stored(self, engine)


def _stored_events(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(events).where(events.c.terminal_event_id.is_not(None))).scalar()
