"""Order without a global lock (gateway/store/order.py): on PostgreSQL every event id is the
writing transaction's key, so the id column's own sequence default goes, and an insert that
forgets the key fails instead of slipping an id below a follower's position. SQLite keeps its
counter. The ``counters`` row stays: SQLite's change counter.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN id DROP DEFAULT")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE events ALTER COLUMN id SET DEFAULT nextval('events_id_seq')")
