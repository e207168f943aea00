"""The events table's time partitions on PostgreSQL: a week of occurred time each, made ahead of
time, and dropped whole when retention lets a week go.

Dropping a week is a metadata operation: no row is read, no dead tuple left for vacuum, however
many million events the week held; only the copies of its events that name a user, kept apart
for a user's page (gateway/store/user_events.py), are deleted as rows, in the same transaction.
Rows whose time no weekly partition covers (a terminal's clock far off, a backlog older than
the first partition, a migrated site's old log) go to ``events_default``; retention removes
those row by row as it did before partitions. A week made later takes its rows out of the
default partition as it is attached, so none is ever refused.

Every statement here takes a lock on the events table that ingest also needs; ``lock_timeout``
keeps each wait short (the next hourly run tries again), so a long query never holds ingest up
behind maintenance. SQLite has one file and no partitions: nothing here applies to it.
docs/architecture.md, "A year of logs".

Closed weeks: the API orders events by id, which no time bound prunes, so a query would plan and
open every week of a year. Once a week is over (and the one after it, where a late terminal's
events still go), the hourly run closes it: a trigger on it and the highest id it holds in
``WEEK_IDS`` (migration 0011), both made while no insert into it is in flight. An event
arriving in a closed week later raises that figure in its own transaction. ``WEEK_IDS`` lists
the open partitions too, their figure NULL (migration 0015), each added and removed in the
transaction that attaches or drops it, and mended from the catalog by the hourly run
(``list_attached``): a page reads which partitions there are from that small table, not from the
catalog, whose read grew with every week kept (0.13 against 0.03 ms at 56). A page then opens
the open weeks and the closed ones whose highest id it may need (``id_window``, ``union_of``).
Closing a week also copies its events that name a user (gateway/store/user_events.py), and its
trigger copies a late one: a user's page, whose events may lie in every week of a year, reads
the open weeks and that copy (``closed_time``), whose copies of a week dropped here go in the
same transaction.
"""

import functools
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import MetaData, and_, false, not_, select, text, true, union_all

from gateway.store.order import WATERMARK
from gateway.store.schema import events
from gateway.store.user_events import copy_partition, uncopy_week

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
WEEKS_AHEAD = 2  # made ahead of time, so a clock a little fast still finds its week
DEFAULT = "events_default"
WEEK_IDS = "event_week_ids"  # every partition, with its highest id once closed; not in schema.py (migrations 0011, 0015)
OPEN_WEEKS = 2  # this week and the last stay open: most events arrive there, a few late ones after the week
LOCK_TIMEOUT = "2s"
_MAINTENANCE_LOCK = 0x6576_7065  # one process at a time makes or drops weeks ("evpe")


@dataclass(frozen=True, order=True)
class Week:
    start_ms: int  # inclusive
    end_ms: int  # exclusive

    @property
    def name(self) -> str:
        return f"events_w{self.start_ms // WEEK_MS}"


def rows_by_row(conn):
    """The table retention removes from row by row: on PostgreSQL only the default partition."""
    return _partition(DEFAULT) if partitioned(conn) else events


def partitioned(conn) -> bool:
    return conn.dialect.name == "postgresql"


def week_of(at_ms: int) -> Week:
    start = at_ms - at_ms % WEEK_MS
    return Week(start, start + WEEK_MS)


def _week_named(name: str) -> Week:
    return week_of(int(name.removeprefix("events_w")) * WEEK_MS)


def weeks(conn) -> list[Week]:
    """The weekly partitions there are, oldest first (each named after its week's number)."""
    names = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass AND c.relname <> :default"), dict(default=DEFAULT)).scalars()
    return sorted(_week_named(name) for name in names)


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
        list_attached(conn)
        have = {w.name for w in weeks(conn)}
        made = []
        for n in range(ahead + 1):
            week = week_of(now_ms + n * WEEK_MS)
            if week.name not in have:
                add_week(conn, week)
                made.append(week.name)
    return made


def add_week(conn, week: Week) -> None:
    """Attach ``week``, moving in what the default partition holds of it."""
    week_table(conn, week)
    attach_week(conn, week)


def week_table(conn, week: Week) -> None:
    """The table of ``week``, not attached yet, holding what the default partition held of that
    week (attaching refuses while the default holds a row of the new range)."""
    columns = ", ".join(c.name for c in events.columns)  # by name: a migrated default partition has its own order
    conn.execute(text(f"CREATE TABLE {week.name} (LIKE events INCLUDING DEFAULTS)"))
    conn.execute(text(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE occurred_ms >= :start AND occurred_ms < :end RETURNING {columns})"
        f" INSERT INTO {week.name} ({columns}) SELECT {columns} FROM moved"), dict(start=week.start_ms, end=week.end_ms))


def list_attached(conn) -> None:
    """Make ``WEEK_IDS`` list what the catalog says is attached, once an hour with the weeks made:
    a week attached by a gateway of a version before migration 0015 (left running through an
    upgrade) is listed open, a row whose partition is gone (dropped by hand) goes; a page trusts
    the list."""
    conn.execute(text(f"INSERT INTO {WEEK_IDS} (name, max_id) SELECT i.inhrelid::regclass::text, NULL FROM pg_inherits i"
                      " WHERE i.inhparent = 'events'::regclass ON CONFLICT (name) DO NOTHING"))
    conn.execute(text(f"DELETE FROM {WEEK_IDS} w WHERE NOT EXISTS (SELECT FROM pg_inherits i"
                      " WHERE i.inhparent = 'events'::regclass AND i.inhrelid::regclass::text = w.name)"))


def attach_week(conn, week: Week) -> None:
    """Attach the table ``week.name`` as that week's partition, listed open in ``WEEK_IDS``."""
    conn.execute(text(f"ALTER TABLE events ATTACH PARTITION {week.name} FOR VALUES FROM ({week.start_ms}) TO ({week.end_ms})"))
    conn.execute(text(f"INSERT INTO {WEEK_IDS} (name, max_id) VALUES (:name, NULL)"), dict(name=week.name))


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
        uncopy_week(conn, week.start_ms, week.end_ms)  # before the drop: its lock on the events table, which ingest waits for, comes last
        conn.execute(text(f"DROP TABLE {week.name}"))
        conn.execute(text(f"DELETE FROM {WEEK_IDS} WHERE name = :name"), dict(name=week.name))
    return True


def close_weeks(conn, now_ms: int) -> list[str]:
    """Close the default partition and every week ended before the open ones (see "Closed weeks"
    above), each week's events naming a user copied; the names closed. All in the caller's
    transaction: none is closed unless all are, and no event is copied twice or missed."""
    if not partitioned(conn):
        return []
    open_from = week_of(now_ms).start_ms - (OPEN_WEEKS - 1) * WEEK_MS
    with _maintenance(conn):
        closed = set(conn.execute(text(f"SELECT name FROM {WEEK_IDS} WHERE max_id IS NOT NULL")).scalars())
        names = [DEFAULT] + [w.name for w in weeks(conn) if w.end_ms <= open_from]
        todo = [n for n in names if n not in closed]
        for name in todo:
            # The trigger's lock waits for the inserts in flight and holds new ones until commit, so
            # the figures read next are those of every event there, and the trigger sees every later one.
            conn.execute(text(f"CREATE TRIGGER {name}_ids AFTER INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION event_week_inserted()"))
            conn.execute(text(f"INSERT INTO {WEEK_IDS} (name, max_id) SELECT :name, coalesce(max(id), 0) FROM {name}"
                              " ON CONFLICT (name) DO UPDATE SET max_id = EXCLUDED.max_id"), dict(name=name))
            copy_partition(conn, name)
    return todo


def week_ids(conn) -> tuple[int, dict[str, int | None]]:
    """The watermark (gateway/store/order.py) and each partition's highest id if it is closed, None
    while it is open, in one snapshot: every event below that watermark was committed before it,
    and with it its week's figure. No partition is opened, nor the catalog read."""
    rows = conn.execute(text(f"SELECT {WATERMARK.name} AS mark, name, max_id FROM {WEEK_IDS}")).all()
    return rows[0].mark, {row.name: row.max_id for row in rows}  # the default partition is always there


def closed_time(occurred, ids: dict[str, int | None]):
    """The condition that an ``occurred`` time lies in a partition closed in ``ids``: outside the
    open weeks, the default partition closed. What a user's page reads of the copy beside the
    open partitions: a week closed after ``ids`` were read is read from its partition alone, and
    a row a week made later took out of the closed default partition from the copy alone."""
    if ids[DEFAULT] is None:  # closed with the first weeks (``close_weeks``): none is closed yet
        return false()
    open_weeks = _spans(_week_named(name) for name, highest in ids.items() if highest is None)
    return and_(true(), *(not_(and_(occurred >= start, occurred < end)) for start, end in open_weeks))


def _spans(some_weeks) -> list[tuple[int, int]]:
    """The weeks as runs of adjacent ones, each ``(start, end)``: one condition a run."""
    spans: list[tuple[int, int]] = []
    for week in sorted(some_weeks):
        if spans and spans[-1][1] == week.start_ms:
            spans[-1] = (spans[-1][0], week.end_ms)
        else:
            spans.append((week.start_ms, week.end_ms))
    return spans


def id_window(ids: dict[str, int | None], above: int | None) -> frozenset[str]:
    """The partitions that may hold an event id above ``above`` (None: the open ones only)."""
    return frozenset(name for name, highest in ids.items() if highest is None or (above is not None and highest > above))


def newest_closed(ids: dict[str, int | None], searched: frozenset[str], count: int) -> frozenset[str]:
    """The ``count`` closed partitions not ``searched`` with the highest ids: where a newest-first
    page not yet full goes on."""
    closed = sorted(((highest, name) for name, highest in ids.items() if highest is not None and name not in searched), reverse=True)
    return frozenset(name for _, name in closed[:count])


@functools.lru_cache(maxsize=256)  # built once per set: SQLAlchemy's columns of a union cost more than the query
def union_of(names: frozenset[str]):
    """The partitions ``names`` as one table named ``events``, to query in place of the whole: the
    planner opens those alone and plans each as it would on its own (a time condition selecting
    them would be estimated as selective on a week not analyzed yet, and read the week whole)."""
    parts = [select(_partition(name)) for name in sorted(names)]
    return (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("events")


@functools.cache
def _partition(name: str):
    return events.to_metadata(MetaData(), name=name)
