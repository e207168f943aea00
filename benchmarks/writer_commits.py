"""The writer thread's CPU per delivery at everyday rates: a replay of the event log's group commits.

At one enrolment a second across 200 terminals (SQLite) each change reaches 199 terminals, and
their UPDATE_SUCCESS events come back over some tens of ms, in about four group commits
(``EventLog.commit_window_s`` apart); the pushers' cursor moves and their "User update succeeded
(Server)" rows ride along in about three of them (a cProfile of a load test's gateway: 118 event
commits and 82 cursor settles for 30 enrolments). This replays that on a migrated SQLite file, on
the calling thread, through the same ``transaction`` and ``_store`` the writer thread runs, and
prints the thread's CPU per delivery (``time.thread_time``: fsync's wait is not CPU). Each round
replays ``--changes`` more, so each round's figure is at a larger file: SQLite's own work grows
with it (docs/loadtest.md, "The writer thread's share"). ``--python-only`` runs ``_store`` and its
riders against a connection that stores nothing: the gateway's own Python, which the database's
noise hides. ``--pages`` also counts the pages each round wrote to the WAL (checkpoints held
off meanwhile): what SQLite's work per delivery follows.

    python benchmarks/writer_commits.py [--changes 60] [--rounds 5] [--profile] [--python-only | --pages]
"""

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import event, insert
from sqlalchemy.dialects import sqlite

from gateway.store.database import make_engine, migrate, transaction
from gateway.store.schema import terminals
from gateway.sync.eventlog import LogState, _store, _Submission
from gateway.sync.monitor import APPLIED_BY_DEVICE, sync_event_row
from gateway.sync.pusher import advance_cursors
from protocol.events import Event, EventCode, Origin

TERMINALS = 200
USERS = 40  # the load test's enroll-storm changes 40 users over and over


def split(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` runs of nearly equal length, in order."""
    size, extra = divmod(len(items), parts)
    runs, first = [], 0
    for i in range(parts):
        last = first + size + (i < extra)
        runs.append(items[first:last])
        first = last
    return runs


def commits_of_change(change: int, now_ms: int, commits: int, settles: int) -> list[tuple[list[_Submission], list]]:
    """The group commits one change makes: each receiving terminal's UPDATE_SUCCESS (a submission
    of its own), and from the second commit on the cursor moves with their monitoring rows."""
    receivers = list(range(2, TERMINALS + 1))  # terminal 1 enrolled it
    user = f"user-{change % USERS}"
    subs = [_Submission(t, [Event(change + 1, now_ms, EventCode.UPDATE_SUCCESS, Origin.SERVER, user)], False) for t in receivers]
    moves = [(t, change + 1, [sync_event_row(APPLIED_BY_DEVICE, t, user, at_ms=now_ms)]) for t in receivers]
    riders = [[]] * (commits - settles) + [[(advance_cursors, (run,))] for run in split(moves, settles)]
    return list(zip(split(subs, commits), riders))


class NoDatabase:
    """A connection for ``_store`` that takes every statement and stores nothing."""

    dialect = sqlite.dialect()
    info: dict = {}

    def exec_driver_sql(self, *_):
        return ()

    execute = exec_driver_sql


def no_transaction(_engine, work, *args):
    return work(NoDatabase(), *args)


def replay(engine, first_change: int, changes: int, commits: int, settles: int, logs: dict, run=transaction) -> tuple[float, int]:
    """CPU seconds of this thread for ``changes`` changes' commits (each through ``run``), and the deliveries made."""
    spent = 0.0
    for change in range(first_change, first_change + changes):
        now_ms = int(time.time() * 1000)
        for batch, riders in commits_of_change(change, now_ms, commits, settles):
            started = time.thread_time()
            stored, _ = run(engine, _store, batch, [], now_ms, dict(logs), riders)
            spent += time.thread_time() - started
            logs.update(stored)
    return spent, changes * (TERMINALS - 1)


def wal_frames(engine, mode: str) -> int:
    """Checkpoint the WAL (``TRUNCATE`` empties it); the frames it held."""
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})").one()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=60, help="changes a round (default 60: a minute at 1/s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--commits", type=int, default=4, help="group commits a change's events take (default 4)")
    p.add_argument("--settles", type=int, default=3, help="of those, how many carry cursor moves (default 3)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--python-only", action="store_true", help="store nothing: the gateway's Python alone")
    what.add_argument("--pages", action="store_true", help="count the pages each round wrote to the WAL")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the last round (inflates Python's share)")
    args = p.parse_args(argv)
    if not 0 <= args.settles <= args.commits:
        p.error("--settles is how many of the --commits carry cursor moves: between 0 and --commits")
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'writer.db'}")
        migrate(engine)
        if args.pages:
            event.listen(engine, "connect", lambda dbapi_conn, _: dbapi_conn.execute("PRAGMA wal_autocheckpoint=0"))
            engine.dispose()  # the pooled connections were made without it
        with engine.begin() as conn:
            conn.execute(insert(terminals), [dict(terminal_id=t, admission="admitted") for t in range(1, TERMINALS + 1)])
        logs = {t: LogState(0, 0) for t in range(1, TERMINALS + 1)}
        run = no_transaction if args.python_only else transaction
        replay(engine, 0, args.changes, args.commits, args.settles, logs, run)  # warm: caches, the file's first pages
        figures = []
        for r in range(args.rounds):
            if args.pages:
                wal_frames(engine, "TRUNCATE")
            profile = cProfile.Profile(time.thread_time) if args.profile and r == args.rounds - 1 else None
            if profile:
                profile.enable()
            spent, deliveries = replay(engine, (r + 1) * args.changes, args.changes, args.commits, args.settles, logs, run)
            if profile:
                profile.disable()
                pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
            figures.append(spent / deliveries * 1e6)
            pages = f", {wal_frames(engine, 'PASSIVE') / deliveries:.2f} pages a delivery to the WAL" if args.pages else ""
            print(f"round {r + 1}: {figures[-1]:.1f} us of CPU per delivery ({deliveries} deliveries, "
                  f"{args.changes * args.commits} commits{pages})")
        print(f"median {statistics.median(figures):.1f} us per delivery over {args.rounds} rounds")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
