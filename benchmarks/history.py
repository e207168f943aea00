"""What a user's history costs: reading the history and provenance of a user with 1,000 versions
(target: under 50 ms), and what writing history adds to a merge and to a group commit of events.

The user's versions alternate keypad merges (through ``merge_pulled``, as the puller commits them)
and API edits; other users' histories lie in the same table, so the read goes through its index.
A merge is timed with the history written and with it skipped (alternated, best of four: the
machine may be shared), and apart from the database: the CPU its reasons cost, and per event what
the keypad check adds to a group commit of door events (none of which writes a history row).

    python benchmarks/history.py                         # SQLite in a scratch folder
    python benchmarks/history.py --db postgresql://... --json history.json
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from gateway.store.database import make_engine, migrate
from gateway.sync import eventlog, puller
from gateway.sync.changes import summary
from gateway.sync.history import TERMINAL as TERMINAL_SOURCE, history_row, provenance, read_history
from gateway.sync.merge import merge_reasons, merge_vacant_fields
from gateway.sync.puller import merge_pulled
from gateway.sync.users import create_user, edit_user, load_record
from protocol.events import Event, EventCode
from protocol.records import Card, CardType, UserRecord

NOW_MS = 1_700_000_000_000
TERMINAL = 7


def fill(engine, user_id: str, versions: int) -> None:
    """``versions`` versions of one user: odd ones a keypad adding a card and renaming (the
    card taken, the name refused), even ones an operator renaming."""
    with engine.begin() as conn:
        create_user(conn, UserRecord(user_id, name="v0"), NOW_MS)
    for v in range(1, versions):
        with engine.begin() as conn:
            if v % 2:
                current = load_record(conn, user_id)
                card = Card(CardType.SMART_CARD, v.to_bytes(4, "big"))
                pulled = UserRecord(user_id, name=f"keypad {v}", cards=current.cards[-1:] + (card,))
                merge_pulled(conn, TERMINAL, [pulled], [], 2**62, NOW_MS + v)
            else:
                edit_user(conn, user_id, {"name": f"v{v}", "cards": ()}, NOW_MS + v)


def timed(work, runs: int) -> list[float]:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        took.append((time.perf_counter() - started) * 1000)
    return took


def read_figures(engine, user_id: str, runs: int) -> dict:
    def history():  # read, and encoded as the API answers it
        with engine.connect() as conn:
            entries, more = read_history(conn, user_id, None, 10_000)
        assert not more
        json.dumps({"user_id": user_id, "history": entries}, ensure_ascii=False, separators=(",", ":")).encode()
        return entries

    def given():
        with engine.connect() as conn:
            return provenance(conn, load_record(conn, user_id))

    versions = sum(1 for e in history() if e["version"] is not None)
    h, p = timed(history, runs), timed(given, runs)
    return dict(versions=versions, history_ms_p50=round(statistics.median(h), 2), history_ms_max=round(max(h), 2),
                provenance_ms_p50=round(statistics.median(p), 2), provenance_ms_max=round(max(p), 2))


def merge_figures(engine, runs: int) -> dict:
    """ms per merge transaction (a card added and a name refused), with history and without."""
    def merges(prefix):
        def work():
            for i in range(runs):
                with engine.begin() as conn:
                    user_id = f"{prefix}-{i}"
                    create_user(conn, UserRecord(user_id, name="Ana"), NOW_MS)
                    merge_pulled(conn, TERMINAL, [UserRecord(user_id, name="Anna", cards=(Card(CardType.CSN, b"\1\2\3\4"),))], [], 2**62, NOW_MS)
        return work

    with_history, without = [], []
    for round_ in range(4):  # alternated, so that warming up and the shared machine weigh on both
        with_history += timed(merges(f"with{round_}"), 1)
        with mock.patch.object(puller, "record_history", lambda conn, rows: None), \
                mock.patch("gateway.sync.users.record_history", lambda conn, rows: None):
            without += timed(merges(f"without{round_}"), 1)
    with_history, without = min(with_history) / runs, min(without) / runs
    return dict(merges=runs, merge_ms_with_history=round(with_history, 3), merge_ms_without_history=round(without, 3))


def keypad_check_figures(events: int, runs: int) -> dict:
    """What the keypad check adds to a group commit, per event: it looks at every stored event
    for a keypad delete or an unpulled keypad change (door events here: none is one). Timed on
    the rows alone, without the database, whose commit (an fsync) would hide it."""
    rows = [eventlog._event_row(TERMINAL, 0, Event(i + 1, NOW_MS + i, EventCode.VERIFY_SUCCESS, 0, "u1"), NOW_MS) for i in range(events)]
    took = timed(lambda: eventlog._note_keypad_changes(rows, True, NOW_MS, []), runs)
    return dict(keypad_check_events=events, keypad_check_us_per_event=round(min(took) * 1000 / events, 4))


def reasons_figures(runs: int) -> dict:
    """CPU a merge spends on its history: the reasons, the event's summary, the row."""
    server = UserRecord("u1", name="Ana", cards=(Card(CardType.CSN, b"\1\2\3\4"),), access_groups=(1, 2))
    pulled = UserRecord("u1", name="Anna", pin_hash=b"p" * 32, cards=server.cards + (Card(CardType.SMART_CARD, b"\9"),))
    merged = merge_vacant_fields(server, pulled)

    def explain():
        changes = merge_reasons(server, pulled, merged)
        summary(changes)
        history_row("u1", TERMINAL_SOURCE, changes, NOW_MS, change_seq=1, terminal_id=TERMINAL)

    took = timed(lambda: [explain() for _ in range(100)], runs)
    return dict(merge_reasons_us=round(min(took) * 10, 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="an empty database (default: SQLite in a scratch folder)")
    p.add_argument("--versions", type=int, default=1000, help="versions of the user read back (default 1000)")
    p.add_argument("--others", type=int, default=200, help="other users with histories of their own (default 200, 10 versions each)")
    p.add_argument("--runs", type=int, default=20, help="reads timed (default 20)")
    p.add_argument("--json", metavar="FILE", help="write the figures here too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(args.db or f"sqlite:///{Path(scratch) / 'history.db'}")
        migrate(engine)
        for i in range(args.others):
            fill(engine, f"other-{i}", 10)
        fill(engine, "u1", args.versions)
        figures = {"db": engine.dialect.name, **read_figures(engine, "u1", args.runs), **merge_figures(engine, 50),
                   **reasons_figures(20), **keypad_check_figures(1000, 50), "load_average_1min": round(os.getloadavg()[0], 2), "target_history_ms": 50}
        engine.dispose()
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
