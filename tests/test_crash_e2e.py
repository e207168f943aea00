"""End to end: the gateway process is killed (SIGKILL) in the middle of an enrolment storm.

After a restart on the same database nothing may be missing and nothing stored twice: every
event each terminal logged is in the events table exactly once, and every terminal holds every
user, identical to the server's record.
"""

from sqlalchemy import create_engine, func, select
from twisted.internet import defer, reactor, task

from gateway.schema import events
from gateway.users import load_record
from live_site import LiveTestCase, secret_of, stored_event_ids, wait_until
from simulator.people import People
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

        people = People(seed=11)
        enrolments = [(t, f"{t}-{n:03d}") for n in range(USERS_PER_TERMINAL) for t in TERMINALS]
        all_users = {user_id for _, user_id in enrolments}
        # The last third waits for the kill, so the kill comes mid-storm however fast either side runs.
        held_back = len(enrolments) // 3
        killed = False

        def enrol_next():
            if len(enrolments) == held_back and not killed:
                return
            terminal_id, user_id = enrolments.pop(0)
            terminals[terminal_id].enroll(people.person(user_id))
            if not enrolments:
                storm.stop()

        storm = task.LoopingCall(enrol_next)
        storm_done = storm.start(0.01)
        self.addCleanup(lambda: storm.running and storm.stop())

        yield wait_until(lambda: _stored_events(engine) > 80, "the storm reaching the database", timeout=30)
        gateway.kill()
        killed = True
        yield wait_until(gateway.spawn().listening, "the gateway listening again, on the same port")
        yield storm_done
        yield wait_until(
            lambda: all(set(t.users) == all_users and not t.log for t in terminals.values()),
            "every terminal holding every user, its log acknowledged",
            timeout=60,
        )
        with engine.connect() as conn:
            for terminal in terminals.values():
                self.assertEqual(stored_event_ids(conn, terminal.terminal_id), list(range(1, terminal.next_event_id)),
                                 f"events of terminal {terminal.terminal_id}")
            for user_id in sorted(all_users):
                server = load_record(conn, user_id)
                for terminal in terminals.values():
                    self.assertEqual(terminal.users[user_id], server, f"user {user_id} on terminal {terminal.terminal_id}")


def _stored_events(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(events).where(events.c.terminal_event_id.is_not(None))).scalar()
