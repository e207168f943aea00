"""Group commit of writes on a real PostgreSQL server: writes that queue while one commits share
the next commit, each in its own savepoint, so one that fails fails alone."""

import threading

import pytest
from sqlalchemy import insert, select, text

from gateway.store.database import Database, DatabaseFailure
from gateway.store.schema import settings
from thread_calls import ThreadCalls


@pytest.fixture
def db(postgres):
    reactor = ThreadCalls()
    database = Database(postgres.new_database(), reactor=reactor)
    database.start()
    yield database, reactor
    database.stop()


def store(conn, key: str) -> int:
    conn.execute(insert(settings), [dict(key=key, value="v")])
    return conn.execute(text("SELECT txid_current()")).scalar_one()


def refuse(conn, _key: str):
    raise LookupError("no such user")


def test_writes_queued_behind_a_commit_share_the_next_and_a_failing_one_fails_alone(db):
    database, reactor = db
    busy = threading.Event()

    def first(conn):
        busy.wait(10)  # holds the writer while the others queue
        return store(conn, "first")

    outcomes: dict = {}

    def keep(name):
        return lambda result: outcomes.__setitem__(name, result)

    database.write(first).addBoth(keep("first"))
    for name, work in (("a", store), ("refused", refuse), ("duplicate", store), ("b", store)):
        database.write(work, "a" if name == "duplicate" else name).addBoth(keep(name))
    busy.set()
    reactor.run_until(lambda: len(outcomes) == 5, "every write to be answered")
    assert outcomes["first"] != outcomes["a"]  # the first commit held the first write alone
    assert outcomes["a"] == outcomes["b"]  # the four queued behind it shared one transaction
    assert outcomes["refused"].check(LookupError)  # the work's own error, as without grouping
    assert outcomes["duplicate"].check(DatabaseFailure)
    stored = database.run_now(lambda conn: sorted(conn.execute(select(settings.c.key)).scalars()))
    assert stored == ["a", "b", "first"]  # what failed was rolled back, and only that
