"""benchmarks/round_trip_floor.py: its bare server takes a real fleet through every round trip and
its figures add up; how fast the machine is stays the machine's business."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_floor_delivers_every_change_to_every_terminal_and_leaves_nothing_unanswered(tmp_path):
    report = tmp_path / "floor.json"
    run = subprocess.run([sys.executable, "benchmarks/round_trip_floor.py", "--floor-only", "--devices", "3", "--rates", "4",
                          "--duration", "1", "--pairs", "1", "--json", str(report)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [floor] = json.loads(report.read_text())["runs"]
    assert floor["kind"] == "floor" and floor["changes"] == 4
    assert floor["deliveries"] == floor["pushed"] == floor["answered"] == floor["applied"] == 3 * 4
    assert floor["events_acked"] == 12 and floor["unanswered"] == 0
    assert 0 <= floor["cpu_s"] < 5 and floor["cpu_us_per_delivery"] is not None  # CPU comes in 10 ms ticks
    assert "rate 4/s: floor" in run.stdout
