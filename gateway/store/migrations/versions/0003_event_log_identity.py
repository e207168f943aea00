"""Event log identity: events are keyed by (terminal, log epoch, event id); terminals keep the
epoch of their current log. See docs/protocol.md, "Event log identity".

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("log_epoch", sa.BigInteger, nullable=False, server_default="0"))
        batch.drop_constraint("uq_events_terminal_event", type_="unique")
        batch.create_unique_constraint("uq_events_terminal_log_event", ["terminal_id", "log_epoch", "terminal_event_id"])
    with op.batch_alter_table("terminals") as batch:
        batch.add_column(sa.Column("log_epoch", sa.BigInteger, nullable=False, server_default="0"))


def downgrade():
    with op.batch_alter_table("terminals") as batch:
        batch.drop_column("log_epoch")
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_terminal_log_event", type_="unique")
        batch.create_unique_constraint("uq_events_terminal_event", ["terminal_id", "terminal_event_id"])
        batch.drop_column("log_epoch")
