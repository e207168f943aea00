"""What each of several gateway processes on one database alone knows (the links of the terminals
it serves, its metrics), reported every few seconds so that one process's API and /metrics cover
them all (gateway/process/reports.py).

Revision ID: 0013_process_reports
Revises: 0012_pg_event_week_users
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_process_reports"
down_revision = "0012_pg_event_week_users"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "process_reports",
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("reported_ms", sa.BigInteger, nullable=False),
        sa.Column("terminals", sa.Text, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
    )


def downgrade():
    op.drop_table("process_reports")
