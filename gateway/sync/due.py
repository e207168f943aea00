"""Which terminals a change is due at: the groups a wake-up names, and a terminal's lag in the
changes meant for it.

In sync mode specific a change goes only to the terminals serving one of its user's access
groups. Its wake-up names those groups (here, and in the notice other processes hear), so the
pushers of the other terminals are not woken: no feed read, no round, no cursor write for a
change that is not theirs. Their cursors stay behind such changes; the feed read that follows
their next wake-up passes over them (gateway/sync/pusher.py).

The once-a-second sweep judges a terminal by the newest changes of the feed (``RecentChanges``):
it counts those after the terminal's cursor that are meant for it, which is the lag shown
(``gateway_sync_lag``, the API's ``lag``), and kicks the terminal only when that count is not
zero, or when its cursor fell half a window behind (a round then moves it on, sending nothing):
a cursor is never left so far behind that the window does not reach it.
"""

from bisect import bisect_right

from sqlalchemy import bindparam, select

from gateway.store.notices import ANY, CHANGES, notify_after_commit
from gateway.store.schema import users
from gateway.sync.syncmode import SyncMode, parse_groups

RECENT_CHANGES = 512  # changes of the feed the sweep and the API look at; a cursor half this far behind gets a round


def changed_users_of(conn, groups) -> None:
    """A user of ``groups`` changed in this transaction: other processes hear it once it committed."""
    notify_after_commit(conn, CHANGES, (str(g) for g in groups))


def heard_groups(payload: str) -> frozenset[int] | None:
    """The groups a CHANGES notice names; None: any group (too many to name)."""
    if payload == ANY:
        return None
    return frozenset(int(g) for g in payload.split(",") if g)


class RecentChanges:
    """The newest changes of the feed, up to the highest a follower may read (``last_seq``): each
    change's key and its user's groups, in change order."""

    def __init__(self, last_seq: int, keys: list[int], groups: list[frozenset[int]], whole: bool):
        self.last_seq = last_seq
        self._keys = keys
        self._groups = groups
        # Every change after this key is here; a cursor below it may lack changes not seen.
        self._reaches_back_to = -1 if whole else keys[0] - 1
        self._catch_up_below = -1 if whole else keys[len(keys) // 2]
        self._counted: dict[tuple[int, frozenset[int]], int] = {}  # terminals at one cursor and groups are counted once

    def behind(self, cursor: int, terminal_groups: frozenset[int], mode: SyncMode) -> int:
        """Changes after ``cursor`` meant for a terminal serving ``terminal_groups``: in mode
        specific those of its groups; in the others, and for a cursor older than what is here,
        every change after it (an upper bound)."""
        if mode is not SyncMode.SPECIFIC or cursor < self._reaches_back_to:
            return max(0, self.last_seq - cursor)
        key = (cursor, terminal_groups)
        if key not in self._counted:
            self._counted[key] = sum(1 for groups in self._groups[bisect_right(self._keys, cursor):] if groups & terminal_groups)
        return self._counted[key]

    def caught_up(self, cursor: int) -> bool:
        """Whether ``cursor`` holds every change: in any mode nothing is behind it and no round due,
        so the sweep may pass over it without counting (0.1 us a terminal, against 0.8)."""
        return cursor >= self.last_seq

    def round_due(self, cursor: int, terminal_groups: frozenset[int], mode: SyncMode) -> bool:
        """Whether the sweep kicks the terminal: changes meant for it wait, or its cursor fell so far
        behind that it must move on before this window leaves it."""
        return self.behind(cursor, terminal_groups, mode) > 0 or cursor < self._catch_up_below


def read_recent_changes(conn, last_seq: int) -> RecentChanges:
    """The newest ``RECENT_CHANGES`` changes up to ``last_seq`` (one index range, newest first)."""
    rows = conn.execute(_RECENT, dict(last_seq=last_seq)).all()[::-1]
    return RecentChanges(last_seq, [r[0] for r in rows], [parse_groups(r[1]) for r in rows], whole=len(rows) < RECENT_CHANGES)


# Built once: building a statement and its cache key cost more than SQLite running it.
_RECENT = (select(users.c.change_seq, users.c.access_groups).where(users.c.change_seq <= bindparam("last_seq"))
           .order_by(users.c.change_seq.desc()).limit(RECENT_CHANGES))
