"""What a read of the terminals costs the API process, and the snapshot the ingest process.

A py-spy profile of the 200-terminal storm at one enrolment a second (issue 24) put about 150 us
of the 417 us of gateway CPU a delivery cost into the API process: the load test's probe asks
``GET /api/terminals`` five times a second, and the API process read the ingest process's
snapshot twice a second whether anybody asked or not. This times, on this process's CPU clock,
for ``--terminals`` terminals (each with a reconciliation, as after the first round):

- ``request_us``: one ``GET /api/terminals`` through the API's own resource (routing, the
  database read of the sync state on a real migrated SQLite file, the view, the JSON answer);
  ``shared_request_us`` one that shares the sync state read by an earlier one (gateway/http/shared.py:
  two of three of the probe's); ``page_request_us`` one with ``?limit=500``, what the monitoring page asks;
- ``take_us`` and ``encode_us``: the ingest process building its snapshot and encoding it;
- ``update_us``: the API process decoding it into its mirror;

the last three as the API process reads it while nothing is reconciled: without the
reconciliations its mirror holds already.

    python benchmarks/api_cost.py                      # 200 and 10,000 terminals
    python benchmarks/api_cost.py --terminals 200 --json out.json
"""

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import msgspec
from twisted.internet import defer, task
from twisted.web.test.requesthelper import DummyRequest

from gateway.config import GatewayConfig
from gateway.http.api import BoundedBody
from gateway.http.site import GatewaySite
from gateway.http.snapshot import Mirror, take
from gateway.metrics import Metrics
from gateway.store.database import make_engine, migrate, transaction
from gateway.sync.reconcile import Reconciler, Reconciliation
from gateway.sync.syncmode import SyncMode
from gateway.sync.unsaved import UnsavedEvents
from gateway.terminals import Terminal


class Heard:
    last_heard_s = 1_700_000_123.25


class InlineDatabase:
    """``Database.read`` on the calling thread: the query's cost, without the thread hand-off."""

    def __init__(self, engine):
        self.engine = engine

    def read(self, work, *args) -> defer.Deferred:
        return defer.maybeDeferred(transaction, self.engine, work, *args)


def ingest_side(n: int) -> SimpleNamespace:
    terminals = {i: Terminal(i, name=f"Door {i} — Tür", access_groups=frozenset({1, i % 7}), model="SIM", firmware="1.0",
                             link=f"tcp 127.0.0.1:{5000 + i % 60000}", cursor=1000 - i % 3, connection=Heard() if i % 10 else None)
                 for i in range(1, n + 1)}
    metrics = Metrics()
    reconciler = Reconciler(None, SimpleNamespace(connection=lambda terminal_id: None), None, task.Clock(), metrics, None)
    for i in terminals:
        reconciler.heard(i, Reconciliation(1_700_000_000_000, compared=500, repaired=Counter(pushed=i % 2),
                                           differences={f"u{i}": "server holds a card"}), 1)
    return SimpleNamespace(registry=SimpleNamespace(terminals=terminals), reconciler=reconciler,
                           eventlog=SimpleNamespace(unsaved=UnsavedEvents(metrics)), settings=SimpleNamespace(mode=SyncMode.ALL),
                           doorman=SimpleNamespace(lockouts=lambda: []), metrics=metrics)


def api_side(mirror: Mirror, engine, clock) -> GatewaySite:
    gateway = SimpleNamespace(config=GatewayConfig(), reactor=clock, db=InlineDatabase(engine), eventlog=mirror.eventlog,
                              registry=mirror.registry, reconciler=mirror.reconciler, doorman=mirror.doorman, settings=mirror.settings,
                              metrics=None, activity=None)
    return GatewaySite(gateway)


def get(site: GatewaySite, path: bytes, args: dict) -> bytes:
    request = DummyRequest(path.split(b"/")[1:])
    request.path, request.uri, request.args = path, path, args
    request.content = BoundedBody()
    request._serverName = b"127.0.0.1"
    site.getResourceFor(request).render(request)
    assert request.finished and request.responseCode in (None, 200), request.written
    return b"".join(request.written)


def cpu_us(work, rounds: int) -> list[float]:
    gc.collect()  # not the garbage of the figure before
    times = []
    for _ in range(rounds):
        started = time.process_time()
        work()
        times.append((time.process_time() - started) * 1e6)
    return times


def measure(n: int, rounds: int, folder: Path) -> dict:
    engine = make_engine(f"sqlite:///{folder / f'api-{n}.db'}")
    migrate(engine)
    ingest = ingest_side(n)
    clock = task.Clock()
    mirror = Mirror()
    mirror.update(msgspec.json.encode(take(ingest, clock.seconds())))
    raw = msgspec.json.encode(take(ingest, clock.seconds(), reconciled=mirror.reconciled))  # as read while nothing is reconciled
    site = api_side(mirror, engine, clock)
    answer = json.loads(get(site, b"/api/terminals", {}))
    assert len(answer["terminals"]) == n
    figures = dict(
        terminals=n,
        snapshot_bytes=len(raw),
        answer_bytes=len(get(site, b"/api/terminals", {})),
        request_us=cpu_us(lambda: (clock.advance(1), get(site, b"/api/terminals", {})), rounds),
        shared_request_us=cpu_us(lambda: get(site, b"/api/terminals", {}), rounds),
        page_request_us=cpu_us(lambda: (clock.advance(1), get(site, b"/api/terminals", {b"limit": [b"500"]})), rounds),
        take_us=cpu_us(lambda: take(ingest, clock.seconds(), reconciled=mirror.reconciled), rounds),
        encode_us=cpu_us(lambda: msgspec.json.encode(take(ingest, clock.seconds(), reconciled=mirror.reconciled)), rounds),
        update_us=cpu_us(lambda: mirror.update(raw), rounds),
    )
    engine.dispose()
    return {k: round(statistics.median(v), 1) if isinstance(v, list) else v for k, v in figures.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[200, 10_000])
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds of each (default: 200 at 200 terminals, fewer above)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.terminals:
            found = measure(n, args.rounds or max(5, 40_000 // n), Path(folder))
            results.append(found)
            print("  ".join(f"{k}={v}" for k, v in found.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
