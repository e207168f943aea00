"""SyncSettings: the sync mode, stored in the database and changeable while the gateway runs."""

from sqlalchemy import select
from twisted.logger import Logger

from gateway.database import upsert
from gateway.schema import settings
from gateway.syncmode import SyncMode
from gateway.users import republish_users

log = Logger(namespace="gateway.settings")

MODE_KEY = "sync_mode"


class SyncSettings:
    def __init__(self, db, default: SyncMode, on_change):
        self._db = db
        self._on_change = on_change
        self.mode = default

    def load(self, given: SyncMode | None = None) -> None:
        """Start-up, off the reactor, before any terminal connects: the stored mode wins over the
        configured default; a mode ``given`` for this start (``--sync-mode``) replaces the stored one."""
        stored = self._db.run_now(lambda conn: conn.execute(select(settings.c.value).where(settings.c.key == MODE_KEY)).scalar())
        if stored:
            self.mode = SyncMode(stored)
        if given is not None and given != self.mode:
            republished = self._db.run_now(_store_mode, given, bool(stored) and given.widens(self.mode))
            log.info("sync mode {mode} from --sync-mode replaces the stored {stored}{extra}", mode=given, stored=self.mode,
                     extra=f"; {republished} users go to every terminal again" if republished else "")
            self.mode = given
        elif not stored:
            self._db.run_now(_store_mode, self.mode, False)

    def set_mode(self, mode: SyncMode):
        """Change the mode; a Deferred that fires once it is stored and pushes have been woken.

        Pending pushes are never lost: cursors stay where they are, and when the mode widens
        (specific -> all) every user is republished so terminals get those the old mode skipped.
        """
        mode = SyncMode(mode)
        old = self.mode

        def stored(republished: int):
            self.mode = mode
            log.info("sync mode changed from {old} to {new}{extra}", old=old, new=mode,
                     extra=f"; {republished} users go to every terminal again" if republished else "")
            self._on_change()
            return mode

        return self._db.write(_store_mode, mode, mode.widens(old)).addCallback(stored)


def _store_mode(conn, mode: SyncMode, republish: bool) -> int:
    upsert(conn, settings, [dict(key=MODE_KEY, value=str(mode))], key=["key"], update=["value"])
    return republish_users(conn) if republish else 0
