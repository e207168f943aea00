"""SyncSettings: the sync mode, stored in the database and changeable while the gateway runs
(in any of several processes on one database: the others hear of it and ``reload``).

What a mode change means for keypad changes made under the old mode: while the mode does not
pull, terminals' keypad enrolments and edits are logged and not pulled (the server's record wins
at the next push). When a mode that pulls begins, every such change logged since pulling stopped
becomes an owed pull, so none stays pending with no one owing it (docs/architecture.md).
"""

from sqlalchemy import delete, select
from twisted.logger import Logger

from gateway.store.database import insert_ignoring_duplicates, upsert
from gateway.store.notices import SETTINGS, notify
from gateway.store.order import highest_visible
from gateway.store.schema import events, pending_pulls, settings
from gateway.sync.syncmode import SyncMode
from gateway.sync.users import republish_users
from protocol.events import USER_CHANGE_CODES, EventCode, Origin

log = Logger(namespace="gateway.settings")

MODE_KEY = "sync_mode"
UNPULLED_AFTER_KEY = "unpulled_after_event"  # while the mode does not pull: the last event id logged before it stopped pulling


class SyncSettings:
    def __init__(self, db, default: SyncMode, on_change, clock):
        self._db = db
        self._clock = clock
        self._on_change = on_change
        self.mode = default
        # What load() chose and keep() stores: (mode, the stored mode it replaces, given by --sync-mode).
        self._unstored: tuple[SyncMode | None, SyncMode | None, bool] = (None, None, False)

    def load(self, given: SyncMode | None = None) -> None:
        """Start-up, off the reactor, before any terminal connects: the stored mode wins over the
        configured default; a mode ``given`` for this start (``--sync-mode``) replaces the stored
        one, in memory until ``keep()`` stores it (a start that fails stores nothing)."""
        stored = self._db.run_now(_stored_mode)
        self._unstored = (self.mode if stored is None else None, None, False)
        if stored:
            self.mode = SyncMode(stored)
        if given is not None and given != self.mode:
            self._unstored = (given, self.mode if stored else None, True)
            log.info("sync mode {mode} from --sync-mode replaces the stored {stored}", mode=given, stored=self.mode)
            self.mode = given

    def keep(self) -> None:
        """Store the mode ``load`` chose, if it differs from the stored one (the start succeeded)."""
        mode, replaced, given = self._unstored
        if mode is None:
            return
        republished, owed = self._db.run_now(_store_mode, mode, replaced, self._now_ms())
        self._unstored = (None, None, False)
        if given and (republished or owed):
            said = ([f"{republished} users go to every terminal again"] if republished else []) + \
                   ([f"{owed} keypad changes made while it did not pull are pulled now"] if owed else [])
            log.info("sync mode {mode} stored: {said}", mode=mode, said="; ".join(said))

    def set_mode(self, mode: SyncMode):
        """Change the mode; a Deferred that fires once it is stored and pushes have been woken.

        Pending pushes are never lost: cursors stay where they are, and when the mode widens
        (specific -> all) every user is republished so terminals get those the old mode skipped.
        """
        mode = SyncMode(mode)
        old = self.mode

        def stored(changed: tuple[int, int]):
            republished, owed = changed
            self.mode = mode
            extra = f"; {republished} users go to every terminal again" if republished else ""
            extra += f"; {owed} keypad changes made while it did not pull are pulled now" if owed else ""
            log.info("sync mode changed from {old} to {new}{extra}", old=old, new=mode, extra=extra)
            self._on_change()
            return mode

        return self._db.write(_store_mode, mode, old, self._now_ms()).addCallback(stored)

    def reload(self):
        """Another gateway process may have changed the mode: read it, and follow a change at
        once; a Deferred that fires with the mode."""

        def read(stored: str | None):
            if stored and SyncMode(stored) != self.mode:
                old, self.mode = self.mode, SyncMode(stored)
                log.info("sync mode changed from {old} to {new} by another gateway process", old=old, new=self.mode)
                self._on_change()
            return self.mode

        return self._db.read(_stored_mode).addCallback(read)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)


def _stored_mode(conn) -> str | None:
    return conn.execute(select(settings.c.value).where(settings.c.key == MODE_KEY)).scalar()


def _store_mode(conn, mode: SyncMode, old: SyncMode | None, at_ms: int) -> tuple[int, int]:
    """Store the mode; (users republished, pulls newly owed)."""
    upsert(conn, settings, [dict(key=MODE_KEY, value=str(mode))], key=["key"], update=["value"])
    notify(conn, SETTINGS)
    republished = republish_users(conn) if old is not None and mode.widens(old) else 0
    owed = 0
    if not mode.pulls_device_updates and (old is None or old.pulls_device_updates):
        last = highest_visible(conn, events.c.id)  # below the watermark: an event committing late is still owed its pull
        upsert(conn, settings, [dict(key=UNPULLED_AFTER_KEY, value=str(last))], key=["key"], update=["value"])
    elif mode.pulls_device_updates and old is not None and not old.pulls_device_updates:
        owed = _owe_unpulled_changes(conn, at_ms)
    return republished, owed


def _owe_unpulled_changes(conn, at_ms: int) -> int:
    """Owe a pull for every keypad enrolment or edit logged since pulling stopped (none when a
    database older than this rule does not say when that was: those were never going to be pulled)."""
    after = conn.execute(select(settings.c.value).where(settings.c.key == UNPULLED_AFTER_KEY)).scalar()
    if after is None:
        return 0
    conn.execute(delete(settings).where(settings.c.key == UNPULLED_AFTER_KEY))
    stmt = select(events.c.terminal_id, events.c.user_id).distinct().where(
        events.c.type.in_([EventCode(c).name for c in USER_CHANGE_CODES]),
        events.c.id > int(after),
        events.c.sub_code == Origin.DEVICE,
        events.c.terminal_id.is_not(None),
        events.c.user_id.is_not(None),
    )
    rows = [dict(terminal_id=t, user_id=u, since_ms=at_ms) for t, u in conn.execute(stmt)]
    insert_ignoring_duplicates(conn, pending_pulls, rows)
    return len(rows)
