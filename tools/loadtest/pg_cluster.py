"""A throwaway PostgreSQL cluster: made with initdb in a folder of its own, listening on a Unix
socket there (no TCP port: one chosen before the server binds it could be taken meanwhile), run
as the ``postgres`` user when we are root (initdb refuses root), removed when stopped.

The tests run one with ``fsync`` off (their data is thrown away); ``make loadtest`` runs one
with it on, as a site runs it, so its capacity figures pay for every WAL flush.
"""

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

import sqlalchemy

PORT = 5432  # names the socket file in the cluster's own folder; no TCP port is opened


def server_binaries() -> str | None:
    """The folder of the newest installed PostgreSQL server's programs, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class PostgresCluster:
    def __init__(self, bindir: str, fsync: bool = False):
        self.bindir = bindir
        self.fsync = fsync
        self.dir = tempfile.mkdtemp(prefix="gateway-pg-")
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._ids = itertools.count()

    def _run(self, *cmd: str) -> None:
        argv = [os.path.join(self.bindir, cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    def start(self) -> None:
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.user, "--no-sync")
        self.resume()

    def halt(self) -> None:
        """Shut the server down, keeping its data: the database is "down"."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def crash(self) -> None:
        """Stop the server as a crash would (``-m immediate``: no checkpoint, recovery on the next start)."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        opts = f"-p {PORT} -k {self.dir} -c listen_addresses='' -c fsync={'on' if self.fsync else 'off'} -c max_connections=200"
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@/{database}?host={self.dir}&port={PORT}"

    def new_database(self, prefix: str = "gw_test") -> str:
        name = f"{prefix}_{next(self._ids)}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)
