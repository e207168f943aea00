"""UnsavedEvents: monitoring events the database could not take yet, shown at once all the same.

During a database outage "Fail to save to the server DB" is exactly what an operator needs to
see, and exactly what cannot be stored. These events wait here (bounded, oldest dropped and
counted) until a commit succeeds; meanwhile the API lists them, the live stream sends them as
they happen (without an id: they have none until stored) and /metrics counts them.
"""

import itertools
from collections import deque

from twisted.logger import Logger

from gateway.sync.monitor import origin_of

log = Logger(namespace="gateway.unsaved")


class UnsavedEvents:
    limit = 10_000

    def __init__(self, metrics):
        self._metrics = metrics
        self._rows: deque[dict] = deque()
        self._numbers = itertools.count(1)
        self.listeners: list = []  # called with each new event as the API shows it
        metrics.unsaved_events.set_function(lambda: len(self._rows))

    def add(self, row: dict) -> None:
        if len(self._rows) >= self.limit:
            dropped = self._rows.popleft()
            self._metrics.failures.labels("unsaved_dropped").inc()
            log.warn("more than {n} monitoring events wait for the database: dropped one ({type}, user {user})",
                     n=self.limit, type=dropped["type"], user=dropped["user_id"])
        row["_unsaved"] = next(self._numbers)
        self._rows.append(row)
        shown = as_shown(row)
        for listener in self.listeners:
            listener(shown)

    def rows(self) -> list[dict]:
        """The rows to store, without the number that tells them apart here."""
        return [{k: v for k, v in row.items() if k != "_unsaved"} for row in self._rows]

    def taken(self) -> list[int]:
        return [row["_unsaved"] for row in self._rows]

    def stored(self, numbers: list[int]) -> None:
        """These were committed: they are in the events table now."""
        gone = set(numbers)
        self._rows = deque(row for row in self._rows if row["_unsaved"] not in gone)

    def __bool__(self) -> bool:
        return bool(self._rows)

    def shown(self) -> list[dict]:
        """Newest first, as the API lists events."""
        return [as_shown(row) for row in reversed(self._rows)]


def as_shown(row: dict) -> dict:
    """An unsaved row as the API shows an event: no id yet, ``unsaved`` true."""
    event = {k: v for k, v in row.items() if k != "_unsaved"}
    return dict(event, id=None, unsaved=True, sync=True, origin=origin_of(row["type"], row["sub_code"]))
