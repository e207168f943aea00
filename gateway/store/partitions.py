"""The events table's time partitions on PostgreSQL: a week of occurred time each, made ahead of
time, and dropped whole when retention lets a week go.

Dropping a week is a metadata operation: no row is read, no dead tuple left for vacuum, however
many million events the week held. Rows whose time no weekly partition covers (a terminal's clock
far off, a backlog older than the first partition, a migrated site's old log) go to
``events_default``; retention removes those row by row as it did before partitions. A week made
later takes its rows out of the default partition as it is attached, so none is ever refused.

Every statement here takes a lock on the events table that ingest also needs; ``lock_timeout``
keeps each wait short (the next hourly run tries again), so a long query never holds ingest up
behind maintenance. SQLite has one file and no partitions: nothing here applies to it.
docs/architecture.md, "A year of logs".
"""

from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import MetaData, text

from gateway.store.schema import events

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
WEEKS_AHEAD = 2  # made ahead of time, so a clock a little fast still finds its week
DEFAULT = "events_default"
LOCK_TIMEOUT = "2s"
_MAINTENANCE_LOCK = 0x6576_7065  # one process at a time makes or drops weeks ("evpe")


@dataclass(frozen=True, order=True)
class Week:
    start_ms: int  # inclusive
    end_ms: int  # exclusive

    @property
    def name(self) -> str:
        return f"events_w{self.start_ms // WEEK_MS}"


_DEFAULT_TABLE = events.to_metadata(MetaData(), name=DEFAULT)


def rows_by_row(conn):
    """The table retention removes from row by row: on PostgreSQL only the default partition."""
    return _DEFAULT_TABLE if partitioned(conn) else events


def partitioned(conn) -> bool:
    return conn.dialect.name == "postgresql"


def week_of(at_ms: int) -> Week:
    start = at_ms - at_ms % WEEK_MS
    return Week(start, start + WEEK_MS)


def weeks(conn) -> list[Week]:
    """The weekly partitions there are, oldest first (each named after its week's number)."""
    names = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass AND c.relname <> :default"), dict(default=DEFAULT)).scalars()
    return sorted(week_of(int(name.removeprefix("events_w")) * WEEK_MS) for name in names)


@contextmanager
def _maintenance(conn):
    """One process at a time, waiting at most ``LOCK_TIMEOUT`` for each lock; the writes sharing
    this group commit (gateway/store/database.py) wait as long as they would have after it."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), dict(key=_MAINTENANCE_LOCK))
    yield
    conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))


def make_weeks(conn, now_ms: int, ahead: int = WEEKS_AHEAD) -> list[str]:
    """Make this week's partition and ``ahead`` more, each with the rows of its time the default
    partition holds; the names made."""
    if not partitioned(conn):
        return []
    with _maintenance(conn):
        have = {w.name for w in weeks(conn)}
        made = []
        for n in range(ahead + 1):
            week = week_of(now_ms + n * WEEK_MS)
            if week.name not in have:
                add_week(conn, week)
                made.append(week.name)
    return made


def add_week(conn, week: Week) -> None:
    """Attach ``week``, moving in what the default partition holds of it (attaching refuses while
    the default holds a row of the new range)."""
    columns = ", ".join(c.name for c in events.columns)  # by name: a migrated default partition has its own order
    conn.execute(text(f"CREATE TABLE {week.name} (LIKE events INCLUDING DEFAULTS)"))
    conn.execute(text(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE occurred_ms >= :start AND occurred_ms < :end RETURNING {columns})"
        f" INSERT INTO {week.name} ({columns}) SELECT {columns} FROM moved"), dict(start=week.start_ms, end=week.end_ms))
    conn.execute(text(f"ALTER TABLE events ATTACH PARTITION {week.name} FOR VALUES FROM ({week.start_ms}) TO ({week.end_ms})"))


def weeks_before(conn, cutoff_ms: int) -> list[Week]:
    """The weeks whose every moment is before ``cutoff_ms``: each goes whole once everything in it
    was also recorded before the cutoff (``drop_week``), else its old events go row by row."""
    return [w for w in weeks(conn) if w.end_ms <= cutoff_ms] if partitioned(conn) else []


@dataclass(frozen=True)
class Held:
    """What a week holds: how many events, and when the last of them was recorded."""
    count: int
    last_recorded_ms: int | None  # None when empty

    def recorded_before(self, cutoff_ms: int) -> bool:
        return self.last_recorded_ms is None or self.last_recorded_ms < cutoff_ms


def week_held(conn, week: Week, lock: str = "ACCESS SHARE") -> Held | None:
    """What ``week`` holds, None when another process dropped it; the week is locked in ``lock``
    mode first, so it holds the same until this transaction ends (ACCESS SHARE: not dropped;
    SHARE: nothing arrives either)."""
    if not _exists(conn, week):
        return None
    conn.execute(text(f"LOCK TABLE {week.name} IN {lock} MODE"))
    count, last = conn.execute(text(f"SELECT count(*), max(recorded_ms) FROM {week.name}")).one()
    return Held(count, last)


def _exists(conn, week: Week) -> bool:
    return conn.execute(text("SELECT to_regclass(:name) IS NOT NULL"), dict(name=week.name)).scalar_one()


def drop_week(conn, week: Week, cutoff_ms: int, held: int) -> bool:
    """Drop ``week`` if it still holds ``held`` events (what was exported or counted), every one
    recorded before ``cutoff_ms``; whether it went. Not when another process dropped it first, an
    event arrived since (the next run exports it), or one was recorded since the cutoff: a
    backlog uploaded late, or a clock behind, puts fresh events in an old week, and those stay."""
    with _maintenance(conn):
        now = week_held(conn, week, lock="SHARE")
        if now is None or now.count != held or not now.recorded_before(cutoff_ms):
            return False
        conn.execute(text(f"DROP TABLE {week.name}"))
    return True
