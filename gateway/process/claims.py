"""TerminalClaims: which of several gateway processes on one PostgreSQL database serves a terminal.

A process serves a terminal while it holds a session-level advisory lock on its id, on a
connection this process keeps for that alone (its own thread, so lock calls queue in order).
A session lock rather than a lease row: it costs no write and no heartbeat per terminal, and
PostgreSQL lets go of it the moment the holding process dies or loses its connection, so a
SIGKILLed worker's terminals can be served by another one as soon as they dial again.

A newer authenticated connection wins across processes too: the process that has it tells the
others (a ``TERMINALS`` notification with when it authenticated) and waits for the lock; a
process holding an older connection of that terminal closes it, which lets go of the lock. The
notification is sent again while the wait lasts, in case one was lost.

When the lock connection breaks every lock it held is gone: the next call makes it again, and
the next check takes back the locks of the terminals still served here that it does not hold
(also when a claim of another terminal made the new connection first); one another process took meanwhile is
reported lost (``on_lost``), and the registry closes that connection.

The same check, every ``check_s``, reads which terminals the other processes serve and their
stored cursors (``on_elsewhere``), so this process can show them online: PostgreSQL's lock
table is the one place that knows, also of a process that died without a word.
"""

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway.process.peers import first_line
from gateway.store.notices import SOURCE, TERMINALS

log = Logger(namespace="gateway.claims")

CLAIM_LOCK_SPACE = 0x6777 + 1  # first key of the terminals' advisory locks; the second is the terminal id


# The claims granted in this database (pg_locks shows the whole cluster's), with each terminal's
# cursor. objid is the lock's second key as an unsigned 32-bit number: the terminal id itself.
SERVED = ("SELECT t.terminal_id, t.cursor FROM pg_locks l JOIN terminals t ON t.terminal_id = l.objid::bigint "
          "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objsubid = 2 AND l.granted "
          "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def lock_key(terminal_id: int) -> int:
    """A terminal id (unsigned 32 bits on the wire) as PostgreSQL's signed int4 lock key."""
    return terminal_id - 2**32 if terminal_id >= 2**31 else terminal_id


class TerminalClaims:
    retry_s = 0.2  # between tries for a lock another process holds
    renotify_s = 2.0  # tell the holder again while the wait lasts
    check_s = 5.0  # how often the lock connection is checked

    def __init__(self, connect, reactor, on_lost, on_elsewhere=lambda cursors: None):
        self._connect = connect
        self._reactor = reactor
        self._on_lost = on_lost
        self._on_elsewhere = on_elsewhere
        self._thread = ThreadPool(1, 1, name="db-claims")
        self._conn = None  # used on the claims thread only
        self._locked: set[int] = set()  # the locks self._conn holds (claims thread only)
        self.held: set[int] = set()  # changed on the reactor only
        self._check = task.LoopingCall(self._checked)
        self._check.clock = reactor

    def start(self) -> None:
        self._thread.start()
        self._check.start(self.check_s, now=False)

    def stop(self) -> None:
        if self._check.running:
            self._check.stop()
        self._thread.callInThread(self._close)
        self._thread.stop()

    def claim(self, terminal_id: int, since_s: float, wanted) -> defer.Deferred:
        """Fires True once this process holds ``terminal_id``, False as soon as ``wanted()`` is
        false (that connection ended or a newer one came). Tells the other processes first."""
        return defer.ensureDeferred(self._claim(terminal_id, since_s, wanted))

    async def _claim(self, terminal_id: int, since_s: float, wanted) -> bool:
        told_s = None
        while wanted():
            now = self._reactor.seconds()
            try:
                if told_s is None or now - told_s >= self.renotify_s:
                    told_s = now
                    await self._call(self._notify, f"{terminal_id} {since_s!r}")
                    if not wanted():
                        break
                if terminal_id in self.held:
                    return True
                if await self._call(self._try_lock, terminal_id):
                    if not wanted():  # it ended while we asked: let go again
                        await self._call(self._unlock, terminal_id)
                        return False
                    self.held.add(terminal_id)
                    return True
            except Exception as exc:  # database down: keep trying while the connection lasts
                log.warn("cannot claim terminal {tid} yet: {e}", tid=terminal_id, e=first_line(exc))
                await task.deferLater(self._reactor, 1.0, lambda: None)
                continue
            await task.deferLater(self._reactor, self.retry_s, lambda: None)
        return False

    def release(self, terminal_id: int) -> None:
        """This process no longer serves ``terminal_id``."""
        if terminal_id in self.held:
            self.held.discard(terminal_id)
            self._call(self._unlock, terminal_id).addErrback(lambda _: None)  # a broken connection let go of it already

    def _checked(self):
        d = self._call(self._relock, sorted(self.held))
        d.addCallback(self._lost)
        d.addCallback(lambda _: self._call(self._served_anywhere))
        d.addCallback(lambda served: self._on_elsewhere({t: c for t, c in served.items() if t not in self.held}))
        d.addErrback(lambda f: log.warn("cannot check terminal claims: {e}", e=f.getErrorMessage()))
        return d

    def _lost(self, lost: list[int]) -> None:
        for terminal_id in lost:
            if terminal_id in self.held:
                self.held.discard(terminal_id)
                self._on_lost(terminal_id)

    def _call(self, work, *args) -> defer.Deferred:
        return deferToThreadPool(self._reactor, self._thread, work, *args)

    # -- on the claims thread ----------------------------------------------------------------

    def _cursor(self):
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn.cursor()

    def _run(self, sql: str, params: tuple):
        try:
            cursor = self._cursor()
            cursor.execute(sql, params)
            return cursor.fetchone()
        except Exception:
            self._close()
            raise

    def _notify(self, payload: str) -> None:
        self._run("SELECT pg_notify(%s, %s)", (TERMINALS, f"{SOURCE} {payload}"))

    def _try_lock(self, terminal_id: int) -> bool:
        locked = self._run("SELECT pg_try_advisory_lock(%s, %s)", (CLAIM_LOCK_SPACE, lock_key(terminal_id)))[0]
        if locked:
            self._locked.add(terminal_id)
        return locked

    def _unlock(self, terminal_id: int) -> None:
        self._locked.discard(terminal_id)
        self._run("SELECT pg_advisory_unlock(%s, %s)", (CLAIM_LOCK_SPACE, lock_key(terminal_id)))

    def _served_anywhere(self) -> dict[int, int]:
        """{terminal id: stored cursor} of every terminal some process of this database serves."""
        try:
            cursor = self._cursor()
            cursor.execute(SERVED, (CLAIM_LOCK_SPACE,))
            return dict(cursor.fetchall())
        except Exception:
            self._close()
            raise

    def _relock(self, held: list[int]) -> list[int]:
        """Check the connection; take back the locks of ``held`` it does not hold (it broke since,
        and a claim made the next one before this check came): those lost."""
        if self._conn is not None and not self._conn.closed:
            try:
                self._run("SELECT 1", ())
            except Exception:
                pass  # broken: every lock it held is gone
        return [t for t in held if t not in self._locked and not self._try_lock(t)]

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken
                pass
            self._conn = None
            self._locked.clear()

