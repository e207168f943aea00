"""gateway-check --zk against emulated ZK devices: `simulator zk-terminal` processes for the
command as an operator runs it, and a device served in this process where the test must see
exactly what the device holds before and after ``--write``."""

import contextlib
import io
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from live_site import refusing_port
from protocol.zk.commands import Command
from simulator.zk.device import ZkDevice, populate
from simulator.zk.tcp import listen
from tools import check

BIN = Path(sys.executable).parent


@pytest.fixture
def zk_terminal(tmp_path):
    """Start ``simulator zk-terminal`` processes on ports of their choosing; yields a starter."""
    procs = []

    def start(*options: str) -> int:
        log = tmp_path / f"zk-{len(procs)}.log"
        with log.open("wb") as out:
            procs.append(subprocess.Popen([BIN / "simulator", "zk-terminal", "--port", "0", *options],
                                          stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 15
        while not (bound := re.search(r"ZK device \S+ on 127.0.0.1:(\d+)", log.read_text())):
            assert procs[-1].poll() is None and time.monotonic() < deadline, f"zk-terminal did not start:\n{log.read_text()}"
            time.sleep(0.05)
        return int(bound[1])

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def gateway_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "gateway-check", *args], capture_output=True, text=True, timeout=60)


def test_a_device_without_a_comm_key_passes_every_check(zk_terminal):
    port = zk_terminal("--users", "40", "--serial", "EMU-CHECK-1")
    result = gateway_check("--zk", f"127.0.0.1:{port}", "--write")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "PASS connect", "PASS version", "PASS options", "PASS sizes", "PASS users", "PASS templates", "PASS attendance", "PASS write"]
    assert "no comm key needed" in lines[0]
    assert "serial EMU-CHECK-1, fingerprint algorithm 10" in lines[2]
    assert "PASS users: 40 users in 72-byte records" in result.stdout
    assert "removed: the device holds what it held before" in result.stdout
    assert lines[-1] == "all checks passed"


def test_a_device_with_a_comm_key_passes_with_the_key_and_fails_clearly_without_it(zk_terminal):
    port = zk_terminal("--users", "3", "--comm-key", "123456")
    right = gateway_check("--zk", f"127.0.0.1:{port}", "--comm-key", "123456", "--write")
    assert right.returncode == 0, right.stdout + right.stderr
    assert "PASS connect: session 0x" in right.stdout and "comm key accepted" in right.stdout

    wrong = gateway_check("--zk", f"127.0.0.1:{port}", "--comm-key", "654321")
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines() == ["FAIL connect: the device refused the comm key given (ACK_UNAUTH)", "1 check(s) failed"]
    assert "Traceback" not in wrong.stderr

    none = gateway_check("--zk", f"127.0.0.1:{port}")
    assert none.returncode == 1
    assert "FAIL connect: the device has a comm key (ACK_UNAUTH): give it with --comm-key K" in none.stdout


def test_the_default_port_and_bad_addresses(zk_terminal):
    with refusing_port() as port:
        unreachable = gateway_check("--zk", f"127.0.0.1:{port}")
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith(f"gateway-check: cannot reach the ZK device at 127.0.0.1:{port}")
    for bad in ("127.0.0.1:70000", "127.0.0.1:x", ":4370"):
        result = gateway_check("--zk", bad)
        assert result.returncode == 2 and result.stderr.startswith("gateway-check: --zk: expected HOST or HOST:PORT"), bad
    key = gateway_check("--zk", "127.0.0.1", "--comm-key", "1000000")
    assert key.returncode == 2 and "--comm-key must be 0 to 999999" in key.stderr
    native = gateway_check("--terminal", "127.0.0.1:1")
    assert native.returncode == 2 and "--secret is required" in native.stderr


def test_a_peer_that_answers_garbage_fails_the_connect_check_in_one_line():
    with socket.create_server(("127.0.0.1", 0)) as server:
        def babble():
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                conn.recv(64)  # until the check gives up and closes

        thread = threading.Thread(target=babble, daemon=True)
        thread.start()
        result = gateway_check("--zk", f"127.0.0.1:{server.getsockname()[1]}", "--timeout", "1")
        thread.join(10)
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL connect: the device did not answer CONNECT within 1 s; the device also sent: ")
    assert "Traceback" not in result.stderr


class WriteLeavesTheDeviceAsItWas(unittest.TestCase):
    """``--write`` against a device served here, so the test compares its whole store."""

    timeout = 60

    def setUp(self):
        self.device = ZkDevice(comm_key=77)
        populate(self.device, 25, fingers=2)
        self.device.punch("3")
        self.port = listen(self.device, reactor)

    @defer.inlineCallbacks
    def tearDown(self):
        self.port.factory.drop_connections()
        yield self.port.stopListening()
        yield task.deferLater(reactor, 0.05, lambda: None)

    def run_check(self, *args: str):
        argv = ["--zk", f"127.0.0.1:{self.port.getHost().port}", "--comm-key", "77", *args]

        def captured():
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = check.main(argv)
            return code, out.getvalue()

        return threads.deferToThread(captured)

    def snapshot(self):
        return dict(self.device.users), dict(self.device.templates), list(self.device.attendance), dict(self.device.options)

    @defer.inlineCallbacks
    def test_write_stores_reads_back_and_removes_leaving_everything_as_it_was(self):
        before = self.snapshot()
        code, out = yield self.run_check("--write")
        assert code == 0, out
        assert "PASS write: user 999999999 written at uid 26 and read back" in out
        assert self.snapshot() == before
        assert self.device.requests[Command.USER_WRQ] == 1 and self.device.requests[Command.SAVE_USERTEMPS] == 1
        assert self.device.requests[Command.DELETE_USER] == 1

    @defer.inlineCallbacks
    def test_an_existing_user_with_the_reserved_id_is_never_overwritten(self):
        self.device.enroll("424242", "Someone Real", card=99, fingers={0: b"real finger"})
        before = self.snapshot()
        code, out = yield self.run_check("--write", "--test-user-id", "424242")
        assert code == 1, out
        assert "FAIL write: user id 424242 is already on the device: left alone" in out
        assert self.snapshot() == before
        assert not self.device.requests[Command.USER_WRQ] and not self.device.requests[Command.DELETE_USER]

    @defer.inlineCallbacks
    def test_without_write_nothing_is_written(self):
        before = self.snapshot()
        code, out = yield self.run_check()
        assert code == 0, out
        assert "PASS attendance: 1 records of 40 bytes, the latest at" in out
        assert "write" not in out
        assert self.snapshot() == before
        written = (Command.USER_WRQ, Command.DELETE_USER, Command.DELETE_USERTEMP, Command.SAVE_USERTEMPS, Command.DATA)
        assert not any(self.device.requests[c] for c in written)

    @defer.inlineCallbacks
    def test_a_device_that_goes_silent_during_the_write_is_one_fail_line(self):
        stored = self.device.put_user

        def then_silence(user):
            for connection in self.port.factory.connections:
                connection.session.write = lambda packet: None  # the device hangs: answers nothing more
            return stored(user)

        self.device.put_user = then_silence
        code, out = yield self.run_check("--write", "--timeout", "0.5")
        assert code == 1, out
        failure = out.splitlines()[-2]
        assert failure.startswith("FAIL write: the device did not answer USER_WRQ within 0.5 s; then removing the test user failed: "
                                  "nothing more can be asked in this session"), out
