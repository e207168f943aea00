"""gateway run --workers N, without processes: each worker's command line and role, and the
shared listening port (two sockets on one port, both accepting)."""

import io
import os
import signal
import socket
import sys
import threading
import time

import pytest
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from gateway.cli import worker_argv
from gateway.process.workers import Supervisor, WorkerRole, listen_shared, reserve_port


def test_a_worker_runs_the_same_command_on_the_ports_the_supervisor_holds_without_what_it_did_once():
    argv = ["--url", "http://x", "run", "--db", "postgresql://h/db", "--workers", "3", "--sync-mode=all",
            "--tcp-port", "0", "--http-port=0", "--config", "gw.toml"]
    assert worker_argv(argv, 3, 1, 4370, 8080) == [
        sys.executable, "-m", "gateway.cli", "--url", "http://x", "run", "--db", "postgresql://h/db", "--config", "gw.toml",
        "--tcp-port", "4370", "--http-port", "8080", "--worker", "1/3"]


def test_a_worker_role_is_one_of_n_and_the_first_is_the_primary():
    assert WorkerRole.parse("0/3").primary and not WorkerRole.parse("2/3").primary
    with pytest.raises(ValueError):
        WorkerRole.parse("3/3")


class SharedPortTests(unittest.TestCase):
    """In trial, so the reactor runs and the ports are closed for real."""

    @defer.inlineCallbacks
    def test_workers_listen_on_one_port_and_the_reservation_keeps_it(self):
        reserved = reserve_port("127.0.0.1", 0)
        self.addCleanup(reserved.close)
        port = reserved.getsockname()[1]
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        first = listen_shared(reactor, port, factory, "127.0.0.1")
        second = listen_shared(reactor, port, factory, "127.0.0.1")
        try:
            self.assertEqual((first.getHost().port, second.getHost().port), (port, port))
            with socket.socket() as plain:  # a process not sharing the port is refused it
                self.assertRaises(OSError, plain.bind, ("127.0.0.1", port))
        finally:
            yield first.stopListening()
            yield second.stopListening()


def test_a_port_another_program_holds_is_a_clear_start_failure():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(CannotListenError):
            listen_shared(reactor, other.getsockname()[1], protocol.Factory.forProtocol(protocol.Protocol), "127.0.0.1")



def _starts(path) -> list[int]:
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def test_a_worker_killed_by_a_signal_right_after_its_start_is_started_again(tmp_path):
    """Only a worker that gives up by itself at start stops them all; a SIGKILL is a restart."""
    started = tmp_path / "starts"
    script = f"import os, time; open({str(started)!r}, 'a').write(str(os.getpid()) + ' '); time.sleep(30)"
    out = io.StringIO()
    supervisor = Supervisor(1, lambda index: [sys.executable, "-c", script], out=out)
    supervisor.restart_pause_s = 0.0

    def operator():  # kills the worker as soon as it runs, then waits for its second start
        deadline = time.monotonic() + 20
        while not _starts(started) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _starts(started):
            os.kill(_starts(started)[0], signal.SIGKILL)
        while len(_starts(started)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        supervisor._stopping = True

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    threading.Thread(target=operator, daemon=True).start()
    try:
        status = supervisor.run()  # on this thread: it installs signal handlers
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert len(_starts(started)) == 2, out.getvalue()
    assert status == 0 and "ended with status -9; starting it again" in out.getvalue()
