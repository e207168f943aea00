"""The events that name a user, copied into one unpartitioned table in (user, id) order, where a
user's page is read (gateway/store/user_events.py): a user met every week had events in every
week's partition, and a page of them opened all of them. A statement trigger on the events table
copies what each insert stores, in the inserting transaction; every stored event naming a user
is copied now. Replaces who each closed week holds (migration 0012), which no page reads any more.
PostgreSQL only: SQLite has one unpartitioned table.

Revision ID: 0014_pg_events_by_user
Revises: 0013_process_reports
"""

from alembic import op

from gateway.store.user_events import BY_USER, refill

revision = "0014_pg_events_by_user"
down_revision = "0013_process_reports"
branch_labels = None
depends_on = None

_IDS_ONLY = """CREATE OR REPLACE FUNCTION event_week_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_week_ids (name, max_id) VALUES (TG_TABLE_NAME, NEW.id)
        ON CONFLICT (name) DO UPDATE SET max_id = GREATEST(event_week_ids.max_id, EXCLUDED.max_id);
        RETURN NULL;
    END $$"""


def upgrade():
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    op.execute(f"CREATE TABLE {BY_USER} (LIKE events INCLUDING DEFAULTS)")
    columns = "id, terminal_id, terminal_event_id, log_epoch, type, code, sub_code, user_id, occurred_ms, recorded_ms, detail"
    op.execute(f"""CREATE FUNCTION events_copied_by_user() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {BY_USER} ({columns}) SELECT {columns} FROM stored WHERE user_id IS NOT NULL;
        RETURN NULL;
    END $$""")
    # Its lock holds inserts back until this commits: none is stored between the fill and the trigger.
    op.execute("CREATE TRIGGER events_by_user AFTER INSERT ON events REFERENCING NEW TABLE AS stored"
               " FOR EACH STATEMENT EXECUTE FUNCTION events_copied_by_user()")
    refill(conn)
    op.execute(_IDS_ONLY)
    op.execute("DROP TABLE event_week_users")
    op.execute("ALTER TABLE event_week_ids DROP COLUMN users_kept")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_by_user ON events")
    op.execute("DROP FUNCTION events_copied_by_user()")
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
