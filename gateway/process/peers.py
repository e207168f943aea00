"""Peers: hearing what other gateway processes sharing one PostgreSQL database said.

What a committing transaction says, and the order commits take, is storage
(gateway/store/notices.py): the sync core writes it without knowing of other processes. Each
process listens on a connection of its own, on a thread of its own, and hands what it hears to
the reactor, leaving out its own notifications (each carries the sender's ``SOURCE``).
Notifications sent while that connection is down are lost: after every (re)connect the process
is told ``resynced`` and looks again itself; the gateway's 1 s sweep stays the safety net.
"""

import os
import select
import threading

from twisted.application.internet import backoffPolicy
from twisted.logger import Logger

from gateway.store.notices import CHANNELS, COUNTED, PAYLOAD_LIMIT, SOURCE, WORDED, merged_words, notify

log = Logger(namespace="gateway.peers")

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
    first_pause_s = 0.5

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
        pause_after = backoffPolicy(initialDelay=self.first_pause_s, maxDelay=self.max_pause_s)
        failures = 0
        while not self._stopping.is_set():
            conn = None
            try:
                conn = self._connect()
                cursor = conn.cursor()
                for channel in CHANNELS:
                    cursor.execute(f"LISTEN {channel}")
                self._reactor.callFromThread(self._resynced, failures > 0)
                failures = 0
                self._listen(conn, cursor)
            except Exception as exc:  # a driver error or a socket error: either way, connect again
                pause = pause_after(failures)
                failures += 1
                if not self._stopping.is_set():
                    self._reactor.callFromThread(log.warn, "not hearing the other gateway processes ({e}); "
                                                           "trying again in {s:.1f} s", e=first_line(exc), s=pause)
                self._stopping.wait(pause)
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
        log.info("listening to the other gateway processes{again}", again=" again" if again else "")
        self._on_resynced()

    def _deliver(self, heard: list[tuple[str, str]]) -> None:
        # A storm of changes is heard many at a time: one wake of the pushers answers them all
        # (their groups together). Not so a count: two wrong proofs heard together, merged, were
        # one, and a guesser spreading four over two processes was never locked out of the one
        # that heard two.
        merged: set[tuple[str, str]] = set()
        worded: dict[str, list[str]] = {}
        for channel, payload in heard:
            sender, _, rest = payload.partition(" ")
            if sender == SOURCE or (channel not in COUNTED and (channel, rest) in merged):
                continue
            if channel in WORDED:
                worded.setdefault(channel, []).append(rest)
                continue
            merged.add((channel, rest))
            self._on_notice(channel, rest)
        for channel, payloads in worded.items():
            self._on_notice(channel, merged_words(payloads))


class Teller:
    """Tells the other processes what happened here outside any transaction of ours (a wrong
    proof, a reconciliation's findings): one small transaction each, on the database's reader
    threads, never on the reactor.

    At most ``max_pending`` wait; a notification beyond that, or one the database refuses, is not
    sent, and a line says so: the others then go without it (each process still keeps its own
    count and findings), which is what a notification lost with a connection costs anyway.
    """

    max_pending = 256
    room = PAYLOAD_LIMIT - len(SOURCE) - 1  # bytes a payload may take beside its sender's name

    def __init__(self, db, lines):
        self._db = db
        self._lines = lines  # RepeatedLines: one line per kind of loss, then a summary
        self.pending = 0

    def tell(self, channel: str, payload: str) -> None:
        if len(payload.encode()) > self.room:
            self._lines.warn("notifications not sent", channel, "not telling the other processes on {channel}: "
                             "{n} bytes is more than a notification holds", channel=channel, n=len(payload.encode()))
            return
        if self.pending >= self.max_pending:
            self._lines.warn("notifications not sent", channel, "not telling the other processes on {channel}: "
                             "{n} notifications are already waiting for the database", channel=channel, n=self.pending)
            return
        self.pending += 1
        d = self._db.read(notify, channel, payload)
        d.addErrback(lambda f: self._lines.warn("notifications not sent", channel, "could not tell the other processes "
                                                "on {channel}: {e}", channel=channel, e=f.getErrorMessage()))
        d.addBoth(self._told)

    def _told(self, _) -> None:
        self.pending -= 1


def first_line(exc: BaseException) -> str:
    """What a driver said, in one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
