"""An index of the events that say a terminal's log went irregular, by terminal and log: each
handshake asks whether the terminal's log has one (gateway/sync/eventlog.py, ``went_irregular``).
Read through the terminal's index, that walked every row of the terminal; read by type, every
such row of the site. A partial index holds those rows only, so it costs the others nothing. On
PostgreSQL it is made on the partitioned table, so every week has it, those attached later too.

What it needs is written out here, not imported: the code's schema moves on, a migration must not.

Revision ID: 0017_events_irregular_index
Revises: 0016_event_key_partial
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_events_irregular_index"
down_revision = "0016_event_key_partial"
branch_labels = None
depends_on = None

INDEX = "ix_events_irregular"
IRREGULAR = "type = 'Event ids irregular'"  # gateway/sync/monitor.py's LOG_IRREGULAR when this was written


def upgrade():
    op.create_index(INDEX, "events", ["terminal_id", "log_epoch"], sqlite_where=sa.text(IRREGULAR), postgresql_where=sa.text(IRREGULAR))


def downgrade():
    op.drop_index(INDEX, table_name="events")
