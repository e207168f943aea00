"""Several gateway processes on one port: ``gateway run --workers N``.

The parent reserves the ports (so port 0 stays one port for every worker and each restart),
starts N workers, each a whole gateway on the same PostgreSQL database listening on the shared
terminal port with SO_REUSEPORT (the kernel spreads incoming connections over them), restarts a
worker that dies, and stops them all on SIGTERM or Ctrl-C. Worker 0 is the primary: it alone
serves the HTTP API and page and whatever the gateway dials or masters (dialled terminals,
RS-485 buses, ZK devices), which must not be done N times. Which worker serves a terminal is
settled through the database (gateway/process/claims.py), so any process may be killed at any time.
"""

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from twisted.internet.error import CannotListenError

from gateway.native.accept import LISTEN_BACKLOG


@dataclass(frozen=True)
class WorkerRole:
    """Which of the workers this process is (the only one, by default)."""

    index: int = 0
    count: int = 1

    @property
    def primary(self) -> bool:
        return self.index == 0

    @classmethod
    def parse(cls, text: str) -> "WorkerRole":
        """``I/N`` as the parent passes it (``--worker``)."""
        index, _, count = text.partition("/")
        role = cls(int(index), int(count))
        if not 0 <= role.index < role.count:
            raise ValueError(f"worker {text!r}: expected I/N with 0 <= I < N")
        return role


SOLE = WorkerRole()


def _shared_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_shared(reactor, port: int, factory, host: str):
    """Listen on ``host:port`` beside the other workers (SO_REUSEPORT), as listenTCP would alone."""
    try:
        sock = _shared_socket(host, port)
    except OSError as exc:
        raise CannotListenError(host, port, exc) from None
    try:
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)  # it takes a duplicate of the socket
    finally:
        sock.close()


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: holds the port (0: a free one) for the workers."""
    return _shared_socket(host, port)


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all when told to.

    ``argv(index)``: the command line of worker ``index``. A worker that dies within
    ``start_s`` of its start could not start (a database down, a port in use): the others are
    stopped too and the supervisor exits 1, as a single gateway would. One killed by a signal
    is started again however soon it died: a worker killed by an operator, or by the kernel.
    """

    start_s = 5.0
    restart_pause_s = 1.0
    stop_s = 20.0  # a worker that has not stopped this long after SIGTERM is killed
    tick_s = 0.2

    def __init__(self, count: int, argv, out=sys.stdout):
        self.count = count
        self._argv = argv
        self._out = out
        self.workers: list[subprocess.Popen | None] = [None] * count
        self._started: list[float] = [0.0] * count
        self._stopping = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_signal)
        try:
            for index in range(self.count):
                self._spawn(index)
            while not self._stopping:
                failed = self._check()
                if failed is not None:
                    self._say(f"gateway: worker {failed} could not start; stopping the others")
                    return 1
                time.sleep(self.tick_s)
            return 0
        finally:
            self._stop_all()

    def _spawn(self, index: int) -> None:
        proc = subprocess.Popen(self._argv(index), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.workers[index] = proc
        self._started[index] = time.monotonic()
        role = " (HTTP API and page)" if index == 0 else ""
        self._say(f"worker {index} of {self.count} started, pid {proc.pid}{role}")

    def _check(self) -> int | None:
        """Restart every worker that died; the index of one that could not start, if any."""
        for index, proc in enumerate(self.workers):
            status = proc.poll()
            if status is None or self._stopping:
                continue
            if status > 0 and time.monotonic() - self._started[index] < self.start_s:
                return index  # it gave up by itself: killed by a signal, it is started again
            self._say(f"worker {index} (pid {proc.pid}) ended with status {status}; starting it again")
            time.sleep(self.restart_pause_s)
            self._spawn(index)
        return None

    def _stop_signal(self, signum, _frame) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        running = [p for p in self.workers if p is not None and p.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + self.stop_s
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"worker pid {proc.pid} did not stop within {self.stop_s:g} s; killing it")
                proc.kill()
                proc.wait()

    def _say(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def _die_with_parent() -> None:
    """In the worker, before it runs: a SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: a supervisor killed outright leaves its workers running
        pass
