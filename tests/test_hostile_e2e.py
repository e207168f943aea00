"""A live gateway (``gateway run``, its own process, SQLite) attacked from loopback by the clients
of tools/hostile.py: silent TLS sockets, an impatient guesser, a stalling crowd from the
terminals' own address, and an authenticated terminal that breaks the rules (issue 25, 1-4).
Every wait is bounded; no figure is judged (benchmarks/hostile.py prints them)."""

import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from processes import ROOT, Process, start_gateway
from protocol.errors import ErrorCode
from protocol.frame import Flags, Frame, encode_frame
from protocol.messages import Command, parse_body
from tools.hostile import GUESS, SILENT, STALL, Crowd, RawTerminal, certificates

TERMINAL, SECRET = 1, b"secret-1"


def start(tmp_path, settings: str = "") -> tuple[Process, int, str]:
    return start_gateway(tmp_path, {TERMINAL: "door"}, settings=settings)


def until(predicate, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def metric(page: str, name: str) -> float:
    text = urllib.request.urlopen(page + "metrics", timeout=10).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def cli(page: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "--url", page, "--token", "test-token", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.fixture
def pki(tmp_path):
    return certificates(tmp_path)


def test_silent_tls_sockets_are_closed_at_their_deadline_and_a_terminal_gets_in_meanwhile(tmp_path, pki):
    gateway, _, _ = start(tmp_path, "max_unauthenticated = 8\nmax_unauthenticated_per_address = 8\n"
                                    f'[tls]\nhost = "127.0.0.1"\nport = 0\ncert = "{pki["cert"]}"\nkey = "{pki["key"]}"\n')
    crowd = None
    try:
        tls_port = int(re.search(r"listening for terminals over TLS on [\d.]+:(\d+)", "".join(gateway.output)).group(1))
        crowd = Crowd(tls_port, 8, [f"127.0.0.{n}" for n in range(2, 6)], SILENT, reconnect=False).start()  # every place
        until(lambda: crowd.figures.connected == 8, "eight silent sockets connected")
        tls = ssl.create_default_context(cafile=str(pki["ca"]))
        terminal = RawTerminal(tls_port, TERMINAL, SECRET, tls=tls, server_name="localhost", timeout_s=30)
        assert terminal.authenticate().command == Command.WELCOME  # a place freed while the silent ones held them all
        until(lambda: crowd.figures.closed_by_gateway == 8, "every silent TLS socket closed by the gateway")
        terminal.close()
        crowd.stop()
        alone = Crowd(tls_port, 1, ["127.0.0.7"], SILENT, reconnect=False).start()  # nobody waits: the 10 s handshake deadline
        until(lambda: alone.figures.closed_by_gateway == 1, "a lone silent TLS socket closed at the handshake deadline")
        alone.stop()
    finally:
        if crowd is not None:
            crowd.stop()
        gateway.stop()


def test_an_impatient_guesser_gets_its_budget_of_proofs_checked_and_no_more_and_an_operator_lifts_the_lockout(tmp_path):
    gateway, tcp_port, page = start(tmp_path, "auth_slow_after = 3\nauth_lockout_after = 6\n")
    try:
        guesser = Crowd(tcp_port, 200, ["127.0.0.9"], GUESS, terminal_id=TERMINAL).start()  # 200 at once, again and again
        until(lambda: metric(page, "gateway_wrong_proofs_total") >= 6, "the address's budget of wrong proofs spent")
        until(lambda: guesser.figures.connected >= 2000, "two thousand connections tried")
        guesser.stop()
        assert guesser.figures.guesses_sent > 6
        assert metric(page, "gateway_wrong_proofs_total") == 6  # the budget of one lockout, however many were sent
        listed = until(lambda: "127.0.0.9" in (done := cli(page, "lockouts")).stdout and done, "the lockout listed")
        assert listed.returncode == 0 and "wrong proofs" in listed.stdout
        with pytest.raises(ConnectionError):  # the real terminal behind that address: the cost of an address lockout
            RawTerminal(tcp_port, TERMINAL, SECRET, source="127.0.0.9").authenticate()  # reset at connect or after it
        cleared = cli(page, "lockouts", "clear", "127.0.0.9")
        assert cleared.returncode == 0, cleared.stderr
        assert RawTerminal(tcp_port, TERMINAL, SECRET, source="127.0.0.9").authenticate().command == Command.WELCOME
        assert RawTerminal(tcp_port, TERMINAL, SECRET, source="127.0.0.10").authenticate().command == Command.WELCOME
    finally:
        gateway.stop()


def test_terminals_started_before_they_are_known_never_lock_their_address_out(tmp_path):
    gateway, tcp_port, page = start(tmp_path)
    try:
        for _ in range(30):  # more than the lockout threshold of refusals for an unknown id
            stranger = RawTerminal(tcp_port, 77, b"secret-77")
            answer = stranger.authenticate()
            assert answer.is_error and parse_body(answer).code == ErrorCode.UNKNOWN_TERMINAL
            stranger.close()
        assert cli(page, "lockouts").stdout.strip() == "no lockouts"
        assert RawTerminal(tcp_port, TERMINAL, SECRET).authenticate().command == Command.WELCOME
    finally:
        gateway.stop()


def test_a_stalling_crowd_from_the_terminals_own_address_keeps_no_terminal_out(tmp_path):
    gateway, tcp_port, _ = start(tmp_path)
    try:
        RawTerminal(tcp_port, TERMINAL, SECRET).authenticate()  # 127.0.0.1 is where it authenticated
        crowd = Crowd(tcp_port, 300, ["127.0.0.1"], STALL).start()  # a NAT: the crowd shares the terminal's address
        until(lambda: crowd.figures.hellos >= 64, "the crowd holding the address's places")
        terminal = RawTerminal(tcp_port, TERMINAL, SECRET, timeout_s=60)
        assert terminal.authenticate().command == Command.WELCOME
        assert crowd.open_connections > 200  # the crowd still stalls: the terminal got in during the attack
        crowd.stop()
    finally:
        gateway.stop()


def test_an_events_frame_with_the_error_flag_alone_is_refused_and_the_session_goes_on(tmp_path):
    gateway, tcp_port, _ = start(tmp_path)
    try:
        terminal = RawTerminal(tcp_port, TERMINAL, SECRET)
        terminal.authenticate()
        terminal.send_frame(Frame(Command.EVENTS, b"\x00\x00\x00", Flags.ERROR, TERMINAL, seq=5))
        refusal = terminal.next_frame()
        assert refusal.is_error and refusal.seq == 5 and parse_body(refusal).code == ErrorCode.BAD_MESSAGE
        terminal.send(encode_frame(Frame(Command.KEEPALIVE, b"", Flags.REQUEST, TERMINAL, seq=6)))
        assert terminal.next_frame().seq == 6  # answered: the session goes on
    finally:
        gateway.stop()
    assert "Unhandled Error" not in gateway.all_output()


# -- the API's port (issue 25, point 6) ----------------------------------------------------------

def http_answer(sock: socket.socket) -> bytes:
    """What the server says before it closes (bounded by the socket's time-out)."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return answer


def api_socket(page: str, source: str = "127.0.0.1", timeout_s: float = 30.0) -> socket.socket:
    host, port = page.split("//")[1].strip("/").split(":")
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout_s)
    sock.connect((host, int(port)))
    return sock


def test_the_api_answers_431_to_big_headers_and_408_to_a_slow_sender_and_caps_connections_per_address(tmp_path):
    gateway, _, page = start(tmp_path)
    held = []
    try:
        for request in (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
                        b"GET /api/sync HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
                        b"GET /api/sync HTTP/1.1\r\nHost: localhost\r\n" + (b"X-Long: " + b"c" * 40 + b"\r\n") * 400 + b"\r\n",
                        b"GET /api/sync HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 600 + b"\r\n"):
            sock = api_socket(page)
            sock.sendall(request)
            assert http_answer(sock).startswith(b"HTTP/1.1 431 ")
        declared = api_socket(page, timeout_s=5)  # a body said to be 99 MB, not sent: answered at once, not after 10 s
        declared.sendall(b"POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\n\r\n{}")
        assert http_answer(declared).startswith(b"HTTP/1.1 413 ")
        slow = api_socket(page)
        slow.sendall(b"GET /api/sync HTTP/1.1\r\n")  # a slowloris: one header a second, never the end
        started = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - started < 60:
                slow.sendall(b"X-Drip: 1\r\n")
                time.sleep(1)
        assert b"408" in http_answer(slow)
        held = [api_socket(page, "127.0.0.20") for _ in range(64)]
        for sock in held:
            sock.sendall(b"GET /api/sync HTTP/1.1\r\nHost: localhost\r\n")  # each holds its place, for now
        one_more = api_socket(page, "127.0.0.20")
        assert http_answer(one_more).startswith(b"HTTP/1.1 503 ")
        other = urllib.request.urlopen(page + "api/sync", timeout=10)  # another address is served meanwhile
        assert other.status == 200
    finally:
        for sock in held:
            sock.close()
        gateway.stop()
