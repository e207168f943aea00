"""Each terminal's kind (native, zk, push) is stored: a PUSH device admitted at run time is known
as one after a restart, so admission lets it in without a secret, and a native terminal claiming
its id is refused. Rows stored before are native, except PUSH devices, known by their link.

Revision ID: 0006_terminal_kind
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_terminal_kind"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("terminals") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="native"))
    op.execute("UPDATE terminals SET kind = 'push' WHERE link LIKE 'push %'")


def downgrade():
    with op.batch_alter_table("terminals") as batch:
        batch.drop_column("kind")
