"""Shared fixtures: a throwaway PostgreSQL cluster, and database URLs to test against.

Storage and sync tests take ``db_url`` and run twice: on a real SQLite file and on a real
PostgreSQL server that this file starts (as the ``postgres`` user when run as root, since
initdb refuses root) and stops at the end of the session. The server listens on a Unix socket
in its own folder, no TCP port: a port chosen before the server binds it could be taken
meanwhile, by another test run or by the server's own halt and resume.
"""

import os

import pytest

from gateway.store.database import Database
from tools.loadtest.pg_cluster import PostgresCluster, server_binaries


def _started_cluster():
    bindir = server_binaries()
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


@pytest.fixture
def pg(postgres):
    """A migrated database of its own on the PostgreSQL server, used without a reactor."""
    database = Database(postgres.new_database(), reactor=None)
    database.open()
    yield database
    database.engine.dispose()
