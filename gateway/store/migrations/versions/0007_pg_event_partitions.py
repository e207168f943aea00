"""A year of logs (gateway/store/partitions.py): on PostgreSQL the events table becomes partitioned
by occurred time, a week a partition, so retention drops old weeks whole. The table as it was
becomes the default partition (no row is copied: its old events leave it row by row, as retention
removed them before); this week and the next are made at once. Unique keys of a partitioned table
must hold its partition key, so the primary key is (id, occurred_ms) and an event's identity
(terminal, log, event id) is unique with its time: a resend carries the same time, so it is still
stored once. On both databases the events of one terminal get an index (terminal_id, id): the
API's newest events of a terminal walked ids backwards without it.

Revision ID: 0007_pg_event_partitions
Revises: 0006_terminal_kind
"""

import time

from alembic import op

from gateway.store.partitions import DEFAULT, WEEK_MS, WEEKS_AHEAD, week_of, week_table

revision = "0007_pg_event_partitions"
down_revision = "0006_terminal_kind"
branch_labels = None
depends_on = None

COLUMNS = """
    id BIGINT NOT NULL,
    terminal_id BIGINT,
    terminal_event_id BIGINT,
    log_epoch BIGINT NOT NULL DEFAULT 0,
    type VARCHAR(64) NOT NULL,
    code INTEGER,
    sub_code INTEGER,
    user_id VARCHAR(64),
    occurred_ms BIGINT NOT NULL,
    recorded_ms BIGINT NOT NULL,
    detail TEXT
"""


def upgrade():
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        op.create_index("ix_events_terminal_id", "events", ["terminal_id", "id"])
        return
    op.execute(f"ALTER TABLE events RENAME TO {DEFAULT}")
    for old in ("events_pkey", "uq_events_terminal_log_event", "ix_events_type_id", "ix_events_user_id"):
        op.execute(f"ALTER INDEX {old} RENAME TO {DEFAULT}_{old.removeprefix('ix_events_').removeprefix('events_')}")

    # Its own keys go; the partitioned table's, which hold the time too, are built on it as it is attached.
    op.execute(f"ALTER TABLE {DEFAULT} DROP CONSTRAINT {DEFAULT}_pkey, DROP CONSTRAINT {DEFAULT}_uq_events_terminal_log_event")
    op.execute(f"""CREATE TABLE events ({COLUMNS},
        CONSTRAINT events_pkey PRIMARY KEY (id, occurred_ms),
        CONSTRAINT uq_events_terminal_log_event UNIQUE (terminal_id, log_epoch, terminal_event_id, occurred_ms)
    ) PARTITION BY RANGE (occurred_ms)""")
    op.execute("CREATE INDEX ix_events_type_id ON events (type, id)")
    op.execute("CREATE INDEX ix_events_user_id ON events (user_id, id)")
    op.execute("CREATE INDEX ix_events_terminal_id ON events (terminal_id, id)")
    op.execute(f"ALTER TABLE events ATTACH PARTITION {DEFAULT} DEFAULT")
    now_ms = int(time.time() * 1000)
    for n in range(WEEKS_AHEAD + 1):  # attached as the code made weeks then: migration 0015 lists them
        week = week_of(now_ms + n * WEEK_MS)
        week_table(conn, week)
        op.execute(f"ALTER TABLE events ATTACH PARTITION {week.name} FOR VALUES FROM ({week.start_ms}) TO ({week.end_ms})")


def downgrade():
    raise NotImplementedError("partitions are not undone: restore a dump taken before the upgrade")
