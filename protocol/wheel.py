"""TimerWheel: the deadlines of many links held to a granularity, so one timer serves them all.

A process with thousands of links (the gateway's sessions, a simulated fleet) needs each link
looked at when its time comes: a request's deadline, the keepalive rule's next check. A reactor
timer per link costs a wake-up and a heap operation of its own each time; the wheel rounds each
deadline up to the next multiple of ``granularity_s`` and keeps the links due at one instant in
one slot, so the owner runs one timer, to ``next_deadline()``, and takes every link due then
with ``pop_due(now)``. Sans-I/O, as the rest of protocol/: deadlines and ``now`` in, due keys
out; who owns the reactor arms its timer.

A key is never due before its deadline and, with a punctual caller, at most ``granularity_s``
after it. Setting a key again moves it; a key is in the wheel once, until it falls due or is
discarded. Slots are found through a heap of their instants (one entry per slot, not per key),
so setting a key costs a few dict operations however many the wheel holds.
"""

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimerWheel(Generic[K]):
    def __init__(self, granularity_s: float):
        if not granularity_s > 0:
            raise ValueError(f"a wheel's granularity must be positive, not {granularity_s!r}")
        self.granularity_s = granularity_s
        self._slots: dict[int, dict[K, None]] = {}  # tick -> its keys (a dict: an ordered set)
        self._tick_of: dict[K, int] = {}
        self._ticks: list[int] = []  # a heap: every tick of _slots once, emptied slots until they reach the top

    def __len__(self) -> int:
        return len(self._tick_of)

    def __contains__(self, key: object) -> bool:
        return key in self._tick_of

    def set(self, key: K, deadline: float) -> None:
        """Be due at ``deadline`` (rounded up to the granularity), wherever the key was before."""
        granularity = self.granularity_s
        tick = math.ceil(deadline / granularity)  # then the first tick at or after it as pop_due sees it:
        if tick * granularity < deadline:  # never early (a quotient rounded down to a whole number)
            tick += 1
        elif (tick - 1) * granularity >= deadline:  # nor a tick late (3 * 0.1 / 0.1 is 3.0000000000000004)
            tick -= 1
        old = self._tick_of.get(key)
        if old == tick:
            return
        if old is not None:
            del self._slots[old][key]
        slot = self._slots.get(tick)
        if slot is None:
            slot = self._slots[tick] = {}
            heapq.heappush(self._ticks, tick)
        slot[key] = None
        self._tick_of[key] = tick

    def discard(self, key: K) -> None:
        """Not due any more (a closed link); nothing if it was not in the wheel."""
        tick = self._tick_of.pop(key, None)
        if tick is not None:
            del self._slots[tick][key]

    def next_deadline(self) -> float | None:
        """When the earliest key falls due (a multiple of the granularity); None when empty."""
        ticks, slots = self._ticks, self._slots
        while ticks and not slots[ticks[0]]:
            del slots[heapq.heappop(ticks)]
        return ticks[0] * self.granularity_s if ticks else None

    def pop_due(self, now: float) -> list[K]:
        """Every key due at ``now``, earliest first, each taken out of the wheel."""
        due: list[K] = []
        ticks, slots, tick_of, granularity = self._ticks, self._slots, self._tick_of, self.granularity_s
        while ticks and ticks[0] * granularity <= now:
            slot = slots.pop(heapq.heappop(ticks))
            for key in slot:
                del tick_of[key]
            due.extend(slot)
        return due
