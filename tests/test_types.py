"""The type checker holds each implementation to its interface (pyproject.toml, [tool.mypy]):
the whole configured check passes, and it does fail when an implementation breaks a contract."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_interfaces_and_their_implementations_agree():
    checked = mypy()
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_implementation_missing_a_method_is_caught(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from gateway.kinds import Serving\n"
        "class Forgetful:\n"
        "    def start(self) -> None: ...\n"
        "def served(s: Forgetful) -> Serving:\n"
        "    return s\n")
    checked = mypy("--config-file", str(ROOT / "pyproject.toml"), str(broken))
    assert checked.returncode == 1 and '(got "Forgetful", expected "Serving")' in checked.stdout
    assert "stop, terminal_online" in checked.stdout, "mypy names the members it lacks"
