"""What a committing transaction tells other gateway processes on the same PostgreSQL database,
and the order transactions that insert events commit in.

A commit that changes users, the sync mode or a terminal's admission sends a notification
(``pg_notify`` inside the same transaction, so PostgreSQL delivers it on commit and never for a
rollback); so does a process that took a terminal's newer connection (gateway/process/claims.py).
Other processes hear them through gateway/process/peers.py.

Event ids follow commit order: every transaction that inserts events takes one
transaction-level advisory lock first (``take_commit_turn``), so on PostgreSQL no event id is
handed out while a transaction holding a lower one is still open, and a reader that follows ids
(the live event stream, the page's figures) never skips an event committed late. SQLite has one
writer, whose ids are in commit order already.
"""

import os
import secrets
import socket

from sqlalchemy import text

CHANGES = "gateway_changes"  # users changed: wake the pushers
SETTINGS = "gateway_settings"  # the sync mode changed: read it again
TERMINALS = "gateway_terminals"  # a process took a terminal's newer connection: "<terminal id> <since s>"
ADMISSIONS = "gateway_admissions"  # a terminal registered, admitted, refused or removed: "<terminal id>"
CHANNELS = (CHANGES, SETTINGS, TERMINALS, ADMISSIONS)

# This process, as its notifications name it (a host name, a pid and a random part: a restarted
# worker with a reused pid is still another sender).
SOURCE = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"

COMMIT_ORDER_LOCK = (0x6777, 0)  # pg_advisory_xact_lock keys: "gw", and 0 (terminal claims use 1)


def notify(conn, channel: str, payload: str = "") -> None:
    """Tell the other processes, once this transaction commits (nothing on SQLite: one process)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), dict(channel=channel, payload=f"{SOURCE} {payload}"))


def take_commit_turn(conn) -> None:
    """Hold the commit-order lock until this transaction ends: event ids then follow commit order.

    Taken just before the events are inserted, and also before the change counter is taken
    (``next_change_seq``), so every transaction takes the two in the same order.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), dict(a=COMMIT_ORDER_LOCK[0], b=COMMIT_ORDER_LOCK[1]))
