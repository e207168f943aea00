"""Terminal claims on a real PostgreSQL server, on the claims thread's own calls: a lock
connection that broke is made again, and the next check takes back every lock it lost, even
when a claim of another terminal made the new connection first."""

import psycopg2
import pytest
from sqlalchemy import create_engine, text

from gateway.process.claims import CLAIM_LOCK_SPACE, TerminalClaims, lock_key
from gateway.process.peers import connect_raw


@pytest.fixture
def engine(postgres):
    engine = create_engine(postgres.new_database())
    yield engine
    engine.dispose()


def locked(engine) -> set[int]:
    with engine.connect() as conn:
        keys = set(conn.execute(text("SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = :space AND granted"),
                                dict(space=CLAIM_LOCK_SPACE)).scalars())
    return {terminal_id for terminal_id in (1, 2) if lock_key(terminal_id) in keys}


def test_a_lock_lost_with_its_connection_is_taken_back_after_another_claim_made_the_next_one(engine):
    claims = TerminalClaims(lambda: connect_raw(engine, "claims"), reactor=None, on_lost=None)
    try:
        assert claims._try_lock(1) and locked(engine) == {1}
        with engine.connect() as conn:  # the database restarted under the lock connection
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'gateway claims%'"))
        with pytest.raises(psycopg2.Error):
            claims._try_lock(2)
        assert claims._try_lock(2) and locked(engine) == {2}  # a new connection, without terminal 1's lock
        assert claims._relock([1, 2]) == []
        assert locked(engine) == {1, 2}
    finally:
        claims._close()
