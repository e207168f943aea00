"""The events that name a user, copied on PostgreSQL into one unpartitioned table kept in
(user, id) order: where a user's page of events is read.

Why: the events table is partitioned by week (gateway/store/partitions.py), and a user met every
week has events in every week of a year: a page of them opened all 52 partitions, 12 to 32
times an empty table's database time at 10^7 events (docs/loadtest.md, "A user's events in one
table"). In the copy, a user's newest events are one index range however many weeks they span. Each copied row is the
event's own (same id, same columns), so the page holds the same rows in the same order, with the
same cursors, as one read from the events table.

Written by the database: a statement trigger on ``events`` (migration 0014) copies what each
INSERT or COPY stored, from its transition table (the rows stored: a resend skipped by ON
CONFLICT is not there), in the inserting transaction, whatever code wrote them. A row moved
between partitions (a week made later takes its rows out of the default partition) stays as it
was. Removed with the events: retention's row-by-row deletes remove the copies in the same
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


def naming_users(conn):
    """Where a user's page reads: the copy on PostgreSQL, the events table itself on SQLite."""
    return _copy() if conn.dialect.name == "postgresql" else events


@functools.cache
def _copy():
    return events.to_metadata(MetaData(), name=BY_USER)


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
    copy = _copy()
    return conn.execute(delete(copy).where(copy.c.occurred_ms >= start_ms, copy.c.occurred_ms < end_ms)).rowcount


def refill(conn) -> int:
    """Copy every stored event that names a user afresh, the copy's indexes built after; how many.
    Events are held still (no insert, no delete) until this transaction ends."""
    conn.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
    for name in _INDEXES:
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    conn.execute(text(f"TRUNCATE {BY_USER}"))
    columns = conn.execute(text(  # the copy's own: this runs in migration 0014 too, before any later column
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute"
        " WHERE attrelid = CAST(:copy AS regclass) AND attnum > 0 AND NOT attisdropped"), dict(copy=BY_USER)).scalar_one()
    copied = conn.execute(text(f"INSERT INTO {BY_USER} ({columns}) SELECT {columns} FROM events WHERE user_id IS NOT NULL")).rowcount
    for ddl in _INDEXES.values():
        conn.execute(text(ddl))
    return copied
