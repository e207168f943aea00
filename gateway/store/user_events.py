"""The events of closed weeks that name a user, copied on PostgreSQL into one unpartitioned table
kept in (user, id) order: with the open weeks' partitions, where a user's page of events is read.

Why: the events table is partitioned by week (gateway/store/partitions.py), and a user met every
week has events in every week of a year: a page of them opened all 52 partitions, 12 to 32
times an empty table's database time at 10^7 events (docs/loadtest.md, "A user's events in one
table"). In the copy, a user's events of the closed weeks are one index range however many weeks
they span. Each copied row is the event's own (same id, same columns), so the page holds the
same rows in the same order, with the same cursors, as one read from the events table.

Written when a week is closed, not as events arrive: the hourly run's close (``close_weeks``)
copies the week's events naming a user in one INSERT sorted by (user, id), in the transaction
that closes it, while its trigger's lock holds inserts into that week back; the closed week's
row trigger (migration 0014's ``event_week_inserted``) copies a late event in the inserting
transaction. Ingest into the open weeks, nearly all of it, writes nothing here: copying each
event as it arrived put it on its own leaf of a year-long index, and ingest at 10^7 events ran
at 0.68 of an empty table's (docs/loadtest.md). A row a week made later moves out of the closed
default partition keeps its copy; the page leaves out the copies of the open weeks' time.
Removed with the events: retention's row-by-row deletes remove the copies in the same
transaction (``uncopy_rows``), and dropping a week removes its copies in the transaction that
drops it (``uncopy_week``: a DELETE of that week's range of occurred time). SQLite has one
unpartitioned table: its user page reads that, and nothing here applies.
"""

import functools

from sqlalchemy import MetaData, delete, text

from gateway.store.schema import events

BY_USER = "events_by_user"
# Built after a bulk fill: a year of events goes in minutes through the indexes, seconds without.
_INDEXES = {
    "events_by_user_page": f"CREATE UNIQUE INDEX events_by_user_page ON {BY_USER} (user_id, id)",  # a user's page
    "events_by_user_occurred": f"CREATE INDEX events_by_user_occurred ON {BY_USER} (occurred_ms)",  # a dropped week's copies
}


@functools.cache
def copied():
    """The copy as a table (PostgreSQL only), its columns those of the events table."""
    return events.to_metadata(MetaData(), name=BY_USER)


def copy_partition(conn, name: str) -> int:
    """Copy what the partition ``name`` holds of events naming a user, sorted so the copy's index
    is written leaf after leaf; how many. One already copied (a row a week made later took out of
    the closed default partition) is skipped. The caller holds inserts into ``name`` back."""
    columns = _columns(conn)
    return conn.execute(text(f"INSERT INTO {BY_USER} ({columns}) SELECT {columns} FROM {name}"
                             " WHERE user_id IS NOT NULL ORDER BY user_id, id ON CONFLICT DO NOTHING")).rowcount


def _columns(conn) -> str:
    """The copy's own columns, by name (a migrated default partition has its own order; this runs
    in migration 0014 too, before any later column)."""
    return conn.execute(text(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute"
        " WHERE attrelid = CAST(:copy AS regclass) AND attnum > 0 AND NOT attisdropped"), dict(copy=BY_USER)).scalar_one()


def uncopy_rows(conn, rows) -> None:
    """Remove the copies of the events ``rows`` (mappings with ``user_id`` and ``id``), removed
    from the events table in this transaction."""
    named = [row for row in rows if row["user_id"] is not None]
    if named and conn.dialect.name == "postgresql":  # joined with the keys: an index probe each
        conn.execute(text(f"DELETE FROM {BY_USER} c USING unnest(CAST(:users AS text[]), CAST(:ids AS bigint[])) AS gone (user_id, id)"
                          " WHERE c.user_id = gone.user_id AND c.id = gone.id"),
                     dict(users=[row["user_id"] for row in named], ids=[row["id"] for row in named]))


def uncopy_week(conn, start_ms: int, end_ms: int) -> int:
    """Remove the copies of the events that occurred in ``[start_ms, end_ms)``: those of a week
    whose partition this transaction drops; how many."""
    copy = copied()
    return conn.execute(delete(copy).where(copy.c.occurred_ms >= start_ms, copy.c.occurred_ms < end_ms)).rowcount


def fill(conn, closed: list[str]) -> int:
    """Copy the events naming a user of the partitions ``closed`` into the empty copy, its indexes
    built after; how many. Events are held still (no insert, no delete) until this transaction ends."""
    conn.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    for name in _INDEXES:
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    conn.execute(text(f"TRUNCATE {BY_USER}"))
    filled = sum(copy_partition(conn, name) for name in closed)
    for ddl in _INDEXES.values():
        conn.execute(text(ddl))
    return filled
