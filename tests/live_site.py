"""Site: a real gateway on a real database, with simulated terminals dialling in over loopback.

End-to-end tests build one per test (in a trial TestCase, so the reactor runs) and look at what
a person could look at: the server database and each terminal's own user store.
"""

import socket
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from gateway.config import GatewayConfig
from gateway.process.service import Gateway
from gateway.store.schema import events, terminals as terminal_rows
from gateway.sync.users import last_change_seq, load_record
from simulator.people import People
from simulator.tcp import DialingTerminal, ListeningTerminal
from simulator.terminal import Terminal


class LiveTestCase(unittest.TestCase):
    """A trial TestCase, so the real reactor runs during the test, with pytest's ``tmp_path``
    and a fresh database of the class's ``backend``: a SQLite file, or a PostgreSQL database on
    the suite's throwaway server."""

    timeout = 60
    backend = "sqlite"

    @pytest.fixture(autouse=True)
    def _pytest_tmp_path_and_database(self, request, tmp_path):
        self.tmp_path = tmp_path
        if self.backend == "sqlite":
            self.db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
        else:
            self.db_url = request.getfixturevalue("postgres").new_database()


@contextmanager
def refusing_port():
    """A loopback port that refuses connections for as long as the block runs: bound but never
    listening, so no other process can start listening there meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def secret_of(terminal_id: int) -> str:
    return f"secret-{terminal_id}"


class Site:
    """Terminals in ``terminal_ids`` dial in; those in ``listening_ids`` listen and the gateway dials out."""

    def __init__(self, db_url: str, terminal_ids=(101, 102, 103), listening_ids=(), groups=None, **config):
        self.terminals: dict[int, Terminal] = {t: Terminal(t, secret_of(t)) for t in (*terminal_ids, *listening_ids)}
        self.dialers: dict[int, DialingTerminal] = {}
        self.listening = {t: ListeningTerminal(self.terminals[t], reactor).listen(0, "127.0.0.1") for t in listening_ids}
        entries = [dict(id=t, secret=secret_of(t)) for t in terminal_ids]
        entries += [dict(id=t, secret=secret_of(t), dial=f"127.0.0.1:{listener.port_number}") for t, listener in self.listening.items()]
        for entry in entries:
            entry["groups"] = (groups or {}).get(entry["id"], [])
        # The API on this reactor: these tests look inside the gateway (test_api_process.py runs the API process).
        config = {"http_process": False, **config}
        self.config = GatewayConfig.load(None, db=db_url, tcp_host="127.0.0.1", tcp_port=0, http_port=0, terminals=entries, **config)
        self.gateway = Gateway(self.config, reactor)

    def start(self) -> "Site":
        self.gateway.start()
        for terminal_id, terminal in self.terminals.items():
            if terminal_id not in self.listening:
                self.dialers[terminal_id] = DialingTerminal(terminal, reactor, "127.0.0.1", self.port).start()
        return self

    @property
    def port(self) -> int:
        return self.gateway.tcp_port.getHost().port

    @defer.inlineCallbacks
    def stop(self):
        for dialer in self.dialers.values():
            dialer.go_offline()
        yield self.gateway.stop()
        for listener in self.listening.values():
            listener.go_offline()
            yield listener.stopped()

    # -- looking at the result ---------------------------------------------------------------

    def server_record(self, user_id: str):
        return self.gateway.db.run_now(load_record, user_id)

    def count_events(self, **where) -> int:
        stmt = select(func.count()).select_from(events)
        for column, value in where.items():
            stmt = stmt.where(events.c[column] == value)
        return self.gateway.db.run_now(lambda conn: conn.execute(stmt).scalar())

    def stored_event_ids(self, terminal_id: int) -> list[int]:
        return self.gateway.db.run_now(stored_event_ids, terminal_id)

    def committed_cursor(self, terminal_id: int) -> int:
        """The terminal's cursor as stored: the pusher commits it after the terminal applied the changes."""
        stmt = select(terminal_rows.c.cursor).where(terminal_rows.c.terminal_id == terminal_id)
        return self.gateway.db.run_now(lambda conn: conn.execute(stmt).scalar_one())

    def last_change_seq(self) -> int:
        return self.gateway.db.run_now(last_change_seq)

    def online(self, *terminal_ids) -> bool:
        online = {t.terminal_id for t in self.gateway.registry.connected()}
        return set(terminal_ids or self.terminals) <= online


class KeypadStorm:
    """Enrolments at the terminals' keypads every 10 ms, the last third held back until
    ``release()``: whatever a test does to the gateway in between comes mid-storm, however fast
    either side runs. Then ``everywhere`` and ``check_stored`` say whether anything was lost."""

    def __init__(self, terminals: dict[int, Terminal], per_terminal: int, seed: int):
        self.terminals = terminals
        self._people = People(seed=seed)
        self._waiting = [(t, f"{t}-{n:03d}") for n in range(per_terminal) for t in terminals]
        self.everyone = {user_id for _, user_id in self._waiting}
        self._held_back = len(self._waiting) // 3
        self._released = False
        self._loop = task.LoopingCall(self._enrol_next)

    def start(self, case: unittest.TestCase) -> defer.Deferred:
        """Fires once every enrolment was made."""
        case.addCleanup(lambda: self._loop.running and self._loop.stop())
        return self._loop.start(0.01)

    def held(self) -> bool:
        """Two thirds enrolled: the rest waits for ``release()``."""
        return len(self._waiting) == self._held_back

    def release(self) -> None:
        self._released = True

    def _enrol_next(self) -> None:
        if self.held() and not self._released:
            return
        terminal_id, user_id = self._waiting.pop(0)
        self.terminals[terminal_id].enroll(self._people.person(user_id))
        if not self._waiting:
            self._loop.stop()

    def everywhere(self) -> bool:
        """Every terminal holds every user and has its log acknowledged."""
        return all(set(t.users) == self.everyone and not t.log for t in self.terminals.values())

    def check_stored(self, case: unittest.TestCase, engine) -> None:
        """Every event each terminal logged is stored exactly once, and every terminal holds the
        server's record of every user."""
        with engine.connect() as conn:
            for terminal in self.terminals.values():
                case.assertEqual(stored_event_ids(conn, terminal.terminal_id), list(range(1, terminal.next_event_id)),
                                 f"events of terminal {terminal.terminal_id}")
            for user_id in sorted(self.everyone):
                server = load_record(conn, user_id)
                for terminal in self.terminals.values():
                    case.assertEqual(terminal.users[user_id], server, f"user {user_id} on terminal {terminal.terminal_id}")


def stored_event_ids(conn, terminal_id: int) -> list[int]:
    """The terminal's log event ids the gateway stored, in order, duplicates included."""
    stmt = (select(events.c.terminal_event_id)
            .where(events.c.terminal_id == terminal_id, events.c.terminal_event_id.is_not(None))
            .order_by(events.c.terminal_event_id))
    return list(conn.execute(stmt).scalars())


@defer.inlineCallbacks
def wait_until(predicate, what: str, timeout: float = 15.0, step: float = 0.05):
    """Wait, at most ``timeout`` seconds, for ``predicate()`` to hold; fail saying what was awaited."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        yield task.deferLater(reactor, step, lambda: None)
