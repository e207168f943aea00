"""What one user change costs the database, and how writers serialise on the change counter.

Every committed change takes the next value of one counter row (gateway/sync/users.py), so on a
shared PostgreSQL every gateway's change transactions queue for that row's lock from the
counter UPDATE to their commit. This measures, on a given database, transactions shaped like a
merge of a pulled user (the counter, the user row, its monitoring event), from 1 and from
``--writers`` threads at once: changes a second, and milliseconds each. With several writers on
PostgreSQL, changes/s that do not grow mark the counter row as the limit; the time a change holds
it is about 1 / (changes/s).

    python benchmarks/change_cost.py                      # SQLite in a scratch folder
    python benchmarks/change_cost.py --db postgresql://... --writers 4
"""

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from gateway.store.database import make_engine, migrate
from gateway.sync.monitor import SAVED_FROM_DEVICE, record_sync_events, sync_event_row
from gateway.sync.users import store_record
from simulator.people import MIXES, People


def change(conn, record, at_ms: int) -> None:
    store_record(conn, record, at_ms)
    record_sync_events(conn, [sync_event_row(SAVED_FROM_DEVICE, 1, record.user_id, at_ms=at_ms)])


def run(engine, records: list, writers: int) -> dict:
    """Commit one change per record, split among ``writers`` threads; changes/s and ms per change."""
    shares = [records[i::writers] for i in range(writers)]
    took: list[float] = []

    def write(share):
        for record in share:
            started = time.perf_counter()
            with engine.begin() as conn:
                change(conn, record, int(time.time() * 1000))
            took.append(time.perf_counter() - started)

    threads = [threading.Thread(target=write, args=(share,)) for share in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    took.sort()
    return dict(writers=writers, changes=len(records), changes_per_s=round(len(records) / wall, 1),
                ms_per_change_p50=round(took[len(took) // 2] * 1000, 3), ms_per_change_p99=round(took[int(len(took) * 0.99)] * 1000, 3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="an empty database (default: SQLite in a scratch folder, WAL, synchronous=FULL)")
    p.add_argument("--changes", type=int, default=1000, help="changes per measurement (default 1000)")
    p.add_argument("--writers", type=int, default=2, help="concurrent writers of the second measurement (default 2)")
    p.add_argument("--mix", default="typical", choices=sorted(MIXES), help="record size, as the fleet's --mix (default typical)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='change-cost-')) / 'gateway.db'}"
    engine = make_engine(url)
    migrate(engine)
    people = People(1, mix=MIXES[args.mix])
    run(engine, [people.person(f"warm-up-{n}") for n in range(50)], 1)  # connections opened, pages cached
    figures = []
    for writers in (1, args.writers):
        records = [people.person(f"cost-{writers}-{n}") for n in range(args.changes)]
        figures.append(run(engine, records, writers))
    engine.dispose()
    print(f"database {engine.url.get_backend_name()}, {args.mix} records")
    for f in figures:
        print(f"{f['writers']} writer(s): {f['changes_per_s']:,.0f} changes/s, {f['ms_per_change_p50']:.2f} ms p50, "
              f"{f['ms_per_change_p99']:.2f} ms p99 per change transaction")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(database=engine.url.get_backend_name(), mix=args.mix, runs=figures), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
