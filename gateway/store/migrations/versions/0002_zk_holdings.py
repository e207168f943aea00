"""ZK devices: the copy of each person the server has seen on each device, and the attendance
records already stored (docs/zk.md, "Gateway mapping").

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "zk_holdings",
        sa.Column("terminal_id", sa.BigInteger, primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("digest", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "zk_attendance",
        sa.Column("terminal_id", sa.BigInteger, primary_key=True),
        sa.Column("stored", sa.BigInteger, nullable=False),
        sa.Column("last", sa.String(200), nullable=True),
    )


def downgrade():
    op.drop_table("zk_attendance")
    op.drop_table("zk_holdings")
