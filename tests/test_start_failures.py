"""Every entry point that runs a reactor ends at once when it cannot start: exit status 1, one
line on standard error saying why, no traceback, no thread left holding the process."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def taken_port():
    """A loopback port someone else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def closed_port():
    """A loopback port nobody listens on, held so that nobody can start to."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / command, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def assert_cannot_start(done: subprocess.CompletedProcess, prefix: str, *mentions: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"{prefix}: cannot "), done.stderr
    for text in mentions:
        assert text in done.stderr


def test_gateway_run_on_a_taken_terminal_port(tmp_path, taken_port):
    config = tmp_path / "gateway.toml"
    config.write_text('tcp_host = "127.0.0.1"\napi_token = "t"\n')
    done = run("gateway", "run", "--config", str(config), "--tcp-port", str(taken_port), "--http-port", "0", cwd=tmp_path)
    assert_cannot_start(done, "gateway", f"{taken_port}", "in use")


def test_gateway_run_on_a_taken_http_port_stops_what_had_started(tmp_path, taken_port):
    done = run("gateway", "run", "--api-token", "t", "--tcp-port", "0", "--http-port", str(taken_port), cwd=tmp_path)
    assert_cannot_start(done, "gateway", f"{taken_port}", "in use")


def test_gateway_run_on_an_unreachable_database(tmp_path, closed_port):
    url = f"postgresql+psycopg2://gateway:hidden@127.0.0.1:{closed_port}/gateway"
    done = run("gateway", "run", "--api-token", "t", "--db", url, "--tcp-port", "0", "--http-port", "0", cwd=tmp_path)
    assert_cannot_start(done, "gateway", "Connection refused")
    assert "hidden" not in done.stdout + done.stderr


def test_gateway_run_on_a_database_in_a_missing_folder_says_so_not_a_token_problem(tmp_path):
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'gateway.db'}"
    done = run("gateway", "run", "--db", url, "--tcp-port", "0", "--http-port", "0", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr  # a setting that cannot work, as bad configuration
    assert f"there is no folder {tmp_path / 'no-such-folder'}" in done.stderr and "token" not in done.stderr


def test_gateway_demo_on_a_taken_port(tmp_path, taken_port):
    done = run("gateway-demo", "--terminals", "1", "--bus-terminals", "1", "--tcp-port", "0", "--http-port", str(taken_port),
               cwd=tmp_path)
    assert_cannot_start(done, "gateway-demo", f"{taken_port}", "in use")


def test_a_simulated_terminal_on_a_taken_port(tmp_path, taken_port):
    done = run("simulator", "terminal", "--listen", str(taken_port), "--id", "7", "--secret", "s", cwd=tmp_path)
    assert_cannot_start(done, "simulator", f"{taken_port}", "in use")


def test_a_failed_first_start_keeps_no_device_no_token_and_no_mode(tmp_path, taken_port, closed_port):
    import sqlalchemy

    done = run("gateway", "run", "--zk", f"127.0.0.1:{closed_port}", "--sync-mode", "specific", "--tcp-port", str(taken_port),
               "--http-port", "0", cwd=tmp_path)
    assert_cannot_start(done, "gateway", f"{taken_port}", "in use")
    assert not (tmp_path / "gateway.token").exists()  # so the next start makes one and prints it
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    with engine.connect() as conn:
        kept = {table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() for table in ("terminals", "settings")}
    engine.dispose()
    assert kept == {"terminals": 0, "settings": 0}  # no ZK device stored as admitted, no sync mode


def test_a_postgres_url_gets_the_gateways_words(tmp_path):
    done = run("gateway", "run", "--api-token", "t", "--db", "postgres://gateway@127.0.0.1/gateway", "--tcp-port", "0", "--http-port", "0",
               cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "sqlalchemy.dialects" not in done.stderr, done.stderr
    assert "postgresql+psycopg2://" in done.stderr
