"""What storing an event row costs the PostgreSQL server, by the way the rows are sent.

In a storm each delivery stores two event rows (the terminal's event, acknowledged after its
commit, and the pusher's monitoring row), and the server's CPU for them was most of what
PostgreSQL added to a delivery (docs/loadtest.md, "What the PostgreSQL server spends"). This stores rows
shaped like both, in group commits of ``--batch`` rows, into a migrated gateway database's
events table (its partitions and five indexes), two ways, alternating for ``--rounds``:

- ``values``: multi-row ``INSERT ... VALUES`` statements (psycopg2's ``execute_values``, 1,000
  rows a statement), ``ON CONFLICT DO NOTHING`` for the terminal's events: how main sent them;
- ``copy``: the gateway's ``insert_many`` and ``insert_ignoring_duplicates`` (``COPY``, through a
  temporary table for the rows that may be stored already; half a ``--batch`` below
  ``COPY_FROM_ROWS`` goes as VALUES there too, which is how that threshold was chosen).

It prints the server's CPU per row (the postmaster and its children, from /proc:
tools/loadtest/db_server.py) and the WAL per row. The server must be on this machine (a Unix
socket URL), and should be busy with nothing else.

    python benchmarks/row_cost.py                   # a throwaway cluster, fsync on
    python benchmarks/row_cost.py --db 'postgresql+psycopg2://postgres@/rc?host=/tmp/pg' --rows 40000
"""

import argparse
import json
import statistics
import sys
import time

from sqlalchemy import delete, select

from gateway.store.database import execute_values, insert_ignoring_duplicates, insert_many, make_engine, migrate
from gateway.store.order import keyed
from gateway.store.schema import events
from tools.loadtest.db_server import DatabaseServer, wal_position
from tools.loadtest.pg_cluster import PostgresCluster, server_binaries

COLUMNS = ("terminal_id", "terminal_event_id", "log_epoch", "type", "code", "sub_code", "user_id", "occurred_ms", "recorded_ms", "detail", "id")


def batch(first: int, n: int, now_ms: int) -> tuple[list[dict], list[dict]]:
    """A group commit's terminal events (ids the terminal gave them) and monitoring rows (none)."""
    terminal = [dict(terminal_id=i % 200 + 1, terminal_event_id=i // 200 + 1, log_epoch=0, type="ENROLL_SUCCESS", code=0x0101,
                     sub_code=1, user_id=f"{i % 200 + 1}-{i // 200}", occurred_ms=now_ms, recorded_ms=now_ms, detail=None)
                for i in range(first, first + n)]
    monitoring = [dict(row, terminal_event_id=None, type="User update succeeded (Server)", code=None, sub_code=None) for row in terminal]
    return terminal, monitoring


def by_values(conn, terminal: list[dict], monitoring: list[dict]) -> None:
    sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES %s"
    for rows, conflict in ((terminal, " ON CONFLICT DO NOTHING"), (monitoring, "")):
        execute_values(conn, sql + conflict, [tuple(row[c] for c in COLUMNS) for row in keyed(conn, rows)])


def by_copy(conn, terminal: list[dict], monitoring: list[dict]) -> None:
    insert_ignoring_duplicates(conn, events, keyed(conn, terminal))
    insert_many(conn, events, keyed(conn, monitoring))


WAYS = dict(values=by_values, copy=by_copy)


def measure(engine, server: DatabaseServer, way: str, rows: int, size: int, first: int) -> dict:
    with engine.begin() as conn:
        conn.execute(delete(events))  # each way starts from an empty table (``main`` refused a database holding events)
    cpu, wal, started = server.cpu_s(), wal_position(engine), time.perf_counter()
    now_ms = int(time.time() * 1000)
    for i in range(first, first + rows // 2, size // 2):
        terminal, monitoring = batch(i, size // 2, now_ms)
        with engine.begin() as conn:
            WAYS[way](conn, terminal, monitoring)
    return dict(way=way, server_cpu_us_per_row=round((server.cpu_s() - cpu) * 1e6 / rows, 1),
                wal_bytes_per_row=round((wal_position(engine) - wal) / rows), wall_us_per_row=round((time.perf_counter() - started) * 1e6 / rows, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="a PostgreSQL database on a Unix socket of this machine (default: a throwaway cluster)")
    p.add_argument("--rows", type=int, default=40_000, help="rows per way and round, half of each kind")
    p.add_argument("--batch", type=int, default=2_000, help="rows per group commit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    cluster = None
    if args.db is None:
        if server_binaries() is None:
            p.error("no PostgreSQL server installed: give --db")
        cluster = PostgresCluster(server_binaries(), fsync=True)
        cluster.start()
        args.db = cluster.new_database("row_cost")
    try:
        server, why = DatabaseServer.of(args.db)
        if server is None:
            p.error(why)
        engine = make_engine(args.db)
        migrate(engine)
        with engine.connect() as conn:
            if conn.execute(select(events.c.id).limit(1)).first() is not None:
                p.error(f"{args.db} holds events: give an empty database (each way empties the events table)")
        runs = []
        for r in range(args.rounds):
            for way in (WAYS if r % 2 == 0 else reversed(WAYS)):  # alternating, so the machine's drift favours neither
                runs.append(measure(engine, server, way, args.rows, args.batch, r * args.rows))
                print(f"round {r + 1} {way:>6}: {runs[-1]['server_cpu_us_per_row']:6.1f} us of server CPU a row, "
                      f"{runs[-1]['wal_bytes_per_row']} B of WAL, {runs[-1]['wall_us_per_row']:6.1f} us wall", flush=True)
        engine.dispose()
    finally:
        if cluster is not None:
            cluster.stop()
    medians = {way: statistics.median(r["server_cpu_us_per_row"] for r in runs if r["way"] == way) for way in WAYS}
    # A short run can fit in fewer server CPU ticks (10 ms) than it takes to see one: no ratio then.
    ratio = f"{medians['copy'] / medians['values']:.2f}" if medians["values"] else "no ratio: too few rows to measure"
    print(f"median server CPU a row: values {medians['values']} us, copy {medians['copy']} us ({ratio})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(rows=args.rows, batch=args.batch, runs=runs, median_server_cpu_us_per_row=medians), out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
