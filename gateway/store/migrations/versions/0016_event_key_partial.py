"""The events table's unique key without the monitoring rows: a partial unique index on (terminal,
log, event id) of the rows that have an event id. A monitoring row has none, and a NULL never
conflicts, yet each took an entry in the key, and once the table is a site's size a leaf write of
its own a delivery (docs/loadtest.md, "The unique key without the monitoring rows"). Resends are
skipped as before: ``INSERT ... ON CONFLICT DO NOTHING`` names no target, which covers every
unique index, partial ones included.

SQLite: the key was part of the table's definition, so the table is rebuilt (every row copied, in
one transaction; the time and the disk it takes are in ``_say``).
PostgreSQL: the constraint goes and the index is made on the partitioned table, which makes it on
every partition there is and on each one attached later; it holds occurred_ms, the partition key,
as the constraint did (migration 0007).

What it needs is written out here, not imported: the code's schema moves on, a migration must not.

Revision ID: 0016_event_key_partial
Revises: 0015_pg_event_weeks_listed
"""

import sys

import sqlalchemy as sa
from alembic import op

revision = "0016_event_key_partial"
down_revision = "0015_pg_event_weeks_listed"
branch_labels = None
depends_on = None

KEY = "uq_events_terminal_log_event"
IDENTITY = ["terminal_id", "log_epoch", "terminal_event_id"]
PARTITION_KEY = "occurred_ms"  # migration 0007
HAS_EVENT_ID = "terminal_event_id IS NOT NULL"


def upgrade():
    conn = op.get_bind()
    _say(conn, "rebuilding the events table's unique key without the monitoring rows")
    if conn.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE events DROP CONSTRAINT {KEY}")
        op.execute(f"CREATE UNIQUE INDEX {KEY} ON events ({', '.join(IDENTITY + [PARTITION_KEY])}) WHERE {HAS_EVENT_ID}")
        return
    with op.batch_alter_table("events", recreate="always") as batch:
        batch.drop_constraint(KEY, type_="unique")
    op.create_index(KEY, "events", IDENTITY, unique=True, sqlite_where=sa.text(HAS_EVENT_ID))


def downgrade():
    conn = op.get_bind()
    _say(conn, "rebuilding the events table's unique key with the monitoring rows")
    op.drop_index(KEY, table_name="events")
    if conn.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE events ADD CONSTRAINT {KEY} UNIQUE ({', '.join(IDENTITY + [PARTITION_KEY])})")
        return
    with op.batch_alter_table("events", recreate="always") as batch:
        batch.create_unique_constraint(KEY, IDENTITY)


def _say(conn, what: str) -> None:
    """A site's operator sees why the start takes long, and what it needs: every row of the events
    table is read, on SQLite copied (timed on a 2-core test machine)."""
    if conn.execute(sa.text("SELECT 1 FROM events LIMIT 1")).first() is not None:
        how = ("the events table is copied (about 50 s for 10^7 events; it needs free disk of 1.8 times the "
               "database file)" if conn.dialect.name == "sqlite" else "ingest waits (about 5 s for 10^7 events)")
        print(f"gateway: migration {revision}: {what}; every row stays, {how}", file=sys.stderr, flush=True)
