"""The ingest process's memory as the API process sees it: a snapshot taken on one side, mirrored
on the other.

What the API shows and only the ingest process knows (which terminals are online, when each was
last heard, why one went offline, the last reconciliation of each, monitoring events waiting for
the database, the sync mode in force, the lockouts, and the metrics when asked for) travels as one JSON document. ``take``
builds it on the ingest reactor from the objects the views read; ``Mirror`` keeps the newest one
in the API process as objects with the same attributes, so the views run unchanged on either
side. The document holds no secret: writes, which need them, run in the ingest process.

At 10,000 terminals a snapshot took 108 ms to take and 223 ms to mirror (benchmarks/api_cost.py):
so a terminal travels as an array of its fields, decoded by msgspec straight into a
``TerminalView``. The reconciliations change every few minutes, on connect and by schedule, and
were two thirds of what the rest cost: a snapshot carries only those kept since the count of
findings the mirror holds (``reconciled``), and the mirror keeps the others as they were.
"""

from collections import Counter
from dataclasses import dataclass
from operator import attrgetter

import msgspec

from gateway.sync.reconcile import Reconciliation
from gateway.sync.syncmode import SyncMode

_TERMINAL_FIELDS = ("terminal_id", "name", "admission", "online", "kind", "offline_reason", "link", "heard_ms",
                    "model", "firmware", "clock_drift_s", "cursor")
_terminal_fields = attrgetter(*_TERMINAL_FIELDS)


def take(gateway, now_s: float, metrics: bool = False, reconciled: int = 0) -> dict:
    """The snapshot, from a running ``Gateway`` (on its reactor: it reads memory, never the database).

    ``metrics``: with the Prometheus exposition, which costs more than the rest together (a
    sample per terminal and label): it is taken when a scrape asks, not twice a second.
    ``reconciled``: the count of findings the reader holds (``Mirror.reconciled``); only those
    kept after it are carried."""
    unsaved = gateway.eventlog.unsaved
    reconciler = gateway.reconciler
    taken = {
        "taken_s": now_s,
        "terminals": [(*_terminal_fields(t), sorted(t.access_groups)) for t in gateway.registry.terminals.values()],
        "reconciled": reconciler.findings_kept,
        "reconciliations": [reconciler.last[t].form(t, reconciler.repaired_total[t]) for t in reconciler.kept_after(reconciled)],
        # Oldest first, each with the number that tells it apart, so the mirror offers new ones to the live stream once.
        "unsaved": [dict(number=n, event=e) for n, e in zip(unsaved.taken(), reversed(unsaved.shown()))],
        "sync_mode": gateway.settings.mode.value,
        "lockouts": gateway.doorman.lockouts(),
    }
    if metrics:
        taken["metrics"] = gateway.metrics.exposition().decode()
    return taken


class TerminalView(msgspec.Struct, frozen=True, array_like=True):
    """A terminal as the views read it (``gateway.terminals.Terminal``'s fields, without its secret
    and connection), in the order ``take`` writes them."""

    terminal_id: int
    name: str
    admission: str
    online: bool
    kind: str
    offline_reason: str
    link: str
    heard_ms: int | None
    model: str
    firmware: str
    clock_drift_s: float | None
    cursor: int
    access_groups: frozenset[int]


class RegistryView:
    def __init__(self):
        self.terminals: dict[int, TerminalView] = {}

    def connected(self) -> list[TerminalView]:
        return [t for t in self.terminals.values() if t.online]


class DoormanView:
    def __init__(self):
        self.shown: list[dict] = []

    def lockouts(self) -> list[dict]:
        return self.shown


class ReconciliationView(Reconciliation):
    """A reconciliation as the mirror keeps it until new findings replace it: its JSON is built
    once, not for every terminal of every list of them (a third of what one cost at 200 terminals)."""

    _shown: tuple[int, dict] | None = None

    def as_json(self, repaired_total: int) -> dict:
        if self._shown is None or self._shown[0] != repaired_total:
            self._shown = (repaired_total, super().as_json(repaired_total))
        return self._shown[1]


class ReconcilerView:
    def __init__(self):
        self.last: dict[int, Reconciliation] = {}
        self.repaired_total: Counter = Counter()


class SettingsView:
    mode = SyncMode.ALL_WITH_DEVICE_UPDATES  # until the first snapshot; the API process answers none before it


class UnsavedView:
    """Monitoring events waiting for the ingest process's database writes; new ones go to ``listeners`` (the live stream)."""

    def __init__(self):
        self.listeners: list = []
        self._shown: list[dict] = []
        self._seen = 0  # the highest number offered

    def shown(self) -> list[dict]:
        return self._shown

    def update(self, rows: list[dict]) -> None:
        self._shown = [row["event"] for row in reversed(rows)]
        for row in rows:
            if row["number"] > self._seen:
                self._seen = row["number"]
                for listener in self.listeners:
                    listener(row["event"])


@dataclass
class EventLogView:
    unsaved: UnsavedView


class _Snapshot(msgspec.Struct):
    taken_s: float
    terminals: list[TerminalView]
    reconciled: int
    reconciliations: list[dict]
    unsaved: list[dict]
    sync_mode: str
    lockouts: list[dict]
    metrics: str | None = None


class Mirror:
    """The newest snapshot, as ``registry``, ``reconciler``, ``settings``, ``eventlog.unsaved`` and the metrics text."""

    def __init__(self):
        self.registry = RegistryView()
        self.reconciler = ReconcilerView()
        self.doorman = DoormanView()
        self.settings = SettingsView()
        self.eventlog = EventLogView(UnsavedView())
        self.metrics_text = ""
        self.taken_s: float | None = None  # on the ingest process's clock; None before the first
        self.metrics_taken_s: float | None = None  # the same, for ``metrics_text``
        self.reconciled = 0  # the ingest process's count of findings kept, as of the reconciliations held here

    def update(self, raw: bytes) -> None:
        """The snapshot ``take`` made, as JSON."""
        snapshot = msgspec.json.decode(raw, type=_Snapshot)
        self.registry.terminals = {t.terminal_id: t for t in snapshot.terminals}
        for form in snapshot.reconciliations:  # those kept since the last snapshot read
            terminal_id, found, repaired_total = ReconciliationView.from_form(form)
            self.reconciler.last[terminal_id] = found
            self.reconciler.repaired_total[terminal_id] = repaired_total
        self.reconciled = snapshot.reconciled
        self.settings.mode = SyncMode(snapshot.sync_mode)
        self.doorman.shown = snapshot.lockouts
        self.eventlog.unsaved.update(snapshot.unsaved)
        self.taken_s = snapshot.taken_s
        if snapshot.metrics is not None:
            self.metrics_text = snapshot.metrics
            self.metrics_taken_s = snapshot.taken_s
