"""ZK devices: the serial number of the unit at each device's place, so a replaced unit is
recognised after a restart too (docs/zk.md, "Reconciliation").

Revision ID: 0008_zk_serial
Revises: 0007_pg_event_partitions
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_zk_serial"
down_revision = "0007_pg_event_partitions"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "zk_devices",
        sa.Column("terminal_id", sa.BigInteger, primary_key=True),
        sa.Column("serial", sa.String(64), nullable=False),
    )


def downgrade():
    op.drop_table("zk_devices")
