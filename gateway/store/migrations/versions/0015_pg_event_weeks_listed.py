"""Every partition of the events table listed in ``event_week_ids``, an open one with no highest
id yet (gateway/store/partitions.py, "Closed weeks"): a page of events read which partitions
there are from the catalog, a read that grew with every week kept (0.13 ms at 56 partitions
against 0.03 for this table). Attaching and dropping a week add and remove its row in the same
transaction, and the hourly run mends the list from the catalog (a gateway of an older version
left running through the upgrade attaches weeks without listing them). PostgreSQL only: SQLite
has no partitions.

Revision ID: 0015_pg_event_weeks_listed
Revises: 0014_pg_events_by_user
"""

import time

from alembic import op

from gateway.store.partitions import make_weeks

revision = "0015_pg_event_weeks_listed"
down_revision = "0014_pg_events_by_user"
branch_labels = None
depends_on = None


def upgrade():
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE event_week_ids ALTER COLUMN max_id DROP NOT NULL")
    make_weeks(conn, int(time.time() * 1000))  # lists those there are (``list_attached``), then makes any missing


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DELETE FROM event_week_ids WHERE max_id IS NULL")
    op.execute("ALTER TABLE event_week_ids ALTER COLUMN max_id SET NOT NULL")
