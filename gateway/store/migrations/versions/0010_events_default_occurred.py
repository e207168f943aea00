"""An index on the default partition's occurred time (PostgreSQL): making a week moves the rows
of its time out of ``events_default`` (gateway/store/partitions.py, ``add_week``) inside the
writer's group commit, and without the index that DELETE read the whole default partition, a
migrated site's old log included (benchmarks/week_made.py: finding a week's rows among 2 M old
events 120-200 ms without it, 0.3 ms with it).

Revision ID: 0010_events_default_occurred
Revises: 0009_push_commands
"""

from alembic import op

from gateway.store.partitions import DEFAULT

revision = "0010_events_default_occurred"
down_revision = "0009_push_commands"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX ix_{DEFAULT}_occurred_ms ON {DEFAULT} (occurred_ms)")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX ix_{DEFAULT}_occurred_ms")
