"""End to end: the gateway process is killed (SIGKILL) in the middle of an enrolment storm.

After a restart on the same database nothing may be missing and nothing stored twice: every
event each terminal logged is in the events table exactly once, and every terminal holds every
user, identical to the server's record.
"""

import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, func, select
from twisted.internet import defer, reactor, task

from gateway.schema import events
from gateway.users import load_record
from live_site import LiveTestCase, free_port, secret_of, stored_event_ids, wait_until
from simulator.people import People
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal

TERMINALS = (201, 202, 203, 204)
USERS_PER_TERMINAL = 60
GATEWAY = str(Path(sys.executable).with_name("gateway"))


class GatewayProcess:
    def __init__(self, workdir: Path, db_url: str, port: int):
        self.config = workdir / "gateway.toml"
        entries = "".join(f'[[terminals]]\nid = {t}\nsecret = "{secret_of(t)}"\n\n' for t in TERMINALS)
        self.config.write_text(f'db = "{db_url}"\ntcp_host = "127.0.0.1"\ntcp_port = {port}\nhttp_port = {free_port()}\n\n{entries}')
        self.log = workdir / "gateway.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([GATEWAY, "run", "--config", str(self.config)], stdout=out, stderr=subprocess.STDOUT)

    def listening(self) -> bool:
        return self.log.read_text(errors="replace").count("listening for terminals") == self.starts

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class CrashTests(LiveTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_sigkill_mid_storm_loses_nothing_and_stores_nothing_twice(self):
        workdir = self.tmp_path
        db_url = f"sqlite:///{workdir / 'gateway.db'}"
        port = free_port()
        gateway = GatewayProcess(workdir, db_url, port)
        self.addCleanup(gateway.stop)
        gateway.start()
        yield wait_until(gateway.listening, "the gateway listening")

        terminals = {t: Terminal(t, secret_of(t)) for t in TERMINALS}
        for terminal in terminals.values():
            self.addCleanup(DialingTerminal(terminal, reactor, "127.0.0.1", port).start().go_offline)
        engine = create_engine(db_url)
        self.addCleanup(engine.dispose)

        people = People(seed=11)
        enrolments = [(t, f"{t}-{n:03d}") for n in range(USERS_PER_TERMINAL) for t in TERMINALS]
        all_users = {user_id for _, user_id in enrolments}

        def enrol_next():
            terminal_id, user_id = enrolments.pop(0)
            terminals[terminal_id].enroll(people.person(user_id))
            if not enrolments:
                storm.stop()

        storm = task.LoopingCall(enrol_next)
        storm_done = storm.start(0.01)
        self.addCleanup(lambda: storm.running and storm.stop())

        yield wait_until(lambda: _stored_events(engine) > 80, "the storm reaching the database", timeout=30)
        gateway.kill()
        killed_at = _stored_events(engine)
        gateway.start()
        yield storm_done
        self.assertLess(killed_at, sum(t.next_event_id - 1 for t in terminals.values()), "the kill came mid-storm")
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
