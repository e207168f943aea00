"""GatewayProcess: the gateway under test, started as its own process, and what /proc says of it.

The load test runs the real ``gateway run`` command, so what it measures (CPU, peak memory,
latency) is the product's, not a test double's. Its log goes to a file in the run folder.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START = "from gateway.cli import main; raise SystemExit(main())"


class GatewayFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, run_dir: Path, db_url: str, *, secret: str | None = None, config_file: Path | None = None):
        self.run_dir = run_dir
        self.db_url = db_url
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.log_path = run_dir / "gateway.log"
        argv = [sys.executable, "-c", _START, "run", "--db", db_url,
                "--tcp-port", str(self.tcp_port), "--http-port", str(self.http_port)]
        if config_file is not None:
            argv += ["--config", str(config_file)]
        else:
            argv += ["--admission", "open", "--default-secret", secret]
        self.argv = argv
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "GatewayProcess":
        """Start it and wait until it accepts terminals."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.run_dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise GatewayFailed(f"the gateway exited with status {self.proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise GatewayFailed(f"the gateway did not accept connections within {timeout:.0f} s; see {self.log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        """User plus system CPU seconds the gateway has used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime and stime: fields 14 and 15

    def memory_mb(self, key: str = "VmRSS") -> float:
        """Resident memory now (VmRSS) or at its peak (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise GatewayFailed(f"/proc/{self.pid}/status has no {key}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dialling_config(path: Path, terminal_ids: list[int], secret: str, first_port: int) -> Path:
    """A gateway configuration listing the fleet's terminals, each dialled on its own port."""
    entries = [
        f'[[terminals]]\nid = {tid}\nsecret = "{secret}"\ndial = "127.0.0.1:{first_port + n}"\n'
        for n, tid in enumerate(terminal_ids)
    ]
    path.write_text('admission = "allowlist"\n\n' + "\n".join(entries))
    return path
