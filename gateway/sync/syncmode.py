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

    def targets(self, user_groups: frozenset[int], terminal_groups: frozenset[int]) -> bool:
        """Whether a user with ``user_groups`` belongs on a terminal serving ``terminal_groups``."""
        if self is SyncMode.SPECIFIC:
            return bool(user_groups & terminal_groups)
        return self.pushes

    def widens(self, old: "SyncMode") -> bool:
        """True when terminals now need users the old mode skipped (their cursors passed them)."""
        return old is SyncMode.SPECIFIC and self in (SyncMode.ALL, SyncMode.ALL_WITH_DEVICE_UPDATES)


def parse_groups(column: str) -> frozenset[int]:
    """Groups as stored in a column: ",1,5,", so that LIKE '%,5,%' finds members of group 5."""
    return frozenset(int(g) for g in column.split(",") if g)


def format_groups(groups) -> str:
    return "," + ",".join(str(g) for g in sorted(groups)) + "," if groups else ""
