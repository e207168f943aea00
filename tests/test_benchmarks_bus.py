"""benchmarks/bus.py --quick runs to the end and writes its figures; the figures themselves are the
machine's business and are never judged here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "baud", "line_bytes_per_s", "backlog_users", "backlog_s", "frame_time_fraction", "payload_bytes_per_s",
    "payload_fraction", "polls", "timeouts", "crc_errors", "push_one_user_s", "push_one_user_wire_s",
}


def test_quick_bus_benchmark_prints_a_table_and_writes_its_figures(tmp_path):
    out = tmp_path / "bus.json"
    run = subprocess.run([sys.executable, "benchmarks/bus.py", "--quick", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "frame time" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["devices"] == 8 and figures["quick"] is True
    (rate,) = figures["rates"]
    assert FIGURES <= set(rate)
    assert rate["baud"] == 115200
