"""Peers: what gateway processes sharing one PostgreSQL database tell each other, and the order
their events commit in.

A commit that changes users, the sync mode or a terminal's admission sends a notification
(``pg_notify`` inside the same transaction, so PostgreSQL delivers it on commit and never for a
rollback); so does a process that took a terminal's newer connection (gateway/process/claims.py). Each process listens on a connection of its own, on a thread of its own,
and hands what it hears to the reactor, leaving out its own notifications (each carries the
sender's ``SOURCE``). Notifications sent while that connection is down are lost: after every
(re)connect the process is told ``resynced`` and looks again itself; the gateway's 1 s sweep
stays the safety net.

Event ids follow commit order: every transaction that inserts events takes one
transaction-level advisory lock first (``take_commit_turn``), so on PostgreSQL no event id is
handed out while a transaction holding a lower one is still open, and a reader that follows ids
(the live event stream, the page's figures) never skips an event committed late. SQLite has one
writer, whose ids are in commit order already.
"""

import os
import secrets
import select
import socket
import threading

from sqlalchemy import text
from twisted.logger import Logger

log = Logger(namespace="gateway.peers")

CHANGES = "gateway_changes"  # users changed: wake the pushers
SETTINGS = "gateway_settings"  # the sync mode changed: read it again
TERMINALS = "gateway_terminals"  # a process took a terminal's newer connection: "<terminal id> <since s>"
ADMISSIONS = "gateway_admissions"  # a terminal registered, admitted, refused or removed: "<terminal id>"
CHANNELS = (CHANGES, SETTINGS, TERMINALS, ADMISSIONS)

# This process, as its notifications name it (a host name, a pid and a random part: a restarted
# worker with a reused pid is still another sender).
SOURCE = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"

COMMIT_ORDER_LOCK = (0x6777, 0)  # pg_advisory_xact_lock keys: "gw", and 0 (terminal claims use 1)


def notify(conn, channel: str, payload: str = "") -> None:
    """Tell the other processes, once this transaction commits (nothing on SQLite: one process)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), dict(channel=channel, payload=f"{SOURCE} {payload}"))


def take_commit_turn(conn) -> None:
    """Hold the commit-order lock until this transaction ends: event ids then follow commit order.

    Taken just before the events are inserted, and also before the change counter is taken
    (``next_change_seq``), so every transaction takes the two in the same order.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), dict(a=COMMIT_ORDER_LOCK[0], b=COMMIT_ORDER_LOCK[1]))


def connect_raw(engine, purpose: str):
    """A DBAPI connection of its own (not from the pool), autocommit, for a listener or lock
    holder; ``pg_stat_activity`` names it ``gateway <purpose> <pid>``, so an operator can see
    which process holds which terminal (``pg_locks`` joined on pid)."""
    args, params = engine.dialect.create_connect_args(engine.url)
    params.setdefault("connect_timeout", 10)
    params.setdefault("application_name", f"gateway {purpose} {os.getpid()}")
    conn = engine.dialect.dbapi.connect(*args, **params)
    conn.autocommit = True
    return conn


class Listener:
    """Hears the other processes' notifications on a connection of its own, on a thread.

    ``on_notice(channel, payload)`` and ``on_resynced()`` run on the reactor. A lost connection
    is made again after a pause that grows to ``max_pause_s``; an idle one is checked every
    ``idle_check_s`` so a server gone silent is noticed.
    """

    poll_s = 1.0  # how long the thread waits for a notification before it looks at its stop flag
    idle_check_s = 10.0
    max_pause_s = 10.0

    def __init__(self, connect, reactor, on_notice, on_resynced):
        self._connect = connect
        self._reactor = reactor
        self._on_notice = on_notice
        self._on_resynced = on_resynced
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="db-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.poll_s * 5)

    def _run(self) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            conn = None
            try:
                conn = self._connect()
                cursor = conn.cursor()
                for channel in CHANNELS:
                    cursor.execute(f"LISTEN {channel}")
                self._reactor.callFromThread(self._resynced, pause > 0.5)
                pause = 0.5
                self._listen(conn, cursor)
            except Exception as exc:  # a driver error or a socket error: either way, connect again
                if not self._stopping.is_set():
                    self._reactor.callFromThread(log.warn, "not hearing the other gateway processes ({e}); "
                                                           "trying again in {s:g} s", e=first_line(exc), s=pause)
                self._stopping.wait(pause)
                pause = min(pause * 2, self.max_pause_s)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # closing a broken connection may fail too; it is gone either way
                        pass

    def _listen(self, conn, cursor) -> None:
        idle_s = 0.0
        while not self._stopping.is_set():
            readable, _, _ = select.select([conn], [], [], self.poll_s)
            if not readable:
                idle_s += self.poll_s
                if idle_s >= self.idle_check_s:
                    cursor.execute("SELECT 1")  # raises once the server is gone
                    idle_s = 0.0
                continue
            idle_s = 0.0
            conn.poll()
            heard = [(n.channel, n.payload) for n in conn.notifies]
            conn.notifies.clear()
            if heard:
                self._reactor.callFromThread(self._deliver, heard)

    def _resynced(self, again: bool) -> None:
        if again:
            log.info("hearing the other gateway processes again")
        self._on_resynced()

    def _deliver(self, heard: list[tuple[str, str]]) -> None:
        # A storm of changes is heard many at a time: one wake of the pushers answers them all.
        said = dict.fromkeys((channel, payload.partition(" ")[2]) for channel, payload in heard
                             if payload.partition(" ")[0] != SOURCE)
        for channel, rest in said:
            self._on_notice(channel, rest)


def first_line(exc: BaseException) -> str:
    """What a driver said, in one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
