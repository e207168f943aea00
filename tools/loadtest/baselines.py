"""Baselines measured in the same run as the load test, so its figures have a yardstick.

- ``raw_insert``: SQLAlchemy Core ``executemany`` of event rows shaped like the gateway's into a
  scratch copy of the events table on the same kind of database (a scratch SQLite file beside
  the gateway's, with the gateway's own pragmas; a scratch schema on PostgreSQL), in
  transactions as large as the gateway's group commits, and for contrast one commit per row.
- ``bare_sink``: a Twisted protocol that only counts bytes, fed PUT_USERS frames of one user
  record each over loopback TCP by a plain socket in another thread: no decoding, no database.
  Run as ``python -m tools.loadtest.baselines sink`` so its reactor is its own.
"""

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import MetaData, text

from gateway.store.database import make_engine
from gateway.sync.eventlog import EventLog
from gateway.store.schema import events
from protocol.events import EventCode, Origin
from protocol.frame import Flags, Frame, encode_frame
from protocol.messages import Command, put_users_payload
from protocol.records import UserRecordWire
from simulator.people import MIXES, People

SCRATCH_SCHEMA = "loadtest_scratch"


def event_rows(count: int, terminals: int = 200) -> list[dict]:
    """Rows as the gateway's event log writes them: one per terminal event, ids rising per terminal."""
    now = int(time.time() * 1000)
    codes = [(EventCode.VERIFY_SUCCESS, 1, "1-1"), (EventCode.ENROLL_SUCCESS, Origin.SERVER, "2-7"),
             (EventCode.UPDATE_SUCCESS, Origin.DEVICE, "3-5")]
    rows = []
    for n in range(count):
        code, sub_code, user_id = codes[n % len(codes)]
        rows.append(dict(terminal_id=n % terminals + 1, terminal_event_id=n // terminals + 1, type=code.name,
                         code=int(code), sub_code=int(sub_code), user_id=user_id, occurred_ms=now + n,
                         recorded_ms=now + n, detail=None))
    return rows


def raw_insert(db_url: str, run_dir: Path, rows: int) -> dict:
    """Rows a second: batched like the gateway's group commits, and with one commit per row."""
    is_sqlite = db_url.startswith("sqlite")
    engine = make_engine(f"sqlite:///{run_dir / 'scratch.db'}" if is_sqlite else db_url)
    schema = None if is_sqlite else SCRATCH_SCHEMA
    table = events.to_metadata(MetaData(), schema=schema)
    try:
        with engine.begin() as conn:
            if schema:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            table.create(conn)
        data = event_rows(rows)
        batch = EventLog.max_batch_events
        started = time.perf_counter()
        for first in range(0, rows, batch):
            with engine.begin() as conn:
                conn.execute(table.insert(), data[first : first + batch])
        batched = rows / (time.perf_counter() - started)
        single = event_rows(min(500, rows), terminals=1)
        for row in single:
            row["terminal_id"] = 0  # apart from the batched rows' keys
        started = time.perf_counter()
        for row in single:
            with engine.begin() as conn:
                conn.execute(table.insert(), row)
        per_row = len(single) / (time.perf_counter() - started)
        return dict(rows=rows, batch_rows=batch, rows_per_s=round(batched), one_commit_per_row_rows_per_s=round(per_row))
    finally:
        if schema:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


def sample_frames(mix: str, count: int = 64) -> tuple[bytes, int]:
    """PUT_USERS frames of one user each, as the gateway sends records to terminals."""
    people = People(12345, MIXES[mix])
    frames = [
        encode_frame(Frame(Command.PUT_USERS, put_users_payload([UserRecordWire.build(people.person(f"sink-{n}"))], True),
                           Flags.REQUEST, 1, n + 1))
        for n in range(count)
    ]
    return b"".join(frames), count


def bare_sink(mix: str, seconds: float) -> dict:
    """Run the sink in its own process (a reactor runs once per process); return its figures."""
    out = subprocess.run([sys.executable, "-m", "tools.loadtest.baselines", "sink", "--mix", mix, "--seconds", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(out.stdout)


async def _sink(reactor, mix: str, seconds: float) -> None:
    """Print the sink's figures as JSON; under task.react, so a failure exits 1 at once."""
    from twisted.internet import protocol, task

    chunk, frames_in_chunk = sample_frames(mix)
    received = [0, None]

    class Sink(protocol.Protocol):
        def dataReceived(self, data):
            if received[1] is None:
                received[1] = time.perf_counter()
            received[0] += len(data)

    listening = reactor.listenTCP(0, protocol.Factory.forProtocol(Sink), interface="127.0.0.1")
    stop = threading.Event()

    def send():
        with socket.create_connection(("127.0.0.1", listening.getHost().port)) as s:
            while not stop.is_set():
                s.sendall(chunk)

    threading.Thread(target=send, daemon=True).start()
    await task.deferLater(reactor, seconds, stop.set)
    elapsed = time.perf_counter() - (received[1] or time.perf_counter())
    frame_bytes = len(chunk) / frames_in_chunk
    frames_per_s = received[0] / frame_bytes / elapsed if elapsed else 0.0
    print(json.dumps(dict(seconds=round(elapsed, 2), frame_bytes=round(frame_bytes), frames_per_s=round(frames_per_s),
                          mb_per_s=round(received[0] / elapsed / 1e6, 1) if elapsed else 0.0)))


if __name__ == "__main__":
    from twisted.internet import task

    parser = argparse.ArgumentParser(prog="python -m tools.loadtest.baselines")
    parser.add_argument("what", choices=["sink"])
    parser.add_argument("--mix", default="typical", choices=sorted(MIXES))
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    task.react(_sink, [args.mix, args.seconds])
