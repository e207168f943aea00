"""Initial schema: users with the changes feed, terminals with cursors, events, pulls, settings.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade():
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), index=True),
        sa.Column("record", sa.LargeBinary, nullable=True),
        sa.Column("access_groups", sa.String(200), nullable=False),
        sa.Column("change_seq", sa.BigInteger, nullable=False, index=True),
        sa.Column("holder_terminal", sa.BigInteger, nullable=True),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "terminals",
        sa.Column("terminal_id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("admission", sa.String(16), nullable=False),
        sa.Column("secret", sa.String(200), nullable=True),
        sa.Column("access_groups", sa.String(200), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("firmware", sa.String(100), nullable=False),
        sa.Column("link", sa.String(200), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
        sa.Column("cursor", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", _BIGINT_ID, primary_key=True, autoincrement=True),
        sa.Column("terminal_id", sa.BigInteger, nullable=True),
        sa.Column("terminal_event_id", sa.BigInteger, nullable=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("code", sa.Integer, nullable=True),
        sa.Column("sub_code", sa.Integer, nullable=True),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("occurred_ms", sa.BigInteger, nullable=False),
        sa.Column("recorded_ms", sa.BigInteger, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.UniqueConstraint("terminal_id", "terminal_event_id", name="uq_events_terminal_event"),
    )
    op.create_index("ix_events_type_id", "events", ["type", "id"])
    op.create_index("ix_events_user_id", "events", ["user_id", "id"])
    op.create_table(
        "pending_pulls",
        sa.Column("terminal_id", sa.BigInteger, primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("since_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade():
    for table in ("counters", "settings", "pending_pulls", "events", "terminals", "users"):
        op.drop_table(table)
