"""What every SQLite connection the gateway opens is set to: a real file, real connections."""

from sqlalchemy import text

from gateway.store.database import WAL_CHECKPOINT_PAGES, make_engine


def test_every_connection_is_durable_and_checkpoints_every_ten_thousand_pages(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    with engine.connect() as first, engine.connect() as second:  # the writer and a reader
        for conn in (first, second):
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL: an acknowledged event survives a power cut
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == WAL_CHECKPOINT_PAGES == 10_000
    engine.dispose()
