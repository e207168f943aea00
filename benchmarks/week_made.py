"""What making a week costs while the default partition holds an old log (a migrated site's):
``add_week`` (gateway/store/partitions.py) runs inside the writer's group commit, so its time is
a stall of ingest. Measured with the index on the default partition's occurred time (migration
0010) and, as the baseline, without it: the whole of making a week, and alone the read that
finds the week's rows in the default partition (the rest is mostly the attach's check that the
default holds none of them, which reads it whole either way); each figure the median over
``--weeks`` weeks.

    python benchmarks/week_made.py                        # a throwaway cluster, 2 M old rows
    python benchmarks/week_made.py --db postgresql://... --rows 5000000 --json week_made.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from sqlalchemy import text

from gateway.store.database import make_engine, migrate
from gateway.store.partitions import DAY_MS, DEFAULT, WEEK_MS, add_week, week_of
from tools.loadtest.pg_cluster import PostgresCluster, server_binaries

NOW_MS = int(time.time() * 1000)
OLD_LOG = """
INSERT INTO events_default (id, terminal_id, terminal_event_id, log_epoch, type, code, sub_code, user_id, occurred_ms, recorded_ms, detail)
SELECT g, g % 200 + 1, g / 200 + 1, 1, 'VERIFY_SUCCESS', 1, 2, 'u' || (g % 100000), :start + g * 10, :start + g * 10, NULL
FROM generate_series(1, :rows) AS g
"""


def made_ms(engine, weeks_from: int, count: int) -> tuple[float, float]:
    """Median milliseconds to make each of ``count`` weeks, ``weeks_from`` weeks ahead on, in its
    own transaction, and then to find the rows of as many weeks further on in the default partition."""
    made, found = [], []
    for n in range(weeks_from, weeks_from + count):
        with engine.begin() as conn:
            started = time.perf_counter()
            add_week(conn, week_of(NOW_MS + n * WEEK_MS))
            made.append((time.perf_counter() - started) * 1000)
    for n in range(weeks_from + 100, weeks_from + 100 + count):
        week = week_of(NOW_MS + n * WEEK_MS)
        with engine.begin() as conn:
            started = time.perf_counter()
            conn.execute(text(f"SELECT count(*) FROM {DEFAULT} WHERE occurred_ms >= :start AND occurred_ms < :end"),
                         dict(start=week.start_ms, end=week.end_ms))
            found.append((time.perf_counter() - started) * 1000)
    return statistics.median(found), statistics.median(made)


def measure(url: str, rows: int, weeks: int) -> dict:
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text(OLD_LOG), dict(start=NOW_MS - 400 * DAY_MS, rows=rows))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE events"))
    indexed = made_ms(engine, 10, weeks)
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX ix_{DEFAULT}_occurred_ms"))
    unindexed = made_ms(engine, 10 + weeks, weeks)
    engine.dispose()
    return dict(rows=rows, weeks=weeks, indexed=dict(find_ms=round(indexed[0], 1), make_ms=round(indexed[1], 1)),
                unindexed=dict(find_ms=round(unindexed[0], 1), make_ms=round(unindexed[1], 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="an empty PostgreSQL database (default: a throwaway cluster)")
    p.add_argument("--rows", type=int, default=2_000_000, help="old events in the default partition (default 2 M)")
    p.add_argument("--weeks", type=int, default=3, help="weeks made per figure (default 3)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args()
    cluster = None
    if args.db is None:
        cluster = PostgresCluster(server_binaries())
        cluster.start()
    try:
        figures = measure(args.db or cluster.new_database(), args.rows, args.weeks)
    finally:
        if cluster is not None:
            cluster.stop()
    for label in ("indexed", "unindexed"):
        print(f"default partition holding {figures['rows']:,} old events, {label}: finding a week's rows "
              f"{figures[label]['find_ms']} ms, making the week {figures[label]['make_ms']} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
