"""Shared fixtures: a throwaway PostgreSQL cluster, and database URLs to test against.

Storage and sync tests take ``db_url`` and run twice: on a real SQLite file and on a real
PostgreSQL server that this file starts (as the ``postgres`` user when run as root, since
initdb refuses root) and stops at the end of the session. The server listens on a Unix socket
in its own folder, no TCP port: a port chosen before the server binds it could be taken
meanwhile, by another test run or by the server's own halt and resume.
"""

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
import sqlalchemy

from gateway.store.database import Database

PORT = 5432  # names the socket file in the cluster's own folder; no TCP port is opened


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class PostgresCluster:
    def __init__(self, bindir: str):
        self.bindir = bindir
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
        opts = f"-p {PORT} -k {self.dir} -c listen_addresses='' -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@/{database}?host={self.dir}&port={PORT}"

    def new_database(self) -> str:
        name = f"gw_test_{next(self._ids)}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url(name)


def _started_cluster():
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing: `make test` installs them (package postgresql)")
        pytest.skip("no PostgreSQL server installed (make test installs it)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def postgres():
    cluster = _started_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_postgres():
    """A cluster of the test's own, for tests that take the database server down."""
    cluster = _started_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def db(db_url):
    """A migrated database on each backend, used without a reactor (``run_now``)."""
    database = Database(db_url, reactor=None)
    database.open()
    yield database
    database.engine.dispose()
