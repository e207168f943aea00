"""The convergence check: the fleet's dumped user stores and logs against the server database.

It trusts neither the gateway's monitoring nor its cursors: it reads what the terminals said
they hold and produced (``simulator fleet --dump``) and what the server stored.

- An event is lost when a terminal produced it (ids 1..last_event_id) and the events table has
  no row for (terminal, id); duplicated when it has more than one.
- A terminal diverged when it lacks a user the server holds (unless it was deleted at that
  terminal and not changed since), holds a version whose digest differs from the server's, or
  holds a user the server does not know.
- An update made at a terminal is lost when the server lacks the user, or when merging that
  terminal's last version into the server's record would still change it: the server wins on
  fields it has, so a surviving change is one the merge has nothing left to take from. A user
  enrolled and deleted at the same keypad before the gateway fetched it is counted apart
  (``deleted_before_pull``): no terminal can hand over a record it no longer holds.

ZK devices (dumps with ``"kind": "zk"``) hold less than a record; tools/loadtest/zk_convergence.py
compares them as the mapping allows and counts their punches instead of matching event ids.
"""

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from gateway.sync.merge import merge_vacant_fields
from gateway.store.schema import events, users
from protocol.events import EventCode
from protocol.records import UserRecordWire
from tools.loadtest import zk_convergence

MAX_EXAMPLES = 10


# What makes a run fail: the report table and the exit status both judge by these.
LOSS_KEYS = ("lost_events", "duplicate_events", "unexpected_events", "lost_updates", "diverged_terminals")
# Users reconciliation had to repair after the fleet settled: the sync left them behind (harness.py).
REPAIR_KEY = "reconcile_repaired"


@dataclass
class Convergence:
    terminals: int = 0
    events_produced: int = 0
    events_stored: int = 0
    lost_events: int = 0
    duplicate_events: int = 0
    unexpected_events: int = 0  # stored with an id the terminal never produced
    server_users: int = 0
    lost_updates: int = 0
    missing_deliveries: int = 0  # (terminal, user) pairs the terminal should hold and does not
    stale_records: int = 0  # (terminal, user) pairs held in a version the server does not have
    deleted_before_pull: int = 0  # users enrolled and deleted at one keypad before the gateway fetched them
    diverged_terminals: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(getattr(self, key) for key in LOSS_KEYS)

    def note(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)


def load_dumps(dump_dir: Path) -> dict[int, dict]:
    dumps = {}
    for path in sorted(dump_dir.glob("terminal-*.json")):
        dump = json.loads(path.read_text())
        dumps[dump["terminal_id"]] = dump
    return dumps


def check(engine: Engine, dump_dir: Path, terminal_ids: list[int]) -> Convergence:
    dumps = load_dumps(dump_dir)
    result = Convergence(terminals=len(terminal_ids))
    with engine.connect() as conn:
        _check_events(conn, dumps, terminal_ids, result)
        server = {
            user_id: UserRecordWire.parse(blob)
            for user_id, blob in conn.execute(select(users.c.user_id, users.c.record).where(users.c.record.is_not(None)))
        }
    result.server_users = len(server)
    digests = {user_id: record.digest().hex() for user_id, record in server.items()}
    zk_dumps = [dumps[t] for t in terminal_ids if _is_zk(dumps.get(t))]
    lacking_fingers = zk_convergence.devices_missing_fingers(zk_dumps, result)
    for terminal_id in terminal_ids:
        dump = dumps.get(terminal_id)
        if dump is None:
            result.diverged_terminals += 1
            result.note(f"terminal {terminal_id}: no dump")
        elif _is_zk(dump):
            held = zk_convergence.holds_the_servers_users(dump, server, result)
            if not held or terminal_id in lacking_fingers:
                result.diverged_terminals += 1
            zk_convergence.check_changes_made_here(dump, server, result)
        else:
            if not _holds_the_servers_users(dump, digests, result):
                result.diverged_terminals += 1
            _check_changes_made_here(dump, server, result)
    return result


def _is_zk(dump: dict | None) -> bool:
    return dump is not None and dump.get("kind") == "zk"


def _check_events(conn, dumps: dict[int, dict], terminal_ids: list[int], result: Convergence) -> None:
    c = events.c
    stored = {
        row.terminal_id: row
        for row in conn.execute(
            select(c.terminal_id, func.count().label("rows"), func.count(c.terminal_event_id.distinct()).label("ids"),
                   func.max(c.terminal_event_id).label("highest"))
            .where(c.terminal_event_id.is_not(None))
            .group_by(c.terminal_id)
        )
    }
    for terminal_id in terminal_ids:
        row = stored.get(terminal_id)
        rows, ids, highest = (row.rows, row.ids, row.highest) if row else (0, 0, 0)
        if _is_zk(dumps.get(terminal_id)):
            # Punches carry no id the device reports: count them. The driver's notes of keypad
            # changes it found (enrol, update, delete events) are its own, in any number.
            last = dumps[terminal_id]["punches"]
            punches = conn.execute(
                select(func.count(c.terminal_event_id.distinct()))
                .where(c.terminal_id == terminal_id, c.type == EventCode.VERIFY_SUCCESS.name)
            ).scalar()
            lost, unexpected = max(0, last - punches), max(0, punches - last)
        else:
            last = dumps.get(terminal_id, {}).get("last_event_id", 0)
            unexpected = 0
            if highest > last:
                unexpected = conn.execute(
                    select(func.count(c.terminal_event_id.distinct()))
                    .where(c.terminal_id == terminal_id, c.terminal_event_id > last)
                ).scalar()
            lost = last - (ids - unexpected)
        result.events_produced += last
        result.events_stored += rows
        result.duplicate_events += rows - ids
        result.unexpected_events += unexpected
        result.lost_events += lost
        if lost:
            result.note(f"terminal {terminal_id}: {lost} of its {last} events are not stored")
        if unexpected:
            result.note(f"terminal {terminal_id}: {unexpected} more events stored than it produced ({last})")


def _holds_the_servers_users(dump: dict, digests: dict[str, str], result: Convergence) -> bool:
    terminal_id, held = dump["terminal_id"], dump["users"]
    expected = set(digests) - set(dump["deleted_here"])
    missing = expected - set(held)
    stale = [u for u, entry in held.items() if digests.get(u) != entry["digest"]]
    result.missing_deliveries += len(missing)
    result.stale_records += len(stale)
    for user_id in sorted(missing)[:2]:
        result.note(f"terminal {terminal_id} lacks user {user_id}")
    for user_id in stale[:2]:
        what = "a version the server does not have" if user_id in digests else "a user the server does not know"
        result.note(f"terminal {terminal_id} holds {what}: {user_id}")
    return not missing and not stale


def _check_changes_made_here(dump: dict, server: dict, result: Convergence) -> None:
    deleted_here = set(dump["deleted_here"])
    for user_id, encoded in dump["changed_here"].items():
        local = UserRecordWire.parse(base64.b64decode(encoded))
        kept = server.get(user_id)
        if kept is None and user_id in deleted_here:
            # Enrolled and deleted at this keypad before the gateway fetched it: a terminal cannot
            # hand over a record it no longer holds (the gateway reports "User update dropped").
            result.deleted_before_pull += 1
            continue
        if kept is None or merge_vacant_fields(kept, local) != kept:
            result.lost_updates += 1
            result.note(f"terminal {dump['terminal_id']}: its change of user {user_id} did not reach the server")
