"""benchmarks/zk.py --quick runs to the end against two emulator processes and writes its figures;
the figures themselves are the machine's business and are never judged here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"decode_users_s", "decode_templates_s", "read_users_s", "read_templates_s", "fill_s", "user_table_bytes"}


def test_quick_zk_benchmark_prints_a_table_and_writes_its_figures(tmp_path):
    out = tmp_path / "zk.json"
    run = subprocess.run([sys.executable, "benchmarks/zk.py", "--quick", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "read_users_s" in run.stdout
    figures = json.loads(out.read_text())
    assert FIGURES <= set(figures) and figures["users"] == 200 and figures["quick"] is True


def test_the_link_benchmark_runs_to_the_end_and_reads_as_many_users_as_pyzk(tmp_path):
    out = tmp_path / "zk_link.json"
    run = subprocess.run([sys.executable, "benchmarks/zk_link.py", "--users", "50", "--link-bps", "65536", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    read = ("pyzk_read_users_s", "ours_read_users_s", "ours_read_users_4k_chunks_s")
    assert all(isinstance(figures[name], float) for name in read), figures  # a string says what failed
    assert "over the 67108864-byte transfer limit" in figures["huge_buffer_outcome"]


def test_the_sharing_benchmark_runs_to_the_end_for_both_sessions(tmp_path):
    out = tmp_path / "zk_share.json"
    run = subprocess.run([sys.executable, "benchmarks/zk_share.py", "--devices", "1", "--users", "20", "--poll-s", "0.5", "--seconds", "1",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    assert [figures[s]["session"] for s in ("held", "released")] == ["held", "released"]
    assert all(figures[s]["online_after_probe"] == 1 and figures[s]["probe_tries"] > 0 for s in ("held", "released"))


def test_the_write_pass_benchmark_runs_to_the_end_and_counts_requests(tmp_path):
    out = tmp_path / "zk_pass.json"
    run = subprocess.run([sys.executable, "benchmarks/zk_pass.py", "--users", "10", "--passes", "5", "--runs", "1", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    assert figures["passes"] == 5 and figures["requests_per_pass"] >= 9 and figures["pass_us"] > 0
