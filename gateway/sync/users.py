"""The server's user directory: stored records, the changes feed they form, and the service API
for server-side edits.

Every committed change of a user takes the next key of the changes feed (``users.change_seq``,
ordered as gateway/store/order.py says: a counter row on SQLite, the transaction's own keys on
PostgreSQL, where change writers never wait for each other); a terminal's cursor is the highest
key it has applied. Deleting a user
on the server leaves a tombstone (``record`` is NULL) so the deletion reaches terminals too.
"""

from dataclasses import dataclass, replace

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Connection

from gateway.store.database import insert_ignoring_duplicates, upsert
from gateway.store.order import draw_keys, highest_visible, ordered
from gateway.store.schema import counters, users
from gateway.sync.changes import OPERATOR, SET, FieldChange, record_changes
from gateway.sync.history import API, USER, history_row, record_history
from gateway.sync.due import changed_users_of
from gateway.sync.syncmode import format_groups, parse_groups
from protocol.errors import MessageError
from protocol.records import Card, UserRecord, UserRecordWire

CHANGE_SEQ = "change_seq"


class UnknownUser(LookupError):
    def __init__(self, user_id: str):
        super().__init__(f"no user {user_id!r} on the server")


class UserExists(ValueError):
    def __init__(self, user_id: str):
        super().__init__(f"user {user_id!r} already exists on the server")


class NotHeld(ValueError):
    """An edit removes a card or an access group the user does not have (a typo, most likely)."""

    def __init__(self, user_id: str, member):
        what = f"card {member.type.name}:{member.data.hex()}" if isinstance(member, Card) else f"access group {member}"
        super().__init__(f"user {user_id!r} has no {what} to remove")


@dataclass(frozen=True)
class Members:
    """Members to add to and remove from a field that is a set (cards, access groups).

    They are applied to the stored value inside the edit's transaction, so two administrators
    who each add a card both keep theirs, and nobody has to send every card to change one.
    """

    add: tuple = ()
    remove: tuple = ()

    def applied(self, user_id: str, current: tuple) -> tuple:
        for member in self.remove:
            if member not in current:
                raise NotHeld(user_id, member)
        kept = tuple(member for member in current if member not in self.remove)
        return kept + tuple(dict.fromkeys(member for member in self.add if member not in kept))


def next_change_seq(conn: Connection, groups) -> int:
    """Take the next key of the changes feed inside the caller's transaction for a user of
    ``groups``; other gateway processes hear of the change once it committed."""
    changed_users_of(conn, groups)
    if ordered(conn):
        return draw_keys(conn, 1)[0]
    insert_ignoring_duplicates(conn, counters, [dict(name=CHANGE_SEQ, value=0)])
    stmt = update(counters).where(counters.c.name == CHANGE_SEQ).values(value=counters.c.value + 1)
    conn.execute(stmt)
    return conn.execute(select(counters.c.value).where(counters.c.name == CHANGE_SEQ)).scalar_one()


def last_change_seq(conn: Connection) -> int:
    """The highest change a follower may read now (below the watermark on PostgreSQL)."""
    if ordered(conn):
        return highest_visible(conn, users.c.change_seq)
    return conn.execute(select(counters.c.value).where(counters.c.name == CHANGE_SEQ)).scalar() or 0


def republish_users(conn: Connection) -> int:
    """Give every live user a new change, keeping their order, so every terminal gets them again.

    This is how a widened sync mode reaches users the old mode skipped. Cursors never move
    back: a push acknowledged at the same moment could otherwise move a cursor forward again,
    past the users it was meant to resend. Returns how many users were republished.
    """
    live = users.c.record.is_not(None)
    if ordered(conn):
        return _rekey_live_users(conn)
    base = last_change_seq(conn)
    top = conn.execute(select(func.max(users.c.change_seq)).where(live)).scalar()
    if top is None:
        return 0
    done = conn.execute(update(users).where(live).values(change_seq=users.c.change_seq + base))
    conn.execute(update(counters).where(counters.c.name == CHANGE_SEQ).values(value=base + top))
    return done.rowcount


def _rekey_live_users(conn: Connection) -> int:
    """PostgreSQL's republish: every live user takes a new key of this transaction, in their old order."""
    count = conn.execute(select(func.count()).where(users.c.record.is_not(None))).scalar()
    if not count:
        return 0
    first = draw_keys(conn, count)[0]
    conn.execute(text(
        "UPDATE users SET change_seq = :first + ranked.n FROM (SELECT user_id, row_number() OVER (ORDER BY change_seq) - 1 AS n"
        " FROM users WHERE record IS NOT NULL) AS ranked WHERE users.user_id = ranked.user_id"), dict(first=first))
    return count


def load_record(conn: Connection, user_id: str) -> UserRecord | None:
    """The server's record of a user, None when it has none (or only a tombstone)."""
    blob = conn.execute(select(users.c.record).where(users.c.user_id == user_id)).scalar()
    return UserRecordWire.parse(blob) if blob is not None else None


@dataclass(frozen=True)
class Stored:
    """A user's row as the server holds it: its record's wire bytes (None: a tombstone) and when
    it last changed."""

    record: bytes | None
    updated_ms: int


def stored_users(conn: Connection, user_ids: list[str]) -> dict[str, Stored]:
    """The rows of these users the server holds (tombstones included), read in a few queries
    rather than one per user: a pull or a comparison asks for hundreds at a time."""
    found = {}
    for i in range(0, len(user_ids), 500):
        stmt = select(users.c.user_id, users.c.record, users.c.updated_ms).where(users.c.user_id.in_(user_ids[i:i + 500]))
        found.update((row.user_id, Stored(row.record, row.updated_ms)) for row in conn.execute(stmt))
    return found


def store_record(conn: Connection, record: UserRecord, at_ms: int, holder_terminal: int | None = None) -> int:
    """Save a new version of a user as the next change, made at ``at_ms``; return its change sequence number."""
    seq = next_change_seq(conn, record.access_groups)
    values = dict(
        name=record.name,
        record=UserRecordWire.build(record),
        access_groups=format_groups(record.access_groups),
        change_seq=seq,
        holder_terminal=holder_terminal,
        updated_ms=at_ms,
    )
    upsert(conn, users, [dict(user_id=record.user_id, **values)], key=["user_id"], update=list(values))
    return seq


def store_tombstone(conn: Connection, user_id: str, at_ms: int) -> int:
    """The user's deletion as the next change: it goes where the user went (the row keeps its groups)."""
    groups = conn.execute(select(users.c.access_groups).where(users.c.user_id == user_id)).scalar() or ""
    seq = next_change_seq(conn, parse_groups(groups))
    conn.execute(
        update(users)
        .where(users.c.user_id == user_id)
        .values(record=None, change_seq=seq, holder_terminal=None, updated_ms=at_ms)
    )
    return seq


@dataclass(frozen=True)
class UserSummary:
    """What the API shows of a user: credentials as counts and types, never template bytes."""

    user_id: str
    name: str | None
    access_groups: tuple[int, ...]
    cards: tuple[str, ...]
    fingerprints: int
    faces: int
    has_pin: bool
    has_photo: bool
    disabled: bool
    validity: dict | None  # {"start": s, "end": s}, seconds since the epoch, as an edit gives it
    security_level: int | None
    auth_mode: int | None
    change_seq: int

    @classmethod
    def of(cls, record: UserRecord, change_seq: int) -> "UserSummary":
        return cls(
            user_id=record.user_id,
            name=record.name,
            access_groups=record.access_groups,
            cards=tuple(card.type.name for card in record.cards),
            fingerprints=len(record.fingerprints),
            faces=len(record.faces),
            has_pin=record.pin_hash is not None,
            has_photo=record.photo is not None,
            disabled=bool(record.disabled),
            validity=dict(start=record.validity[0], end=record.validity[1]) if record.validity else None,
            security_level=record.security_level,
            auth_mode=record.auth_mode,
            change_seq=change_seq,
        )


class UserDirectory:
    """Server-side user changes (create, edit, delete), each one a change in the feed.

    Methods return Deferreds (the work runs on the writer thread) and call ``on_change(groups)``
    after the commit, with the changed user's access groups, so pushes to the terminals it goes
    to start at once.
    """

    def __init__(self, db, clock, on_change):
        self._db = db
        self._clock = clock
        self._on_change = on_change

    def create(self, record: UserRecord):
        return self._db.write(create_user, record, self._now_ms()).addCallback(self._changed)

    def edit(self, user_id: str, **fields):
        return self._db.write(edit_user, user_id, fields, self._now_ms()).addCallback(self._changed)

    def delete(self, user_id: str):
        return self._db.write(delete_user, user_id, self._now_ms()).addCallback(self._changed)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _changed(self, changed: UserRecord):
        self._on_change(frozenset(changed.access_groups))
        return changed


def create_user(conn: Connection, record: UserRecord, at_ms: int) -> UserRecord:
    record.validate()
    if load_record(conn, record.user_id) is not None:
        raise UserExists(record.user_id)
    seq = store_record(conn, record, at_ms)
    record_history(conn, [history_row(record.user_id, API, record_changes(None, record, SET, OPERATOR), at_ms, change_seq=seq)])
    return record


def edit_user(conn: Connection, user_id: str, fields: dict, at_ms: int) -> UserRecord:
    """Set the given fields (the server is authoritative: they replace what it had); a field
    given as ``Members`` gains and loses just those members."""
    current = load_record(conn, user_id)
    if current is None:
        raise UnknownUser(user_id)
    fields = {name: value.applied(user_id, getattr(current, name, ())) if isinstance(value, Members) else value
              for name, value in fields.items()}
    try:
        edited = replace(current, **fields)
    except TypeError as exc:
        raise MessageError(str(exc)) from None
    if edited.validate() == current:  # a card it holds added again, a name set to itself: no version to push
        return current
    seq = store_record(conn, edited, at_ms)
    record_history(conn, [history_row(user_id, API, record_changes(current, edited, SET, OPERATOR), at_ms, change_seq=seq)])
    return edited


def delete_user(conn: Connection, user_id: str, at_ms: int) -> UserRecord:
    """Delete a user on the server; the record it had."""
    deleted = load_record(conn, user_id)
    if deleted is None:
        raise UnknownUser(user_id)
    seq = store_tombstone(conn, user_id, at_ms)
    record_history(conn, [history_row(user_id, API, [FieldChange(USER, SET, OPERATOR, None, "deleted")], at_ms, change_seq=seq)])
    return deleted

