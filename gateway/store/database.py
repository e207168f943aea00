"""Database: the engine, its migrations, and the threads database work runs on.

All database work runs off the reactor thread. Writes go through one writer thread, in order,
so change sequence numbers follow commit order and SQLite never sees two writers; reads go to
a small pool of their own, so the monitoring API never waits behind a group commit.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_URL = "sqlite:///gateway.db"
CONNECT_TIMEOUT_S = 10


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
            cur.close()

        return engine
    # A server that accepts the connection and never answers must not hang the gateway's start
    # (nor its writer thread): libpq's connect_timeout bounds it.
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if make_url(url).get_driver_name() == "psycopg2" else {}
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it already is)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    def __init__(self, url: str, reactor, readers: int = 2):
        self.url = url
        self.engine = make_engine(url)
        self._reactor = reactor
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
        """Run ``work(connection, *args)`` in one transaction on the writer thread."""
        return deferToThreadPool(self._reactor, self._writer, self._transaction, work, args)

    def read(self, work, *args) -> defer.Deferred:
        """Run ``work(connection, *args)`` on a reader thread."""
        return deferToThreadPool(self._reactor, self._readers, self._transaction, work, args)

    def run_now(self, work, *args):
        """Run ``work`` on the calling thread: for start-up and command-line tools, never the reactor."""
        return self._transaction(work, args)

    def _transaction(self, work, args):
        try:
            with self.engine.begin() as conn:
                return work(conn, *args)
        except (DBAPIError, SQLAlchemyError) as exc:
            raise DatabaseFailure(_describe(exc)) from exc


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
    whose type needs a bind processor or a default, and PostgreSQL (where SQLAlchemy batches
    rows into multi-VALUES statements), take SQLAlchemy's own path.
    """
    if not rows:
        return
    stmt = _dialect(conn).insert(table)
    if ignore_duplicates:
        stmt = stmt.on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        compiled = _compiled_insert(conn.dialect, stmt, (table.name, ignore_duplicates, tuple(rows[0])))
        if compiled is not None:
            sql, keys = compiled
            conn.exec_driver_sql(sql, [tuple(row[k] for k in keys) for row in rows])
            return
    conn.execute(stmt, rows)


_COMPILED_INSERTS: dict = {}


def _compiled_insert(dialect, stmt, key: tuple) -> tuple[str, tuple[str, ...]] | None:
    """(SQL, parameter order) of ``stmt`` for rows with the keys ``key[-1]``; None when a type
    needs processing or a column left out has a default to fill in."""
    if key not in _COMPILED_INSERTS:
        keys = key[-1]
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup or ())
        plain = compiled.positional and not compiled._bind_processors and set(order) <= set(keys)
        _COMPILED_INSERTS[key] = (compiled.string, order) if plain else None
    return _COMPILED_INSERTS[key]


def upsert(conn, table, rows: list[dict], key: list[str], update: list[str]) -> None:
    """INSERT, or on a key already stored, UPDATE the ``update`` columns from the new row."""
    if rows:
        stmt = _dialect(conn).insert(table)
        stmt = stmt.on_conflict_do_update(index_elements=key, set_={c: stmt.excluded[c] for c in update})
        conn.execute(stmt, rows)
