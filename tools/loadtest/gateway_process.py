"""GatewayProcess: the real ``gateway run`` command as a child process, for the load test and the tests.

What the load test measures (CPU, peak memory, latency) is then the product's, not a test
double's. The gateway is started on port 0 and the launcher reads the ports it bound from its
log, so no other process can take a port between its choice and its bind; a restart binds the
same ports again, where the terminals know it. The log goes to a file in the run folder.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START = "from gateway.cli import main; raise SystemExit(main())"
# What gateway/process/service.py logs once each port is bound.
_TCP_BOUND = re.compile(rb"listening for terminals on \S+:(\d+)")
_HTTP_BOUND = re.compile(rb"monitoring page at http://\S+:(\d+)/")
# What gateway/process/peers.py logs once a worker hears the others: until then what they say is lost.
_HEARING = re.compile(rb"gateway\.peers: listening to the other gateway processes$", re.MULTILINE)


class GatewayFailed(RuntimeError):
    pass


class GatewayProcess:
    def __init__(self, run_dir: Path, db_url: str, *, secret: str | None = None, config_file: Path | None = None, workers: int = 1):
        """``workers``: above 1, ``gateway run --workers N`` (PostgreSQL): a supervisor and its workers."""
        self.run_dir = run_dir
        self.db_url = db_url
        self.log_path = run_dir / "gateway.log"
        self.tcp_port: int | None = None  # known once the first start has bound it
        self.http_port: int | None = None
        if config_file is not None:
            self._options = ["--config", str(config_file)]
        else:
            self._options = ["--admission", "open", "--default-secret", secret]
        self.workers = workers
        if workers > 1:
            self._options += ["--workers", str(workers)]
        self.proc: subprocess.Popen | None = None
        self._log_start = 0  # where this start's lines begin in the log

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-c", _START, "run", "--db", self.db_url,
                "--tcp-port", str(self.tcp_port or 0), "--http-port", str(self.http_port or 0), *self._options]

    def spawn(self) -> "GatewayProcess":
        """Start it and return at once (a test's reactor keeps running); ``listening()`` says when it is up."""
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.run_dir)
        return self

    def listening(self) -> bool:
        """Whether this start has logged both bound ports (then in ``tcp_port`` and ``http_port``),
        and every worker its listening and its hearing the others.

        Raises ``GatewayFailed`` once the process has exited without doing so.
        """
        exited = self.proc.poll() is not None  # asked before reading, so a last line is not missed
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            lines = log.read()
        tcp, http = _TCP_BOUND.search(lines), _HTTP_BOUND.search(lines)
        workers_up = len(_TCP_BOUND.findall(lines)) >= self.workers
        if self.workers > 1:
            workers_up = workers_up and len(_HEARING.findall(lines)) >= self.workers
        if tcp and http and workers_up:
            self.tcp_port, self.http_port = int(tcp[1]), int(http[1])
            return True
        if exited:
            said = b"\n".join(lines.splitlines()[-5:]).decode(errors="replace")
            raise GatewayFailed(f"the gateway exited with status {self.proc.returncode}; see {self.log_path}; it said last:\n{said}")
        return False

    def start(self, timeout: float = 60.0) -> "GatewayProcess":
        """Start it and wait, at most ``timeout`` seconds, until it has bound its ports."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.listening():
            if time.monotonic() > deadline:
                raise GatewayFailed(f"the gateway did not start listening within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        """User plus system CPU seconds the gateway has used so far: all its threads and its child
        processes (the API process; the workers of ``--workers N``, and those that ended once reaped)."""
        total = 0.0
        for pid in [self.pid, *self.worker_pids()]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # a worker that ended
                continue
            # utime and stime (fields 14 and 15), and for the supervisor its reaped workers' (16 and 17)
            total += sum(int(f) for f in fields[11:15 if pid == self.pid else 13]) / _CLOCK_TICKS
        return total

    def worker_pids(self) -> list[int]:
        """The gateway's child processes running now: the workers of ``--workers N``, else the API process."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def memory_mb(self, key: str = "VmRSS") -> float:
        """Resident memory now (VmRSS) or at its peak (VmHWM), in MiB; with workers, the sum over
        the supervisor and the workers running now (for VmHWM, of each one's own peak)."""
        total = 0.0
        for pid in [self.pid, *self.worker_pids()]:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1]) / 1024
                    break
            else:
                raise GatewayFailed(f"/proc/{pid}/status has no {key}")
        return total

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything, as in a power cut."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker of ``--workers N``; the supervisor starts another."""
        if pid not in self.worker_pids():
            raise GatewayFailed(f"pid {pid} is not a worker of this gateway")
        os.kill(pid, signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def free_port() -> int:
    """A port nobody listens on right now: only for the fleet's listening terminals (``--listen``),
    which take a block of ports from one named up front. Racy, as any port named before its bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

