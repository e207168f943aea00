"""The server database's tables (SQLAlchemy Core): users and their changes feed, terminals and
their cursors, the event log, each user's history, pulls still owed, settings.

Users are stored in their wire encoding (``protocol.records.UserRecordWire``): the merge works
on decoded records, and a push to a terminal is a concatenation of stored bytes. Columns beside
the blob exist only for searching and for the changes feed. See docs/architecture.md.
"""

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("name", String(200), index=True),
    Column("record", LargeBinary, nullable=True),  # None once deleted on the server (a tombstone)
    Column("access_groups", String(200), nullable=False, default=""),  # ",1,5," for targeting
    Column("change_seq", BigInteger, nullable=False, index=True),
    # The terminal whose copy already equals this version: the feed skips it once.
    Column("holder_terminal", BigInteger, nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
)

terminals = Table(
    "terminals",
    metadata,
    Column("terminal_id", BigInteger, primary_key=True),
    Column("name", String(100), nullable=False, default=""),
    Column("admission", String(16), nullable=False),  # admitted | pending | refused
    Column("secret", String(200), nullable=True),  # only for terminals admitted at run time
    Column("access_groups", String(200), nullable=False, default=""),
    Column("model", String(100), nullable=False, default=""),
    Column("firmware", String(100), nullable=False, default=""),
    Column("link", String(200), nullable=False, default=""),
    Column("last_seen_ms", BigInteger, nullable=True),
    Column("cursor", BigInteger, nullable=False, default=0),
    # The terminal's current event log (docs/protocol.md, "Event log identity"): the epoch it
    # announced, or for a terminal that announces none one the gateway numbers 0, -1, -2, ...
    Column("log_epoch", BigInteger, nullable=False, default=0),
    # Its kind's name (gateway/kinds.py): what it proves, and where it may connect.
    Column("kind", String(16), nullable=False, default="native"),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("terminal_id", BigInteger, nullable=True),
    Column("terminal_event_id", BigInteger, nullable=True),
    Column("log_epoch", BigInteger, nullable=False, default=0),  # event ids count within their log
    Column("type", String(64), nullable=False),
    Column("code", Integer, nullable=True),
    Column("sub_code", Integer, nullable=True),
    Column("user_id", String(64), nullable=True),
    Column("occurred_ms", BigInteger, nullable=False),
    Column("recorded_ms", BigInteger, nullable=False),
    Column("detail", Text, nullable=True),
    # A terminal's event is stored once (resends: ``INSERT ... ON CONFLICT DO NOTHING``, whose
    # missing target covers this index). Monitoring rows have no event id and never conflict: a
    # partial index leaves them out, and with them a leaf write a delivery once the table is big
    # (migration 0016). On PostgreSQL it holds occurred_ms too, the partition key (migration 0007).
    Index("uq_events_terminal_log_event", "terminal_id", "log_epoch", "terminal_event_id", unique=True,
          sqlite_where=text("terminal_event_id IS NOT NULL"), postgresql_where=text("terminal_event_id IS NOT NULL")),
    Index("ix_events_type_id", "type", "id"),
    Index("ix_events_user_id", "user_id", "id"),
    Index("ix_events_terminal_id", "terminal_id", "id"),
    # What each handshake asks of a terminal's log: has it gone irregular? (migration 0017)
    Index("ix_events_irregular", "terminal_id", "log_epoch",
          sqlite_where=text("type = 'Event ids irregular'"), postgresql_where=text("type = 'Event ids irregular'")),
)

# Each user's history (gateway/sync/history.py): a row per version and per decision that made
# none (a keypad delete, a change not pulled), with its field changes as compact JSON; written in
# the transaction of the change, kept as long as events are.
user_history = Table(
    "user_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(64), nullable=False),
    Column("change_seq", BigInteger, nullable=True),  # the version it made; None: it made none
    Column("at_ms", BigInteger, nullable=False),
    Column("source", String(16), nullable=False),  # terminal | api | reconciliation
    Column("terminal_id", BigInteger, nullable=True),
    Column("changes", Text, nullable=False),  # JSON: [[field, outcome, rule, old, new], ...]
    Index("ix_user_history_user_id", "user_id", "id"),
)

pending_pulls = Table(
    "pending_pulls",
    metadata,
    Column("terminal_id", BigInteger, primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("since_ms", BigInteger, nullable=False),
)

# ZK devices (gateway/zk/): per device and person, the digest of the device's copy the server has
# seen (pulled, or written by the gateway); a copy that differs is a change made at the device.
zk_holdings = Table(
    "zk_holdings",
    metadata,
    Column("terminal_id", BigInteger, primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("digest", LargeBinary, nullable=False),
)

# How many of a ZK device's attendance records are stored as events, and the identity of the last.
zk_attendance = Table(
    "zk_attendance",
    metadata,
    Column("terminal_id", BigInteger, primary_key=True),
    Column("stored", BigInteger, nullable=False),
    Column("last", String(200), nullable=True),
)

# The serial number (~SerialNumber) of the unit at each ZK device's place when it last connected:
# another one is a replaced unit, refilled (docs/zk.md, "Reconciliation").
zk_devices = Table(
    "zk_devices",
    metadata,
    Column("terminal_id", BigInteger, primary_key=True),
    Column("serial", String(64), nullable=False),
)

# PUSH devices (gateway/push/queue.py): the commands each device still owes a result for.
push_commands = Table(
    "push_commands",
    metadata,
    Column("terminal_id", BigInteger, primary_key=True),
    Column("command_id", BigInteger, primary_key=True),
    Column("queued_ms", BigInteger, nullable=False),
    Column("text", Text, nullable=False),
    Column("group_id", BigInteger, nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("digest", LargeBinary, nullable=True),
    Column("written", LargeBinary, nullable=True),
)

# Several gateway processes on one database (gateway/process/reports.py): what each one alone
# knows, for the one whose API and /metrics cover them all. Rewritten every few seconds.
process_reports = Table(
    "process_reports",
    metadata,
    Column("source", String(200), primary_key=True),  # gateway.store.notices.SOURCE: host/pid/random
    Column("reported_ms", BigInteger, nullable=False),
    Column("terminals", Text, nullable=False),  # JSON: the links of the terminals it serves
    Column("metrics", Text, nullable=False),  # its Prometheus exposition
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)

counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
