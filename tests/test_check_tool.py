"""gateway-check against a real simulated terminal process, listening on loopback."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live_site import free_port

BIN = Path(sys.executable).parent


@pytest.fixture
def terminal_port():
    port = free_port()
    proc = subprocess.Popen(
        [BIN / "simulator", "terminal", "--listen", str(port), "--id", "104", "--secret", "s-104"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the simulated terminal did not start listening"
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "gateway-check", *args], capture_output=True, text=True, timeout=60)


def test_a_conforming_terminal_passes_every_check(terminal_port):
    result = check("--terminal", f"127.0.0.1:{terminal_port}", "--secret", "s-104", "--id", "104", "--write")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert "PASS put get delete" in result.stdout
    assert "PASS handshake: terminal 104, SIM-1" in result.stdout


def test_a_wrong_secret_fails_the_handshake_and_stops(terminal_port):
    result = check("--terminal", f"127.0.0.1:{terminal_port}", "--secret", "wrong")
    assert result.returncode == 1
    assert "FAIL handshake: the terminal's proof does not match" in result.stdout
    assert "keepalive" not in result.stdout
    assert "Traceback" not in result.stderr


def test_nobody_listening_is_a_clear_usage_error():
    result = check("--terminal", f"127.0.0.1:{free_port()}", "--secret", "x")
    assert result.returncode == 2
    assert result.stderr.startswith("gateway-check: cannot reach the terminal")
    assert "Traceback" not in result.stderr
