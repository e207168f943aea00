"""benchmarks/big_log.py fills a small log, measures it beside an empty database and writes its
figures; the figures themselves are the machine's business and are never judged here."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_big_log_benchmark_prints_and_writes_both_databases_figures(postgres, tmp_path):
    out = tmp_path / "big_log.json"
    run = subprocess.run([sys.executable, "benchmarks/big_log.py", "--db", postgres.new_database(), "--empty-db", postgres.new_database(),
                          "--events", "20000", "--batch", "400", "--batches", "2", "--rounds", "2", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    assert "by_ingested p99 ms" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["events"] == 20000
    for side in ("empty", "full"):
        assert figures[side]["ingest"]["events_per_s"] > 0 and set(figures[side]["queries"]) >= {"newest", "by_user", "by_ingested", "all"}
