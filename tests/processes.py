"""Commands run as an operator runs them (``gateway run``, ``simulator terminal``), as child
processes whose output is read on a thread so that every wait for a line is bounded."""

import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Process:
    def __init__(self, *args: str):
        # No standard input: a simulator must not take the keypad of the terminal running pytest.
        self.popen = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
                self.output.append(line)
                found = re.search(pattern, line)
                if found:
                    return found
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s; output:\n{''.join(self.output)}") from None

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)

    def all_output(self) -> str:
        """Everything the process printed; call after it exited."""
        self._reader.join(10)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


def start_gateway(tmp_path, terminals: dict[int, str], *options: str, settings: str = "") -> tuple[Process, int, str]:
    """``gateway run`` on a SQLite file with ``terminals`` ({id: name}) configured, secret
    ``secret-<id>``, API token ``test-token``, and ``settings`` (TOML lines) in its configuration
    file; returns the process, its TCP port and page URL."""
    config = tmp_path / "gateway.toml"
    config.write_text('tcp_host = "127.0.0.1"\napi_token = "test-token"\n' + settings
                      + "".join(f'\n[[terminals]]\nid = {t}\nsecret = "secret-{t}"\nname = "{name}"\n' for t, name in terminals.items()))
    process = Process("gateway.cli", "run", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'gateway.db'}",
                      "--tcp-port", "0", "--http-port", "0", *options)
    try:
        tcp_port = int(process.wait_for(r"listening for terminals on [\d.]+:(\d+)").group(1))
        page = process.wait_for(r"monitoring page at (http://\S+/)").group(1)
    except BaseException:
        process.stop()
        raise
    return process, tcp_port, page


class KeypadClient:
    """A script at a simulated terminal's ``--control`` port: one command, one reply."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.replies = self.sock.makefile("r", encoding="utf-8")

    def command(self, line: str) -> tuple[str, list[str]]:
        """The status line and the data lines (their two-space indent removed)."""
        self.sock.sendall(line.encode() + b"\n")
        data = []
        while True:
            reply = self.replies.readline()
            if not reply:
                raise AssertionError(f"the terminal closed the control connection after {line!r}")
            if not reply.startswith("  "):
                return reply.rstrip("\n"), data
            data.append(reply[2:].rstrip("\n"))

    def ok(self, line: str) -> list[str]:
        status, data = self.command(line)
        assert status.startswith("ok"), f"{line!r} answered {status!r}"
        return data

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def eventually(predicate, what: str, timeout: float = 20.0, step: float = 0.1):
    """Poll ``predicate`` until it returns something true, at most ``timeout`` seconds; return it."""
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)
