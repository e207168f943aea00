"""benchmarks/row_cost.py runs to the end on a real PostgreSQL server and writes its figures; the
figures themselves are the machine's business and are never judged here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_row_cost_benchmark_prints_and_writes_its_figures(postgres, tmp_path):
    out = tmp_path / "row_cost.json"
    run = subprocess.run([sys.executable, "benchmarks/row_cost.py", "--db", postgres.new_database("row_cost"), "--rows", "400",
                          "--batch", "200", "--rounds", "2", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "median server CPU a row" in run.stdout
    figures = json.loads(out.read_text())
    assert [r["way"] for r in figures["runs"]] == ["values", "copy", "copy", "values"]
    assert set(figures["median_server_cpu_us_per_row"]) == {"values", "copy"}
