"""benchmarks/fleet_cost.py plays a gateway to a real fleet to the end and prints its figures; the
figures themselves are the machine's business and are never judged here."""

import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_fleet_cost_benchmark_pushes_to_every_terminal_and_prints_its_figures():
    base_port = random.randrange(20_000, 30_000)  # below the ephemeral range; a fixed one could be another run's
    run = subprocess.run([sys.executable, "benchmarks/fleet_cost.py", "--devices", "3", "--rounds", "2", "--round-s", "0.2",
                          "--idle-s", "0.5", "--base-port", str(base_port)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "3 terminals, 2 rounds of one user each" in run.stdout and "us a delivery" in run.stdout
