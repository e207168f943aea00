"""What a big event log costs: ingest and the API's event queries on a PostgreSQL events table
after ``--events`` rows (10^7 by default) were added in bulk, beside an empty one.

The rows are a year of logs, the 52 weeks before this one, made by the database itself (``INSERT
... SELECT generate_series``, keyed as the gateway keys them, gateway/store/order.py): each week
is filled as a table of its own without indexes, then attached as that week's partition
(gateway/store/partitions.py), which builds its indexes once over the whole week: minutes, not
the hours a fleet would take, nor the ten minutes of inserting through the indexes. The past
weeks are then closed one at a time, oldest first, as the gateway's hourly run closes them (each
close copying the week's events naming a user, gateway/store/user_events.py; the last close's
time is printed: a week's at 10^7), and the bulk's pages written out
(``CHECKPOINT``) so that ingest is not measured during their write-back. Ingest is the event log's own group-commit work
(``gateway.sync.eventlog._store``: batches of ``--batch`` events from 200 terminals, with the
once-only check of resends); the queries are ``/api/events``'s (``read_events``): the newest
page, by type, by user (a regular met every week, a visitor met in one, and a user of the
ingest measurements, whose page is full in the empty table too), by terminal, and a
follower's ``after``: p50 and p99 as a caller sees them, and ("db ms") the database's planning
and execution time of the page's statements (the median of 11).

The full database and ``--empty-db`` are measured side by side, a commit or a query of each in
turn: on a shared machine the load drifts by more, over the minutes between two measurements
one after the other, than what a year of events costs a page. The empty one has the same open
weeks (last week's partition too, empty), so the two differ by the closed year alone. Each round
of commits or queries asks the databases in the other order than the last, and the interpreter's
garbage collections run between rounds: left on, they landed where the loop's allocations put
them, in one database's queries more than the other's, and moved a p99 by half.

    python benchmarks/big_log.py --db postgresql://.../big --empty-db postgresql://.../empty       # 10^7 events
    python benchmarks/big_log.py --db ... --empty-db ... --events 1000000
    python benchmarks/big_log.py --db ... --empty-db ... --ingest-users 100000   # ingest naming many people
"""

import argparse
import gc
import json
import random
import statistics
import time
from pathlib import Path

from sqlalchemy import event, text

from gateway.http.queries import EVERYTHING, EventFilter, read_events
from gateway.store.database import make_engine, migrate, transaction
from gateway.store.order import ROWS_PER_TRANSACTION
from gateway.store.partitions import WEEK_MS, attach_week, close_weeks, make_weeks, week_of
from gateway.sync.eventlog import _store, _Submission
from protocol.events import Event, EventCode, Origin

TERMINALS = 200
WEEKS = 52
NOW_MS = int(time.time() * 1000)
FIRST_WEEK = week_of(NOW_MS - WEEKS * WEEK_MS)
VISITOR_WEEK = 10  # the one week whose first three events are a visitor's, met nowhere else in the year

# Mostly verifications at the door, a few enrolments and server updates: as a site's log reads.
BULK = """
INSERT INTO {week} (id, terminal_id, terminal_event_id, log_epoch, type, code, sub_code, user_id, occurred_ms, recorded_ms, detail)
SELECT (pg_current_xact_id()::text::bigint << 22) + (g - :first),
       g % {terminals} + 1, g / {terminals} + 1, 1,  -- log 1: apart from the ingest measurements' log 0
       CASE WHEN g % 50 = 0 THEN 'ENROLL_SUCCESS' WHEN g % 50 = 1 THEN 'User update succeeded (Server)' ELSE 'VERIFY_SUCCESS' END,
       CASE WHEN g % 50 = 1 THEN NULL ELSE 1 END, 2,
       CASE WHEN g BETWEEN :visitor AND :visitor + 2 THEN 'visitor' ELSE 'u' || (g % 100000) END, :start + (g - :first)::bigint * :step, :start + (g - :first)::bigint * :step, NULL
FROM generate_series(:first, :last) AS g
"""


def build(engine, count: int) -> tuple[float, float]:
    """Add ``count`` events over the year before this week, a week's partition a transaction;
    seconds it took, and seconds the last week's close took."""
    started = time.perf_counter()
    per_week = -(-count // WEEKS)
    assert per_week <= ROWS_PER_TRANSACTION
    for n in range(WEEKS):
        week = week_of(FIRST_WEEK.start_ms + n * WEEK_MS)
        first, last = n * per_week, min(count, (n + 1) * per_week) - 1
        if first > last:
            break
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {week.name} (LIKE events INCLUDING DEFAULTS)"))
            conn.execute(text(BULK.format(week=week.name, terminals=TERMINALS)),
                         dict(first=first, last=last, start=week.start_ms, step=WEEK_MS // per_week, visitor=VISITOR_WEEK * per_week))
            attach_week(conn, week)
    for n in range(WEEKS):  # as the hourly runs closed them, a week at a time, up to this week
        closing = time.perf_counter()
        close(engine, FIRST_WEEK.start_ms + (n + 1) * WEEK_MS)
        last_close_s = time.perf_counter() - closing
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE events"))
        conn.execute(text("CHECKPOINT"))  # the bulk's pages written out now, not during the measurements
    return time.perf_counter() - started, last_close_s


def close(engine, now_ms: int = NOW_MS) -> None:
    """Close the weeks past at ``now_ms``, as the gateway's hourly run does (gateway/store/partitions.py)."""
    with engine.begin() as conn:
        close_weeks(conn, now_ms)


def ingest(engines: list, batches: int, batch: int, first_id: int, users: int = 0) -> list[dict]:
    """Commit ``batches`` group commits of ``batch`` new events spread over the terminals into each
    of ``engines``, a commit into each in turn (the machine's drift touches all alike); each event
    of its terminal's one user (``u<terminal>``), or with ``users`` of one drawn from the bulk's
    first ``users`` (a site's many people at its doors). The figures of each engine."""
    took: list[list[float]] = [[] for _ in engines]
    draw = random.Random(first_id)
    user_of = (lambda t: f"u{t}") if not users else (lambda t: f"u{draw.randrange(users)}")
    per_terminal = max(1, batch // TERMINALS)
    next_id = {t: first_id for t in range(1, TERMINALS + 1)}
    logs: list[dict] = [{} for _ in engines]  # each terminal's log as the event log keeps it in memory: no lookups for new events
    for batch_no in measured_rounds(batches):  # the first, unmeasured, looks each terminal's log up, as its connection does once
        subs = []
        for t in range(1, TERMINALS + 1):
            evs = [Event(next_id[t] + n, NOW_MS, EventCode.VERIFY_SUCCESS, Origin.DEVICE, user_of(t)) for n in range(per_terminal)]
            next_id[t] += per_terminal
            subs.append(_Submission(t, evs, pull_users=False))
        for n, engine in in_turn(engines, batch_no):
            started = time.perf_counter()
            logs[n], _ = transaction(engine, _store, subs, [], NOW_MS, logs[n])
            if batch_no:
                took[n].append(time.perf_counter() - started)
    total = batches * per_terminal * TERMINALS  # measured
    return [dict(events_per_s=round(total / sum(t)), commit_ms_p99=ms(t, 99)) for t in took]


ASKED = {
    "newest": (EVERYTHING, None),
    "by_type": (EventFilter(types=("ENROLL_SUCCESS",)), None),
    "by_user": (EventFilter(user_id="u4242"), None),  # 100 events, two a week over the year: every week is read
    "by_visitor": (EventFilter(user_id="visitor"), None),  # 3 events in one week: that week is read
    # A full page in both databases (u7's ingested events; none of the regular's is in the empty one):
    # what the table's size alone costs a user's page.
    "by_ingested": (EventFilter(user_id="u7"), None),
    "by_terminal": (EventFilter(terminal_id=7), None),
    "after": (EVERYTHING, -1000),  # the newest thousand: a follower's page
}


def queries(engines: list, rounds: int) -> list[dict]:
    """p50 and p99 of the API's event queries on each of ``engines``, each query asked ``rounds``
    times, of each engine in turn (the machine's drift touches all alike)."""
    afters = []
    for engine in engines:
        with engine.connect() as conn:
            afters.append(max(0, (conn.execute(text("SELECT max(id) FROM events")).scalar() or 0) + ASKED["after"][1]))
    took: dict = {(name, n): [] for name in ASKED for n in range(len(engines))}
    for round_no in measured_rounds(rounds):  # the first, unmeasured, fills the connections' catalog caches, as a running gateway's are
        for name, (flt, after) in ASKED.items():
            for n, engine in in_turn(engines, round_no):
                started = time.perf_counter()
                with engine.connect() as conn:
                    read_events(conn, flt, afters[n] if after is not None else None, None, 100)
                if round_no:
                    took[name, n].append(time.perf_counter() - started)
    figures: list[dict] = []
    for n, engine in enumerate(engines):
        mine = {name: dict(p50_ms=ms(took[name, n], 50), p99_ms=ms(took[name, n], 99),
                           database_ms=database_ms(engine, flt, afters[n] if after is not None else None))
                for name, (flt, after) in ASKED.items()}
        everything = [t for name in ASKED for t in took[name, n]]
        mine["all"] = dict(p50_ms=ms(everything, 50), p99_ms=ms(everything, 99))
        figures.append(mine)
    return figures


def measured_rounds(count: int):
    """Round 0 (unmeasured: it warms up) to ``count``, the interpreter's garbage collections run
    between rounds: left on, they landed where a round's allocations set them off, in one
    database's share more than the other's."""
    gc.disable()
    try:
        for round_no in range(count + 1):
            gc.collect()
            yield round_no
    finally:
        gc.enable()


def in_turn(engines: list, round_no: int) -> list:
    """``(index, engine)`` of each engine, in the other order than the round before: none always first."""
    order = list(enumerate(engines))
    return order if round_no % 2 else order[::-1]


def database_ms(engine, flt, after, times: int = 11) -> float:
    """The database's own time for a page: planning and execution of each statement ``read_events``
    sends, by ``EXPLAIN (ANALYZE)`` (less shaken by a busy machine than the time a caller sees),
    the median of ``times`` (one alone was shaken too: 0.06 to 0.53 ms for one three-row lookup)."""
    sent = []
    listen = lambda conn, cursor, statement, parameters, context, many: sent.append((statement, parameters))
    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", listen)
        read_events(conn, flt, after, None, 100)
        event.remove(conn, "before_cursor_execute", listen)
        took = []
        for _ in range(times):
            total = 0.0
            for statement, parameters in sent:
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, SUMMARY) " + statement, parameters).scalars().all()
                total += sum(float(line.split(":")[1].split()[0]) for line in plan if line.startswith(("Planning Time", "Execution Time")))
            took.append(total)
    return round(statistics.median(took), 2)


def ms(took: list[float], p: int) -> float:
    ordered = sorted(took)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000, 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="an empty PostgreSQL database, filled with --events")
    p.add_argument("--empty-db", required=True, help="a second empty PostgreSQL database, on the same server, measured beside it")
    p.add_argument("--events", type=int, default=10_000_000, help="events to add (default 10^7)")
    p.add_argument("--batch", type=int, default=2000, help="events per group commit of the ingest measurement (default 2000)")
    p.add_argument("--batches", type=int, default=30, help="group commits per ingest measurement (default 30)")
    p.add_argument("--ingest-users", type=int, default=0, metavar="N",
                   help="each ingested event's user drawn from the bulk's first N users (default: one per terminal)")
    p.add_argument("--rounds", type=int, default=2000, help="times each query is asked of each database (default 2000: a p99 of fewer is one sitting's noise)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    full, empty = make_engine(args.db), make_engine(args.empty_db)
    if {full.dialect.name, empty.dialect.name} != {"postgresql"}:
        p.error("--db and --empty-db must be PostgreSQL databases (the bulk build is generate_series)")
    for engine in (full, empty):
        migrate(engine)
        close(engine)
    with empty.begin() as conn:  # the open weeks the full one has: what the two differ by is the closed year alone
        make_weeks(conn, NOW_MS - WEEK_MS, ahead=0)
    built_s, last_close_s = build(full, args.events)
    ingest([empty, full], 1, 100 * TERMINALS, 1)  # u7's page full of this week's events in both, as "by_ingested" wants
    # New events go above the bulk's ids, as a live site's would.
    ingested = ingest([empty, full], args.batches, args.batch, 1000, args.ingest_users)
    asked = queries([empty, full], args.rounds)
    figures = [dict(ingest=i, queries=q) for i, q in zip(ingested, asked)]
    for engine in (full, empty):
        engine.dispose()
    print(f"built {args.events:,} events in {built_s:.0f} s; the last week's close took {last_close_s:.2f} s")
    print(f"{'':18} {'empty':>10} {'full':>10} {'ratio':>7}")
    rows = [("ingest ev/s", *(f["ingest"]["events_per_s"] for f in figures))]
    for figure in ("p50_ms", "p99_ms", "database_ms"):
        rows += [(f"{name} {figure.removesuffix('_ms').replace('database', 'db')} ms", *(f["queries"][name][figure] for f in figures))
                 for name in figures[0]["queries"] if figure in figures[0]["queries"][name]]
    for name, before, after in rows:
        print(f"{name:18} {before:>10,} {after:>10,} {after / before if before else float('nan'):>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(events=args.events, built_s=round(built_s), last_close_s=round(last_close_s, 2),
                                                   empty=figures[0], full=figures[1]), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
