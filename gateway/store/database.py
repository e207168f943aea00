"""Database: the engine, its migrations, and the threads database work runs on.

All database work runs off the reactor thread. Writes go through one writer thread, in order,
so SQLite never sees two writers; reads go to a small pool of their own, so the monitoring API
never waits behind a group commit.

On PostgreSQL the writes that queue while one commits share the next commit (group commit):
each runs in a savepoint of its own, so one that fails is rolled back and fails alone, and
every caller hears of its write only after the commit that holds it. A commit costs a WAL flush
whoever makes it; without this a process could not make more writes a second than its disk
makes flushes. SQLite keeps one transaction per write (its driver's savepoints are not to be
trusted), and its event log groups what matters most.
"""

import io
import operator
from collections import deque


from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gateway.store.notices import owed_notices, send_owed

log = Logger(namespace="gateway.database")

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_URL = "sqlite:///gateway.db"
CONNECT_TIMEOUT_S = 10
WAL_CHECKPOINT_PAGES = 10_000  # SQLite's automatic checkpoint: every 40 MB of WAL, not 4


class DatabaseFailure(Exception):
    """A transaction could not be committed (database down, disk full, constraint): retry later."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 5})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; FULL makes every acknowledged commit
            # survive a power cut, and group commit keeps its fsyncs few.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            # A delivery's two rows dirty index leaves of their own once the events table is big,
            # and each checkpoint writes every page the WAL holds: checkpointing every 10,000 pages
            # (40 MB) instead of SQLite's 1,000 writes a hot leaf once where it wrote it up to ten
            # times (docs/loadtest.md, "The writer thread's share"). Durability is the same.
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            cur.close()

        return engine
    # A server that accepts the connection and never answers must not hang the gateway's start
    # (nor its writer thread): libpq's connect_timeout bounds it.
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if make_url(url).get_driver_name() == "psycopg2" else {}
    # Connections are made anew every hour: a connection's temporary table (``_copy_in``) keeps the
    # database's oldest unfrozen transaction id from moving while the connection lives (nobody else
    # can freeze it), and PostgreSQL stops taking writes once that id is ~2 billion transactions old.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_recycle=RECYCLE_S, connect_args=connect_args)


RECYCLE_S = 3600


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it already is)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    max_group = 256  # writes one group commit holds at most (PostgreSQL)

    def __init__(self, url: str, reactor, readers: int = 2):
        self.url = url
        self.engine = make_engine(url)
        self._reactor = reactor
        self._grouped = self.engine.dialect.name == "postgresql"
        self._queued: deque[tuple] = deque()  # (work, args, fired once committed), for the next group commit
        self._committing = False
        self._writer = ThreadPool(1, 1, name="db-writer")
        self._readers = ThreadPool(1, readers, name="db-readers")

    def open(self) -> None:
        """Migrate the schema: enough for command-line tools, which run transactions themselves."""
        migrate(self.engine)

    def start(self) -> None:
        self.open()
        self._writer.start()
        self._readers.start()

    def stop(self) -> None:
        self._writer.stop()
        self._readers.stop()
        self.engine.dispose()

    def write(self, work, *args) -> defer.Deferred:
        """Run ``work(connection, *args)`` on the writer thread, alone in its transaction or in a
        savepoint of the next group commit; fires with its result once committed."""
        if not self._grouped:
            return deferToThreadPool(self._reactor, self._writer, self._transaction, work, args)
        d = defer.Deferred()
        self._queued.append((work, args, d))
        if not self._committing:
            self._commit_group()
        return d

    def _commit_group(self) -> None:
        group = [self._queued.popleft() for _ in range(min(len(self._queued), self.max_group))]
        self._committing = bool(group)
        if group:
            d = deferToThreadPool(self._reactor, self._writer, transaction, self.engine, each_in_savepoint, [g[:2] for g in group])
            d.addBoth(self._group_committed, group)

    def _group_committed(self, outcome, group: list[tuple]) -> None:
        for i, (*_, done) in enumerate(group):
            if isinstance(outcome, Failure):  # the commit failed: none of them happened
                done.errback(outcome)
            elif isinstance(outcome[i], _Failed):
                done.errback(Failure(outcome[i].error))
            else:
                done.callback(outcome[i])
        self._commit_group()  # with what queued meanwhile, the callbacks' own writes included

    def read(self, work, *args) -> defer.Deferred:
        """Run ``work(connection, *args)`` on a reader thread."""
        return deferToThreadPool(self._reactor, self._readers, self._transaction, work, args)

    def run_now(self, work, *args):
        """Run ``work`` on the calling thread: for start-up and command-line tools, never the reactor."""
        return self._transaction(work, args)

    def _transaction(self, work, args):
        return transaction(self.engine, work, *args)


def transaction(engine: Engine, work, *args):
    """Run ``work(connection, *args)`` in one transaction; then send what it owes other processes,
    on the same connection (a wake-up must not cost a second connection from the pool)."""
    try:
        with engine.connect() as conn:
            with conn.begin():
                try:
                    result = work(conn, *args)
                finally:
                    owed = owed_notices(conn)
            _wake_others(conn, owed)
    except (DBAPIError, SQLAlchemyError) as exc:
        raise DatabaseFailure(_describe(exc)) from exc
    return result


def _wake_others(conn, owed: dict[str, set[str]]) -> None:
    try:
        send_owed(conn, owed)
    except (DBAPIError, SQLAlchemyError) as exc:  # committed all the same: the next change wakes them
        log.warn("committed, but could not wake the other processes: {why}", why=_describe(exc))


class _Failed:
    """A write of a group commit that raised: rolled back to its savepoint, the others kept."""

    def __init__(self, error: BaseException):
        self.error = error


def each_in_savepoint(conn, writes: list[tuple]) -> list:
    """Run each ``(work, args)`` in a savepoint of this transaction; each one's result or ``_Failed``."""
    outcomes = []
    for work, args in writes:
        try:
            with conn.begin_nested():
                outcomes.append(work(conn, *args))
        except (DBAPIError, SQLAlchemyError) as exc:
            outcomes.append(_Failed(DatabaseFailure(_describe(exc))))
        except Exception as exc:  # the work's own refusal (an unknown user, say): its caller's to handle
            outcomes.append(_Failed(exc))
    return outcomes


def _describe(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]


def _dialect(conn):
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def insert_ignoring_duplicates(conn, table, rows: list[dict]) -> None:
    """INSERT that skips rows whose key is already stored: how resends stay stored once."""
    insert_many(conn, table, rows, ignore_duplicates=True)


def insert_many(conn, table, rows: list[dict], ignore_duplicates: bool = False) -> None:
    """INSERT many rows, all with the first row's keys (as SQLAlchemy's executemany).

    On SQLite the rows go to the driver's executemany as tuples, the statement compiled once:
    SQLAlchemy's per-row parameter processing cost more than SQLite storing the rows. Columns
    whose type needs a bind processor or a default take SQLAlchemy's own path. On PostgreSQL
    a batch of ``COPY_FROM_ROWS`` or more goes by ``COPY`` (``_copy_in``), fewer as one
    multi-row VALUES statement.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_FROM_ROWS:
        _copy_in(conn, table, rows, ignore_duplicates)
        return
    stmt = _dialect(conn).insert(table)
    if ignore_duplicates:
        stmt = stmt.on_conflict_do_nothing()
    if conn.dialect.name == "postgresql":
        _insert_as_values(conn, stmt, rows, ("nothing",) if ignore_duplicates else ())
        return
    _execute_plainly(conn, stmt, rows, (table.name, ignore_duplicates, tuple(rows[0])))


def execute_many(conn, stmt, rows: list[dict]) -> None:
    """``conn.execute(stmt, rows)`` for a statement of module scope (its compiled form is kept by
    identity); on SQLite as ``insert_many``'s rows go, as tuples to the driver's executemany."""
    if rows:
        _execute_plainly(conn, stmt, rows, (stmt, tuple(rows[0])))


def _execute_plainly(conn, stmt, rows: list[dict], key: tuple) -> None:
    if conn.dialect.name == "sqlite":
        compiled = _compiled_plain(conn.dialect, stmt, key)
        if compiled is not None:
            sql, keys = compiled
            conn.exec_driver_sql(sql, list(map(_values_in_order(keys), rows)))
            return
    conn.execute(stmt, rows)


_COMPILED_PLAIN: dict = {}


def _values_in_order(keys: tuple[str, ...]):
    """A row's values as the driver's parameter tuple (itemgetter: a tuple even of one key)."""
    get = operator.itemgetter(*keys)
    return get if len(keys) > 1 else lambda row: (get(row),)


def _compiled_plain(dialect, stmt, key: tuple) -> tuple[str, tuple[str, ...]] | None:
    """(SQL, parameter order) of ``stmt`` for rows with the keys ``key[-1]``; None when a type
    needs processing or a column left out has a default to fill in."""
    if key not in _COMPILED_PLAIN:
        keys = key[-1]
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup or ())
        plain = compiled.positional and not compiled._bind_processors and set(order) <= set(keys)
        _COMPILED_PLAIN[key] = (compiled.string, order) if plain else None
    return _COMPILED_PLAIN[key]


def upsert(conn, table, rows: list[dict], key: list[str], update: list[str]) -> None:
    """INSERT, or on a key already stored, UPDATE the ``update`` columns from the new row."""
    if rows:
        stmt = _dialect(conn).insert(table)
        stmt = stmt.on_conflict_do_update(index_elements=key, set_={c: stmt.excluded[c] for c in update})
        if conn.dialect.name == "postgresql":
            # One statement may not touch a row twice: of rows with one key the last wins, as one by one.
            _insert_as_values(conn, stmt, list({tuple(row[k] for k in key): row for row in rows}.values()),
                              ("update", tuple(key), tuple(update)))
        else:
            conn.execute(stmt, rows)


PG_ROWS_PER_STATEMENT = 1000
# COPY costs a few statements and round trips more than one INSERT (the server asks for the data;
# the rows that may be stored already take a temporary table), and saves the parsing of every
# value: the server's CPU per commit of event rows was the same both ways at 32-64 rows a batch,
# 0.7 of VALUES' at 128-256, 0.5-0.6 at 1,000, and 300-500 us more at 1-8 (benchmarks/row_cost.py).
COPY_FROM_ROWS = 64


def _copy_in(conn, table, rows: list[dict], ignore_duplicates: bool) -> None:
    """Rows into ``table`` by ``COPY FROM STDIN``: the server's CPU per event row in a storm was
    half parsing and planning multi-row VALUES statements (about 28 us a row with the events
    table's indexes, against 11 us by COPY; docs/loadtest.md, "What the PostgreSQL server spends").

    ``COPY`` knows no ``ON CONFLICT``: rows that may be stored already are copied into a
    temporary table of this connection first (no WAL, emptied at commit), then moved with one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, which empties it as it reads it.
    """
    keys = tuple(rows[0])
    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(quote(k) for k in keys)
    target = quote(table.name)
    if ignore_duplicates:
        staged = quote(f"gateway_staged_{table.name}")
        if conn.exec_driver_sql(f"SELECT to_regclass('pg_temp.{staged}')").scalar() is None:  # gone with a rollback, if made in one
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {staged} (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        sql, then = f"COPY {staged} ({columns}) FROM STDIN", (
            f"WITH staged AS (DELETE FROM {staged} RETURNING {columns}) "
            f"INSERT INTO {target} ({columns}) SELECT {columns} FROM staged ON CONFLICT DO NOTHING")
    else:
        sql, then = f"COPY {target} ({columns}) FROM STDIN", None
    text = "".join("\t".join(map(_copy_text, (row[k] for k in keys))) + "\n" for row in rows)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(sql, io.StringIO(text))
        if then:
            sql = then
            cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: bool | int | float | str | bytes | None) -> str:
    """A value in COPY's text format: NULL is ``\\N``; a boolean ``t``/``f``; bytes as bytea's hex
    form (its backslash escaped); in text a backslash, tab, newline or return is escaped."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return "%d" % value  # an IntEnum as its number, whatever its __str__
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if not isinstance(value, str):
        raise TypeError(f"COPY of a {type(value).__name__} is not written: only booleans, numbers, text, bytes and NULL")
    return value.translate(_COPY_ESCAPES)


_VALUES_SQL: dict = {}  # (table, what a conflict does, columns) -> psycopg2 ``execute_values`` SQL


def _insert_as_values(conn, stmt, rows: list[dict], on_conflict: tuple) -> None:
    """``stmt`` for all ``rows`` through psycopg2's ``execute_values``: SQLAlchemy leaves ON
    CONFLICT statements to executemany, and compiling 1,000 rows of VALUES costs it half a second.
    The statement is compiled once per table, conflict clause (``on_conflict``) and columns."""
    keys = tuple(rows[0])
    key = (stmt.table.name, on_conflict, keys)
    sql = _VALUES_SQL.get(key)
    if sql is None:
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(keys)).string
        quote = conn.dialect.identifier_preparer.quote
        conflict = compiled.find(" ON CONFLICT")
        sql = _VALUES_SQL[key] = (f"INSERT INTO {quote(stmt.table.name)} ({', '.join(quote(k) for k in keys)}) VALUES %s"
                                  + (compiled[conflict:] if conflict >= 0 else ""))
    execute_values(conn, sql, [tuple(row[k] for k in keys) for row in rows])


def execute_values(conn, sql: str, rows: list[tuple], template: str | None = None) -> None:
    """psycopg2's ``execute_values``: ``sql``'s ``VALUES %s`` filled with up to
    ``PG_ROWS_PER_STATEMENT`` rows a statement, on this transaction's connection; fails as
    SQLAlchemy's own statements do (a DBAPIError)."""
    from psycopg2 import extras  # PostgreSQL's driver is installed only where it is used

    cursor = conn.connection.dbapi_connection.cursor()
    try:
        extras.execute_values(cursor, sql, rows, template=template, page_size=PG_ROWS_PER_STATEMENT)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()
