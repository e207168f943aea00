"""PUSH devices: the stored command queue, so a push is answered once its commands are durable and
a restart resumes them (docs/zk-push.md, "Commands").

Revision ID: 0009_push_commands
Revises: 0008_zk_serial
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_push_commands"
down_revision = "0008_zk_serial"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "push_commands",
        sa.Column("terminal_id", sa.BigInteger, primary_key=True),
        sa.Column("command_id", sa.BigInteger, primary_key=True),
        sa.Column("queued_ms", sa.BigInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("group_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("digest", sa.LargeBinary, nullable=True),
        sa.Column("written", sa.LargeBinary, nullable=True),
    )


def downgrade():
    op.drop_table("push_commands")
