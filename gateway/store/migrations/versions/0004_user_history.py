"""Each user's history: a row per version of a user and per decision that made none, with its
field changes and the rule behind each (gateway/sync/history.py).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "user_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("change_seq", sa.BigInteger, nullable=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("terminal_id", sa.BigInteger, nullable=True),
        sa.Column("changes", sa.Text, nullable=False),
    )
    op.create_index("ix_user_history_user_id", "user_history", ["user_id", "id"])


def downgrade():
    op.drop_index("ix_user_history_user_id", table_name="user_history")
    op.drop_table("user_history")
