"""The order rows commit in: the keys of new events and user changes, and how far a reader may
follow them without skipping one that commits late.

Readers follow two ordered keys: ``events.id`` (the live stream, the activity figures, the API's
``after``) and ``users.change_seq`` (the changes feed, terminal cursors). A follower that has read
key k never looks below k again, so a row may only become visible above every key it was read.

SQLite has one writer: keys from the table's own counter (and the ``counters`` row for changes)
follow commit order already, and every committed row is visible.

PostgreSQL has many writers, and none waits for another (no shared counter row, no lock held
through a commit's WAL flush). Each key is the writing transaction's id shifted left, plus the
row's number within that transaction: ``xid8 << 22 | n``. A reader sees a key only below the
watermark ``xmin << 22``, where ``xmin`` is the lowest transaction id still running when its
statement took its snapshot (``pg_snapshot_xmin``). Every transaction below ``xmin`` has ended, and
every transaction that starts later gets an id at or above it, so the set of keys below the
watermark never grows once a reader saw it: a row that commits late was hidden until then, never
skipped. This is logical replication's "consistent point" and Kafka's last stable offset. The cost
is latency: a transaction left open holds every follower back until it ends (the feed, not
writers), which ``held_back`` lets a follower notice. docs/architecture.md, "The changes feed".
"""

from sqlalchemy import func, literal_column, select, text

ROW_BITS = 22  # rows one transaction may key: 4,194,304 (a group commit holds at most a few thousand)
ROWS_PER_TRANSACTION = 1 << ROW_BITS

# Above this, no row of a transaction still running can be seen: compared within the same statement
# as the rows, so with the same snapshot.
WATERMARK = literal_column(f"(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {ROW_BITS})")

_KEYS = "gateway_order_keys"  # connection.info: (the transaction they were drawn in, first key, keys used)


class TooManyRows(OverflowError):
    def __init__(self, wanted: int):
        super().__init__(f"one transaction may key at most {ROWS_PER_TRANSACTION:,} rows; this one wanted {wanted:,}")


def ordered(conn) -> bool:
    """Whether this database needs keys from here (PostgreSQL) or keeps order itself (SQLite)."""
    return conn.dialect.name == "postgresql"


def draw_keys(conn, n: int) -> range:
    """``n`` keys for rows this transaction inserts, ascending and above every key drawn before in it."""
    txn = conn.get_transaction()
    drawn = conn.info.get(_KEYS)
    if drawn is None or drawn[0] is not txn:
        first = conn.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one() << ROW_BITS
        drawn = (txn, first, 0)
    _, first, used = drawn
    if used + n > ROWS_PER_TRANSACTION:
        raise TooManyRows(used + n)
    conn.info[_KEYS] = (txn, first, used + n)
    return range(first + used, first + used + n)


def keyed(conn, rows: list[dict], column: str = "id") -> list[dict]:
    """The rows, each given the next key in ``column`` on PostgreSQL (as they are on SQLite)."""
    if not rows or not ordered(conn):
        return rows
    return [dict(row, **{column: key}) for row, key in zip(rows, draw_keys(conn, len(rows)))]


def visible(conn, column) -> list:
    """WHERE clauses keeping ``column`` below the watermark (none on SQLite)."""
    return [column < WATERMARK] if ordered(conn) else []


def below_watermark(conn, column):
    """A column that says, for each row read, whether its key is below the watermark (True on SQLite):
    a follower that reads past the watermark keeps the prefix below it and knows it was held back."""
    return (column < WATERMARK).label("below_watermark") if ordered(conn) else literal_column("1").label("below_watermark")


def highest_visible(conn, column) -> int:
    """The highest key of ``column`` a follower may read now (0 when none)."""
    return conn.execute(select(func.max(column)).where(*visible(conn, column))).scalar() or 0
