"""`gateway-demo`, as `make demo` runs it: a gateway with simulated terminals showing sync, its
story on standard output and the gateway's log in a file."""

import subprocess
import sys
from pathlib import Path

from tools.demo import build_parser

BIN = Path(sys.executable).parent


def test_the_demo_shows_changes_at_terminals_reaching_the_others(tmp_path):
    result = subprocess.run(
        [BIN / "gateway-demo", "--terminals", "2", "--bus-terminals", "2", "--tcp-port", "0", "--http-port", "0",
         "--interval", "0.3", "--duration", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert all(line.startswith(">>> ") for line in out.splitlines()), out  # the story, nothing else
    log = tmp_path / "demo" / "gateway.log"
    assert f"the gateway's log goes to {log}" in out
    assert "monitoring page: http://127.0.0.1:" in out
    assert "operator enrols user 0001" in out
    assert "received user 0001 from the server" in out
    assert "terminal 201: received user" in out  # the bus terminals take part
    # The story says what the server made of each keypad change, not only that it was made.
    assert "server: user 0001 from terminal " in out and "merged into a new version: new user, taken whole: name " in out
    edits = [line for line in out.splitlines() if "operator edits user" in line]
    assert edits, out
    told = [line for line in out.splitlines() if line.startswith(">>> server: ") and "refused: " in line]
    assert told, out  # an edit's name or PIN the server had is refused, and the story says which rule kept it
    assert "User update succeeded (Device): user 0001" in log.read_text()
    assert "Starting factory" not in out + log.read_text()
    assert "Traceback" not in out + result.stderr
    assert (tmp_path / "demo" / "gateway.db").exists()


def test_the_demo_takes_a_database_and_a_number_of_terminals():
    args = build_parser().parse_args([])
    assert (args.db, args.terminals) == (None, 4)
    args = build_parser().parse_args(["--db", "sqlite:///x.db", "--terminals", "2"])
    assert (args.db, args.terminals) == ("sqlite:///x.db", 2)


def test_gateway_demo_points_to_the_demos_own_command():
    done = subprocess.run([BIN / "gateway", "demo", "--terminals", "2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "gateway: the demo is its own command now: gateway-demo (or make demo)\n"
