"""Sync modes: which terminals a user goes to, and whether terminal-side edits are pulled.

The mode is a server setting, stored in the database and changeable at run time.
"""

from enum import StrEnum


class SyncMode(StrEnum):
    DISABLED = "disabled"
    SPECIFIC = "specific"
    ALL = "all"
    ALL_WITH_DEVICE_UPDATES = "all-with-device-updates"

    @property
    def pulls_device_updates(self) -> bool:
        return self is SyncMode.ALL_WITH_DEVICE_UPDATES

    @property
    def pushes(self) -> bool:
        return self is not SyncMode.DISABLED

    @property
    def means(self) -> str:
        """What the mode does, in a sentence an operator reads when switching to it."""
        return _MEANINGS[self]

    def stops(self, old: "SyncMode") -> list[str]:
        """What switching from ``old`` to this mode stops, each in a sentence."""
        stopped = []
        if old.pulls_device_updates and not self.pulls_device_updates:
            stopped.append("keypad enrolments and edits no longer reach the server: they are logged, and pulled once "
                           "all-with-device-updates is back")
        if old.pushes and not self.pushes:
            stopped.append("server changes no longer reach any terminal")
        elif old is not SyncMode.SPECIFIC and self is SyncMode.SPECIFIC:
            stopped.append("a terminal gets only users sharing one of its access groups (a terminal without groups gets none); "
                           "users already on it stay")
        return stopped

    def targets(self, user_groups: frozenset[int], terminal_groups: frozenset[int]) -> bool:
        """Whether a user with ``user_groups`` belongs on a terminal serving ``terminal_groups``."""
        if self is SyncMode.SPECIFIC:
            return bool(user_groups & terminal_groups)
        return self.pushes

    def widens(self, old: "SyncMode") -> bool:
        """True when terminals now need users the old mode skipped (their cursors passed them)."""
        return old is SyncMode.SPECIFIC and self in (SyncMode.ALL, SyncMode.ALL_WITH_DEVICE_UPDATES)


_MEANINGS = {
    SyncMode.DISABLED: "nothing is pushed to terminals, and keypad changes are not pulled",
    SyncMode.SPECIFIC: "users go to the terminals sharing one of their access groups; keypad changes are not pulled",
    SyncMode.ALL: "every user goes to every terminal; keypad changes are not pulled",
    SyncMode.ALL_WITH_DEVICE_UPDATES: "every user goes to every terminal, and keypad enrolments and edits are pulled and merged",
}


def parse_groups(column: str) -> frozenset[int]:
    """Groups as stored in a column: ",1,5,", so that LIKE '%,5,%' finds members of group 5."""
    return frozenset(int(g) for g in column.split(",") if g)


def format_groups(groups) -> str:
    return "," + ",".join(str(g) for g in sorted(groups)) + "," if groups else ""
