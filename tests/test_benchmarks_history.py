"""benchmarks/history.py runs to the end on a small history and writes its figures; the figures
themselves are the machine's business and are never judged here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_history_benchmark_prints_and_writes_its_figures(tmp_path):
    out = tmp_path / "history.json"
    run = subprocess.run([sys.executable, "benchmarks/history.py", "--versions", "40", "--others", "3", "--runs", "2", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "history_ms_p50" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["versions"] == 40
    assert {"provenance_ms_p50", "merge_ms_with_history", "merge_ms_without_history", "keypad_check_us_per_event"} <= set(figures)
