"""Read-side queries of the HTTP API: events filtered and paged by id, users searched and paged.

They run on reader threads (``Database.read``), so the API never waits behind the event writer.
Paging is by key (event id, user id), not by offset: a page stays right while events keep
arriving, and costs the same deep in the log as at its head.
"""

from dataclasses import asdict, dataclass

from sqlalchemy import distinct, func, select, union_all
from sqlalchemy.engine import Connection

from gateway.sync.due import RecentChanges, read_recent_changes
from gateway.sync.monitor import SYNC_EVENT_TYPES, origin_of
from gateway.store.order import highest_visible, visible
from gateway.store.partitions import closed_time, id_window, newest_closed, partitioned, union_of, week_ids
from gateway.store.schema import events, pending_pulls, push_commands, users
from gateway.store.user_events import copied
from gateway.sync.users import UserSummary, last_change_seq
from protocol.records import UserRecordWire


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants; an empty field matches everything."""

    types: tuple[str, ...] = ()
    terminal_id: int | None = None
    user_id: str | None = None
    since_ms: int | None = None  # occurred at or after
    until_ms: int | None = None  # occurred before

    def conditions(self, c=events.c) -> list:
        """The filter on the columns ``c`` (the events table's, or those of some of its weeks)."""
        found = []
        if self.types:
            found.append(c.type.in_(self.types))
        if self.terminal_id is not None:
            found.append(c.terminal_id == self.terminal_id)
        if self.user_id is not None:
            found.append(c.user_id == self.user_id)
        if self.since_ms is not None:
            found.append(c.occurred_ms >= self.since_ms)
        if self.until_ms is not None:
            found.append(c.occurred_ms < self.until_ms)
        return found

    def matches(self, event: dict) -> bool:
        """The same test as ``conditions``, for events already read (the live stream)."""
        return (
            (not self.types or event["type"] in self.types)
            and (self.terminal_id is None or event["terminal_id"] == self.terminal_id)
            and (self.user_id is None or event["user_id"] == self.user_id)
            and (self.since_ms is None or event["occurred_ms"] >= self.since_ms)
            and (self.until_ms is None or event["occurred_ms"] < self.until_ms)
        )


EVERYTHING = EventFilter()


def read_events(conn: Connection, flt: EventFilter, after: int | None, before: int | None, limit: int) -> tuple[list[dict], bool]:
    """Up to ``limit`` events and whether more lie beyond them.

    With ``after``: the oldest events above it, oldest first (how a log is followed). Without:
    the newest events below ``before`` (or the newest of all), newest first (how one pages back).
    """
    if partitioned(conn):
        rows = (_by_week if flt.user_id is None else _by_user)(conn, flt, after, before, limit)
    else:
        rows = conn.execute(_page(events, visible(conn, events.c.id), flt, after, before, limit)).mappings().all()
    return [_event(row) for row in rows[:limit]], len(rows) > limit


def _page(table, visible_only: list, flt: EventFilter, after: int | None, before: int | None, limit: int):
    """The page's query on ``table`` (the events table, or some of its week partitions); a late
    commit is never paged past (``visible_only``)."""
    c = table.c
    stmt = select(table).where(*flt.conditions(c), *visible_only)
    if after is not None:
        stmt = stmt.where(c.id > after).order_by(c.id)
    else:
        stmt = stmt.order_by(c.id.desc())
    if before is not None:
        stmt = stmt.where(c.id < before)
    return stmt.limit(limit + 1)


WIDER = 4  # closed weeks a newest-first page not yet full reads next, before it reads them all


def _by_week(conn: Connection, flt: EventFilter, after: int | None, before: int | None, limit: int) -> list:
    """The page's rows, read from the week partitions that can hold them (partitions.py, "Closed
    weeks"), merged by id: a follower's from those with ids above ``after``; a newest-first page
    from the open weeks, then from the closed ones with ids above the page's last, and while it is
    not full from the ``WIDER`` closed ones with the highest ids, then from all. Every read keeps
    below the watermark read with the weeks' figures, so each event it may return was committed,
    with its week's figure, before those were read."""
    watermark, ids = week_ids(conn)
    whole = ids.keys()  # what reading every partition in ``ids`` means: the whole table
    searched: frozenset[str] = frozenset()
    rows: list = []
    wanted = id_window(ids, after)
    while wanted - searched:
        if wanted == whole:  # the whole table, planned as such: cheaper than all weeks by name
            return conn.execute(_page(events, [events.c.id < watermark], flt, after, before, limit)).mappings().all()
        table = union_of(wanted - searched)
        rows += conn.execute(_page(table, [table.c.id < watermark], flt, after, before, limit)).mappings().all()
        rows = sorted(rows, key=lambda row: row["id"], reverse=after is None)[:limit + 1]
        searched |= wanted
        if after is not None:
            break  # every partition with an id above ``after`` was read
        if len(rows) > limit:
            wanted = id_window(ids, rows[-1]["id"])
        else:  # a few weeks back, then all of them
            wanted = searched | (newest_closed(ids, searched, WIDER) if len(searched) < len(ids) / 2 else frozenset(ids))
    return rows


def _by_user(conn: Connection, flt: EventFilter, after: int | None, before: int | None, limit: int) -> list:
    """A user's page on PostgreSQL, one statement: the open weeks' partitions and the copy of the
    closed weeks' events naming a user (gateway/store/user_events.py), each side's page merged by
    id. Which weeks are open is read with the watermark, in one snapshot, and the copy is read for
    the time of the partitions closed then (``closed_time``): a week closed since is still read
    from its partition alone, so no event is read twice or missed, and every read keeps below
    that watermark as ``_by_week``'s do."""
    watermark, ids = week_ids(conn)
    copy = copied()
    sides = [_page(copy, [copy.c.id < watermark, closed_time(copy.c.occurred_ms, ids)], flt, after, before, limit)]
    if opened := id_window(ids, None):
        table = union_of(opened)
        sides.append(_page(table, [table.c.id < watermark], flt, after, before, limit))
    both = union_all(*(select(side.subquery()) for side in sides)).subquery("events")
    return conn.execute(select(both).order_by(both.c.id if after is not None else both.c.id.desc()).limit(limit + 1)).mappings().all()


def last_event_id(conn: Connection) -> int:
    """The highest event id a follower may read now (below the watermark on PostgreSQL)."""
    return highest_visible(conn, events.c.id)


def _event(row) -> dict:
    event = dict(row)
    event["sync"] = event["type"] in SYNC_EVENT_TYPES
    event["origin"] = origin_of(event["type"], event["sub_code"])
    return event


def read_users(conn: Connection, search: str | None, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """Users (not deletion tombstones) in user id order, whose id or name contains ``search``."""
    stmt = select(users.c.record, users.c.change_seq, users.c.updated_ms).where(users.c.record.is_not(None))
    if search:
        stmt = stmt.where(users.c.user_id.icontains(search, autoescape=True) | users.c.name.icontains(search, autoescape=True))
    if after is not None:
        stmt = stmt.where(users.c.user_id > after)
    rows = conn.execute(stmt.order_by(users.c.user_id).limit(limit + 1)).all()
    return [_user(row) for row in rows[:limit]], len(rows) > limit


def read_user(conn: Connection, user_id: str) -> dict | None:
    stmt = select(users.c.record, users.c.change_seq, users.c.updated_ms).where(
        users.c.user_id == user_id, users.c.record.is_not(None)
    )
    row = conn.execute(stmt).first()
    return _user(row) if row is not None else None


def _user(row) -> dict:
    summary = asdict(UserSummary.of(UserRecordWire.parse(row.record), row.change_seq))
    summary["updated_ms"] = row.updated_ms
    return summary


SyncState = tuple[int, dict[int, int], dict[int, int], RecentChanges]


def sync_state(conn: Connection) -> SyncState:
    """The last change sequence number, per terminal the pulls owed (keypad changes not merged
    yet), per PUSH device the changes stored as commands it has not answered yet
    (gateway/push/queue.py), and the newest changes, which say how many after a terminal's cursor
    are meant for it: together what a terminal's lag counts."""
    seq = last_change_seq(conn)
    return seq, dict(conn.execute(_PULLS_OWED).all()), dict(conn.execute(_UNANSWERED).all()), read_recent_changes(conn, seq)


# Built once: building a statement and its cache key cost more than SQLite running it.
_PULLS_OWED = select(pending_pulls.c.terminal_id, func.count()).group_by(pending_pulls.c.terminal_id)
_UNANSWERED = select(push_commands.c.terminal_id, func.count(distinct(push_commands.c.group_id))).group_by(push_commands.c.terminal_id)
