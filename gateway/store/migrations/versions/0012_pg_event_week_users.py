"""Who each closed week's partition holds events of (gateway/store/partitions.py, "Closed
weeks"): a user's page then opens the open weeks and the closed ones that hold that user, not
every week of a year. Filled when a week is closed; a late event in a closed week adds its user
through the same trigger that raises the week's highest id, in the inserting transaction.
PostgreSQL only: SQLite has no partitions.

Revision ID: 0012_pg_event_week_users
Revises: 0011_pg_event_week_ids
"""

from alembic import op
from sqlalchemy import text

revision = "0012_pg_event_week_users"
down_revision = "0011_pg_event_week_ids"
branch_labels = None
depends_on = None


def upgrade():
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE event_week_users (name TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (user_id, name))")
    op.execute("""CREATE OR REPLACE FUNCTION event_week_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_week_ids (name, max_id) VALUES (TG_TABLE_NAME, NEW.id)
        ON CONFLICT (name) DO UPDATE SET max_id = GREATEST(event_week_ids.max_id, EXCLUDED.max_id);
        IF NEW.user_id IS NOT NULL THEN
            INSERT INTO event_week_users (name, user_id) VALUES (TG_TABLE_NAME, NEW.user_id) ON CONFLICT DO NOTHING;
        END IF;
        RETURN NULL;
    END $$""")
    # Which closed weeks have their users kept: one closed by a process of an older version (a
    # rolling upgrade) has not, and holds everyone until the next close fills it.
    op.execute("ALTER TABLE event_week_ids ADD COLUMN users_kept BOOLEAN NOT NULL DEFAULT false")
    for name in conn.execute(text("SELECT name FROM event_week_ids")).scalars():  # the weeks closed already
        # Held against inserts meanwhile: a late event committed after the read would find its row not there yet.
        conn.execute(text(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"))
        conn.execute(text(f"INSERT INTO event_week_users (name, user_id) SELECT DISTINCT :name, user_id FROM {name}"
                          " WHERE user_id IS NOT NULL"), dict(name=name))
        conn.execute(text("UPDATE event_week_ids SET users_kept = true WHERE name = :name"), dict(name=name))


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""CREATE OR REPLACE FUNCTION event_week_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_week_ids (name, max_id) VALUES (TG_TABLE_NAME, NEW.id)
        ON CONFLICT (name) DO UPDATE SET max_id = GREATEST(event_week_ids.max_id, EXCLUDED.max_id);
        RETURN NULL;
    END $$""")
    op.execute("DROP TABLE event_week_users")
    op.execute("ALTER TABLE event_week_ids DROP COLUMN users_kept")
