"""The events of closed weeks that name a user, copied into one unpartitioned table in (user, id)
order, read with the open weeks for a user's page (gateway/store/user_events.py): a user met
every week had events in every week's partition, and a page of them opened all of them. Closing
a week copies its events (the code's ``close_weeks``); a closed week's trigger now copies a late
event too; the weeks closed now are copied here. Replaces who each closed week holds (migration
0012), which no page reads any more. PostgreSQL only: SQLite has one unpartitioned table.

Revision ID: 0014_pg_events_by_user
Revises: 0013_process_reports
"""

from alembic import op
from sqlalchemy import text

from gateway.store.user_events import BY_USER, fill

revision = "0014_pg_events_by_user"
down_revision = "0013_process_reports"
branch_labels = None
depends_on = None

_COLUMNS = ["id", "terminal_id", "terminal_event_id", "log_epoch", "type", "code", "sub_code", "user_id", "occurred_ms", "recorded_ms", "detail"]


def upgrade():
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute(f"CREATE TABLE {BY_USER} (LIKE events INCLUDING DEFAULTS)")
    # Before the fill: its lock on the events table holds inserts back until this commits, and from
    # then on a late event in a closed week is copied by this trigger.
    op.execute(f"""CREATE OR REPLACE FUNCTION event_week_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_week_ids (name, max_id) VALUES (TG_TABLE_NAME, NEW.id)
        ON CONFLICT (name) DO UPDATE SET max_id = GREATEST(event_week_ids.max_id, EXCLUDED.max_id);
        IF NEW.user_id IS NOT NULL THEN
            INSERT INTO {BY_USER} ({", ".join(_COLUMNS)}) VALUES ({", ".join(f"NEW.{c}" for c in _COLUMNS)});
        END IF;
        RETURN NULL;
    END $$""")
    fill(conn, list(conn.execute(text("SELECT name FROM event_week_ids")).scalars()))
    op.execute("DROP TABLE event_week_users")
    op.execute("ALTER TABLE event_week_ids DROP COLUMN users_kept")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP TABLE {BY_USER}")
    # Migration 0012's bookkeeping, every closed week marked as keeping no users: 0012's code
    # reads such a week for every user until its next close fills it.
    op.execute("CREATE TABLE event_week_users (name TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (user_id, name))")
    op.execute("ALTER TABLE event_week_ids ADD COLUMN users_kept BOOLEAN NOT NULL DEFAULT false")
    op.execute("""CREATE OR REPLACE FUNCTION event_week_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_week_ids (name, max_id) VALUES (TG_TABLE_NAME, NEW.id)
        ON CONFLICT (name) DO UPDATE SET max_id = GREATEST(event_week_ids.max_id, EXCLUDED.max_id);
        IF NEW.user_id IS NOT NULL THEN
            INSERT INTO event_week_users (name, user_id) VALUES (TG_TABLE_NAME, NEW.user_id) ON CONFLICT DO NOTHING;
        END IF;
        RETURN NULL;
    END $$""")
