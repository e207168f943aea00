"""DatabaseServer: the CPU and the WAL a PostgreSQL server on this machine spends during a load test.

On a small machine the server's backends and WAL writer share the cores with the gateway and
the fleet, so a delivery's cost on PostgreSQL is the gateway's CPU plus the server's. The
server is found from the URL alone: a Unix-socket host names the folder holding the socket's
lock file (``.s.PGSQL.<port>.lock``), whose first line is the postmaster's pid. Its CPU is the
postmaster's own, its children's running now (backends, WAL writer, checkpointer, ...) and
those it reaped (``/proc/<pid>/stat`` fields 14 to 17), as for the gateway
(tools/loadtest/gateway_process.py). Everything the server does counts, whoever asks it: on a
server of its own (a throwaway cluster) that is the gateway's work. A server over TCP may be on
another machine: not measured.
"""

import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class DatabaseServer:
    def __init__(self, postmaster_pid: int):
        self.pid = postmaster_pid

    @classmethod
    def of(cls, url: str) -> "tuple[DatabaseServer | None, str | None]":
        """The server behind ``url`` and None, or None and why its CPU is not measured."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            return None, "SQLite works inside the gateway's process: its CPU is the gateway's"
        host, port = parsed.query.get("host"), parsed.query.get("port", parsed.port or 5432)
        if not host or not str(host).startswith("/"):
            return None, "not measured: the server is reached over TCP (it may be on another machine)"
        lock = Path(str(host)) / f".s.PGSQL.{port}.lock"
        try:
            pid = int(lock.read_text().split()[0])
            Path(f"/proc/{pid}/stat").stat()
        except (OSError, ValueError, IndexError):
            return None, f"not measured: no running server's lock file at {lock}"
        return cls(pid), None

    def cpu_s(self) -> float:
        """User plus system CPU seconds of the postmaster, its children now and those it reaped."""
        total = _stat_ticks(self.pid, with_reaped=True)
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        for child in children.read_text().split() if children.exists() else ():
            total += _stat_ticks(int(child), with_reaped=False)
        return total / _CLOCK_TICKS


def _stat_ticks(pid: int, with_reaped: bool) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a backend that ended meanwhile: its ticks are in the postmaster's reaped ones
        return 0
    return sum(int(f) for f in fields[11:15 if with_reaped else 13])


def wal_position(engine: Engine) -> int | None:
    """Bytes of WAL the server has written so far (``pg_current_wal_lsn``); None on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")).scalar_one()
