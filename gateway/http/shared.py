"""SharedReads: one database read shared by the API requests that arrive together.

Every ``GET /api/terminals`` read the sync state (gateway/http/queries.py ``sync_state``) on a
reader thread, five times a second from the load test's probe alone, while what it is shown
beside (the terminals' cursors, from the ingest process's snapshot) changed at most twice a
second. A read is shared by every request that comes while it runs, and its result kept for
those after, for as long as it is no older than what it is shown beside: a read begun before
``since()`` (the snapshot's arrival; now, where the gateway's own memory is shown) is not used
again, nor one older than ``max_age_s`` (a gateway that stops answering stops the snapshots, not
the database). A failed read is not kept. An answer built from such a read and the snapshot is kept the
same way (``made_from``): the probe's five requests a second asked for the same list of
terminals, built anew each time, at 5 us a terminal.
"""

from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure


class _Read:
    def __init__(self, began_s: float, d: defer.Deferred):
        self.began_s = began_s
        self.outcome = None  # the result or a Failure, once in
        self.done = False
        self._waiting: list[defer.Deferred] = []
        d.addBoth(self._finished)

    def result(self) -> defer.Deferred:
        if self.done:
            return defer.fail(self.outcome) if isinstance(self.outcome, Failure) else defer.succeed(self.outcome)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def _finished(self, outcome) -> None:
        self.done, self.outcome = True, outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(outcome) if isinstance(outcome, Failure) else d.callback(outcome)


class _Made:
    """An answer ``made_from`` keeps: what it was made from and when, and its JSON text once asked."""

    __slots__ = ("basis", "made_s", "value", "text")

    def __init__(self, basis, made_s: float, value):
        self.basis, self.made_s, self.value = basis, made_s, value
        self.text: bytes | None = None


class SharedReads:
    max_made = 64
    max_age_s = 1.0

    def __init__(self, db, clock, since: Callable[[], float]):
        self._db = db
        self._clock = clock
        self._since = since
        self._latest: dict[Callable, _Read] = {}
        self._made: dict[object, _Made] = {}

    def read(self, query: Callable) -> defer.Deferred:
        """``db.read(query)``'s result, from a read begun no earlier than ``since()``. The result
        is shared: whoever uses it must not change it."""
        found, now = self._latest.get(query), self._clock.seconds()
        if found is None or found.began_s < max(self._since(), now - self.max_age_s) \
                or (found.done and isinstance(found.outcome, Failure)):
            found = self._latest[query] = _Read(now, self._db.read(query))
        return found.result()

    def made_from(self, key, basis, make: Callable):
        """``make()``, or what it made for ``key`` since ``since()`` from the same ``basis`` (a
        result of ``read``). Shared as that is."""
        since = self._since()
        if self._made and min(made.made_s for made in self._made.values()) < since:
            self._made = {k: made for k, made in self._made.items() if made.made_s >= since}  # none is used again
        found = self._made.get(key)
        if found is not None and found.basis is basis:
            return found.value
        if len(self._made) >= self.max_made:  # keys come from clients (pages): few are asked for again
            self._made.clear()
        value = make()
        self._made[key] = _Made(basis, self._clock.seconds(), value)
        return value

    def text_of(self, value, encode: Callable[[object], bytes]) -> bytes:
        """``encode(value)``: for an answer ``made_from`` still keeps, encoded once and kept beside
        it (let go with it, when a newer snapshot comes)."""
        made = next((made for made in self._made.values() if made.value is value), None)
        if made is None:
            return encode(value)
        if made.text is None:
            made.text = encode(value)
        return made.text
