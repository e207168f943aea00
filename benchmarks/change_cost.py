"""What one user change costs the database, and whether concurrent change writers wait on each other.

Every committed change takes the next key of the changes feed (gateway/store/order.py): on
SQLite a counter row (one writer anyway), on PostgreSQL the transaction's own keys, with no lock
any two writers share, and the other processes woken after the commit. This measures, on a
given database, transactions shaped like a merge of a pulled user (the key, the user row, its
monitoring event, the wake-up), from 1 and from ``--writers`` processes at once: changes a second,
and milliseconds each. On PostgreSQL, changes/s that grow with writers show they share WAL
flushes instead of queueing for them. ``--group N`` puts N changes in each transaction, each in
a savepoint, as a gateway's writer does with the writes queued behind a commit
(gateway/store/database.py, group commit).

    python benchmarks/change_cost.py                      # SQLite in a scratch folder
    python benchmarks/change_cost.py --db postgresql://... --writers 4
    python benchmarks/change_cost.py --db postgresql://... --writers 4 --group 8
"""

import argparse
import json
import tempfile
import multiprocessing
import time
from pathlib import Path

from gateway.store.database import each_in_savepoint, make_engine, migrate, transaction
from gateway.sync.monitor import SAVED_FROM_DEVICE, record_sync_events, sync_event_row
from gateway.sync.users import store_record
from simulator.people import MIXES, People


def change(conn, record, at_ms: int) -> None:
    store_record(conn, record, at_ms)
    record_sync_events(conn, [sync_event_row(SAVED_FROM_DEVICE, 1, record.user_id, at_ms=at_ms)])


def write_share(url: str, names: list[str], group: int, mix: str, start, took) -> None:
    """One writer process: its own engine and records, then its changes once ``start`` opens."""
    engine = make_engine(url)
    people = People(1, mix=MIXES[mix])
    records = [people.person(name) for name in names]

    def commit(some: list) -> None:
        now = int(time.time() * 1000)
        if group == 1:
            transaction(engine, change, some[0], now)
        else:
            transaction(engine, each_in_savepoint, [(change, (record, now)) for record in some])

    # Connected, and every statement compiled, before the clock starts: a gateway's writer is warm.
    commit([people.person(f"warm-up-{names[0]}-{n}") for n in range(group)])
    start.wait()
    mine = []
    for i in range(0, len(records), group):
        started = time.perf_counter()
        commit(records[i:i + group])
        mine.append(time.perf_counter() - started)
    engine.dispose()
    took.put(mine)


def run(url: str, names: list[str], writers: int, group: int = 1, mix: str = "typical") -> dict:
    """Commit one change per name, split among ``writers`` processes (real concurrency: threads
    of one process would take turns on its interpreter lock), ``group`` changes a transaction;
    changes/s and ms per transaction."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(writers + 1)
    took = ctx.Queue()
    procs = [ctx.Process(target=write_share, args=(url, names[i::writers], group, mix, start, took)) for i in range(writers)]
    for p in procs:
        p.start()
    start.wait()
    started = time.perf_counter()
    durations = sorted(d for _ in procs for d in took.get())
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    return dict(writers=writers, group=group, changes=len(names), changes_per_s=round(len(names) / wall, 1),
                ms_per_transaction_p50=round(durations[len(durations) // 2] * 1000, 3),
                ms_per_transaction_p99=round(durations[int(len(durations) * 0.99)] * 1000, 3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="an empty database (default: SQLite in a scratch folder, WAL, synchronous=FULL)")
    p.add_argument("--changes", type=int, default=1000, help="changes per measurement (default 1000)")
    p.add_argument("--writers", type=int, default=2, help="concurrent writers of the second measurement (default 2)")
    p.add_argument("--group", type=int, default=1, help="changes per transaction of the second measurement (default 1)")
    p.add_argument("--mix", default="typical", choices=sorted(MIXES), help="record size, as the fleet's --mix (default typical)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='change-cost-')) / 'gateway.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    run(url, [f"warm-up-{n}" for n in range(50)], 1, mix=args.mix)  # the database's pages cached
    figures = [run(url, [f"cost-{writers}-{n}" for n in range(args.changes)], writers, group, args.mix)
               for writers, group in ((1, 1), (args.writers, args.group))]
    print(f"database {engine.url.get_backend_name()}, {args.mix} records")
    for f in figures:
        print(f"{f['writers']} writer(s), {f['group']} change(s) a transaction: {f['changes_per_s']:,.0f} changes/s, "
              f"{f['ms_per_transaction_p50']:.2f} ms p50, {f['ms_per_transaction_p99']:.2f} ms p99 per transaction")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(database=engine.url.get_backend_name(), mix=args.mix, runs=figures), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
