"""The load test's figures for the database server: its CPU (postmaster and children, from /proc)
and its WAL, found from the gateway's URL alone, on a real PostgreSQL server."""

import sqlalchemy

from tools.loadtest.db_server import DatabaseServer, wal_position


def test_a_local_servers_cpu_and_wal_grow_with_the_work_it_does(postgres):
    url = postgres.new_database("db_server")
    server, why = DatabaseServer.of(url)
    assert why is None and server.pid > 0
    engine = sqlalchemy.create_engine(url)
    try:
        cpu_before, wal_before = server.cpu_s(), wal_position(engine)
        with engine.begin() as conn:  # a second of a backend's CPU, and a table's rows in the WAL
            conn.exec_driver_sql("CREATE TABLE busy AS SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
            conn.exec_driver_sql("SELECT count(*) FROM generate_series(1, 3000000)")
        assert server.cpu_s() - cpu_before >= 0.05
        assert wal_position(engine) - wal_before > 1_000_000
    finally:
        engine.dispose()


def test_servers_not_on_this_machines_sockets_are_not_measured_and_say_why(tmp_path):
    assert DatabaseServer.of(f"sqlite:///{tmp_path / 'g.db'}")[1].startswith("SQLite works inside the gateway")
    assert DatabaseServer.of("postgresql+psycopg2://u@db.example.com/gw")[1].startswith("not measured: the server is reached over TCP")
    assert DatabaseServer.of(f"postgresql+psycopg2://u@/gw?host={tmp_path}")[1].startswith("not measured: no running server's lock file")
