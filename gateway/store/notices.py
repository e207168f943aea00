"""What a committing transaction tells other gateway processes on the same PostgreSQL database,
and the order transactions that insert events commit in.

A commit that changes the sync mode or a terminal's admission sends a notification (``pg_notify``
inside the same transaction, so PostgreSQL delivers it on commit and never for a rollback); so
does a process that took a terminal's newer connection (gateway/process/claims.py). What a process
says outside a transaction of its own (a doorman's wrong proof, a reconciliation's findings) goes
through gateway/process/peers.py's ``Teller``. Other processes hear them all through
gateway/process/peers.py's ``Listener``.

A commit that changes users notifies *after* it committed (``notify_after_commit``), on the same
connection in a transaction of its own that does not wait for the WAL flush: PostgreSQL serialises every
notifying transaction on one lock held through its commit, so a notification inside each change
would make change writers wait on each other's WAL flush again. It is only a wake-up: one lost to
a crash between the two commits is made good by the next change or the sweep, and readers never
rely on it for order (gateway/store/order.py). It names the access groups of the users changed
(the words of every change in the transaction, one notice), so that in sync mode specific only
the terminals serving one of them are woken (gateway/sync/due.py).
"""

import os
import secrets
import socket

from sqlalchemy import text

CHANGES = "gateway_changes"  # users changed: "<group>,<group>,..." (theirs) or "*" (any): wake the pushers of terminals they go to
SETTINGS = "gateway_settings"  # the sync mode changed: read it again
TERMINALS = "gateway_terminals"  # a process took a terminal's newer connection: "<terminal id> <since s>"
ADMISSIONS = "gateway_admissions"  # a terminal registered, admitted, refused or removed: "<terminal id>"
DOORMAN = "gateway_doorman"  # a wrong proof checked, an address cleared: "wrong <address> <terminal id>" | "clear <address>"
RECONCILE = "gateway_reconcile"  # an operator asked to compare every online terminal now
RECONCILED = "gateway_reconciled"  # what comparing a terminal found: its reconciliation as JSON
CHANNELS = (CHANGES, SETTINGS, TERMINALS, ADMISSIONS, DOORMAN, RECONCILE, RECONCILED)
COUNTED = (DOORMAN,)  # each notice counts (two wrong proofs are two): never merged with an equal one heard with it
WORDED = (CHANGES,)  # a notice's payload is a set of words: those heard together are merged into one (``merged_words``)
PAYLOAD_LIMIT = 7900  # bytes of a payload: PostgreSQL refuses 8000 and more

# This process, as its notifications name it (a host name, a pid and a random part: a restarted
# worker with a reused pid is still another sender).
SOURCE = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"

_AFTER_COMMIT = "gateway_notify_after_commit"  # connection.info: channel -> words to notify once this transaction committed
ANY = "*"  # a notice whose words would not fit in one: it says "anything"


def notify(conn, channel: str, payload: str = "") -> None:
    """Tell the other processes, once this transaction commits (nothing on SQLite: one process)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), dict(channel=channel, payload=f"{SOURCE} {payload}"))


def notify_after_commit(conn, channel: str, words=()) -> None:
    """Tell the other processes once this transaction has committed (``send_owed``), outside it:
    one notice on ``channel`` whose payload lists the ``words`` of every call in the transaction."""
    if conn.dialect.name == "postgresql":
        conn.info.setdefault(_AFTER_COMMIT, {}).setdefault(channel, set()).update(words)


def owed_notices(conn) -> dict[str, set[str]]:
    """The channels this transaction owes a notification, each with its words, forgotten here
    (before it commits or rolls back)."""
    return conn.info.pop(_AFTER_COMMIT, {})


def send_owed(conn, owed: dict[str, set[str]]) -> None:
    """Notify each channel of ``owed`` with its words on ``conn``, whose transaction committed, in a
    transaction that need not reach the disk: a lost wake-up costs nothing."""
    if owed:
        with conn.begin():
            conn.execute(text("SET LOCAL synchronous_commit TO off"))
            for channel, words in sorted(owed.items()):
                notify(conn, channel, owed_payload(words))


def owed_payload(words: set[str]) -> str:
    """The words, comma-separated, or ``ANY`` where they would not fit in a notification."""
    payload = ",".join(sorted(words))
    return payload if len(payload) + len(SOURCE) + 1 < PAYLOAD_LIMIT else ANY


def merged_words(payloads: list[str]) -> str:
    """One payload saying what these of a ``WORDED`` channel say together: their words, or ``ANY``."""
    words: set[str] = set()
    for payload in payloads:
        if payload == ANY:
            return ANY
        words.update(word for word in payload.split(",") if word)
    return owed_payload(words)
