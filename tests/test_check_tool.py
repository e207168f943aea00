"""gateway-check against a real simulated terminal process, listening on loopback."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live_site import refusing_port

BIN = Path(sys.executable).parent


@pytest.fixture
def terminal_port(tmp_path):
    """A simulated terminal process listening on a port of its choosing, read from its log."""
    log = tmp_path / "terminal.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BIN / "simulator", "terminal", "--listen", "0", "--id", "104", "--secret", "s-104"],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while not (bound := re.search(r"listening for a gateway on port (\d+)", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, f"the simulated terminal did not start listening:\n{log.read_text()}"
        time.sleep(0.05)
    yield int(bound[1])
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
    with refusing_port() as port:
        result = check("--terminal", f"127.0.0.1:{port}", "--secret", "x")
    assert result.returncode == 2
    assert result.stderr.startswith("gateway-check: cannot reach the terminal")
    assert "Traceback" not in result.stderr
