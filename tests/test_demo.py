"""`gateway demo`, as `make demo` runs it: a gateway with simulated terminals showing sync."""

import subprocess
import sys
from pathlib import Path

GATEWAY = Path(sys.executable).with_name("gateway")


def test_the_demo_shows_changes_at_terminals_reaching_the_others(tmp_path):
    result = subprocess.run(
        [GATEWAY, "demo", "--terminals", "2", "--bus-terminals", "2", "--tcp-port", "0", "--http-port", "0", "--interval", "0.3", "--duration", "5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "monitoring page: http://127.0.0.1:" in out
    assert "operator enrols user 0001" in out
    assert "received user 0001 from the server" in out
    assert "User update succeeded (Device): user 0001" in out
    assert "terminal 201: received user" in out  # the bus terminals take part
    assert "Traceback" not in out + result.stderr
    assert (tmp_path / "demo" / "gateway.db").exists()
