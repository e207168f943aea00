"""The highest event id each closed week's partition holds (gateway/store/partitions.py, "Closed
weeks"): the API's event queries, all ordered by id, then open only the partitions that can hold
the ids a page needs, not every week of a year. A closed week's trigger raises its figure when a
late event still arrives in it, in the inserting transaction, so no reader misses that event.
PostgreSQL only: SQLite has no partitions.

Revision ID: 0011_pg_event_week_ids
Revises: 0010_events_default_occurred
"""

from alembic import op

revision = "0011_pg_event_week_ids"
down_revision = "0010_events_default_occurred"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE event_week_ids (name TEXT PRIMARY KEY, max_id BIGINT NOT NULL)")
    op.execute("""CREATE FUNCTION event_week_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO event_week_ids (name, max_id) VALUES (TG_TABLE_NAME, NEW.id)
        ON CONFLICT (name) DO UPDATE SET max_id = GREATEST(event_week_ids.max_id, EXCLUDED.max_id);
        RETURN NULL;
    END $$""")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TABLE event_week_ids")  # the closed weeks' triggers go with their function
    op.execute("DROP FUNCTION event_week_inserted() CASCADE")
