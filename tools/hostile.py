"""Hostile clients on loopback, for benchmarks/hostile.py and the tests that attack a live gateway:
a crowd of raw connections that stay silent, stall half-way through a frame, or guess secrets
without waiting for the answer, and a raw terminal that authenticates and then sends what it likes.

Everything here is plain blocking sockets and one selector thread: the attacker must not share
the gateway's reactor, nor need one. Source addresses are loopback aliases (127.0.0.N), which
Linux routes to the gateway without any set-up, so "K addresses" costs nothing to arrange.
"""

import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol import auth
from protocol.decoder import StreamDecoder
from protocol.frame import Frame, encode_frame
from protocol.messages import Command, parse_body, response

SILENT, STALL, GUESS = "silent", "stall", "guess"


@dataclass
class CrowdFigures:
    connected: int = 0  # connections the kernel accepted
    hellos: int = 0  # HELLOs the gateway sent: places it gave
    guesses_sent: int = 0
    closed_by_gateway: int = 0
    refused_at_connect: int = 0  # connect() itself failed
    closed_at: list[float] = field(default_factory=list)  # monotonic times the gateway closed one


class Crowd:
    """``count`` connections from ``sources`` in turn, each behaving as ``mode`` says:

    - ``silent``: connects and sends nothing, ever (to a TLS listener: a socket that never
      sends its ClientHello);
    - ``stall``: answers HELLO with half a frame, then nothing;
    - ``guess``: answers HELLO with a wrong proof for ``terminal_id`` and closes at once, never
      waiting for the refusal (the impatient guesser).

    With ``reconnect`` a connection the gateway closed (or a guess sent) is replaced at once,
    so the crowd keeps its size for as long as it runs.
    """

    def __init__(self, port: int, count: int, sources: list[str], mode: str, *, terminal_id: int = 0, reconnect: bool = True):
        self.port, self.count, self.sources, self.mode = port, count, sources, mode
        self.terminal_id = terminal_id
        self.reconnect = reconnect
        self.figures = CrowdFigures()
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"crowd {mode}", daemon=True)
        self._opened = 0

    def start(self) -> "Crowd":
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()

    @property
    def open_connections(self) -> int:
        return len(self._selector.get_map())

    def _open(self) -> None:
        source = self.sources[self._opened % len(self.sources)]
        self._opened += 1
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            self.figures.refused_at_connect += 1
            s.close()
            return
        self.figures.connected += 1
        self._selector.register(s, selectors.EVENT_READ, StreamDecoder())

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                self._readable(key.fileobj, key.data)

    def _readable(self, s: socket.socket, decoder: StreamDecoder) -> None:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.figures.closed_by_gateway += 1
            self.figures.closed_at.append(time.monotonic())
            self._drop(s)
            return
        hello = next((item for item in decoder.feed(data) if isinstance(item, Frame)), None)
        if hello is None or hello.command != Command.HELLO:
            return
        self.figures.hellos += 1
        if self.mode == STALL:
            s.send(hello_answer(hello, self.terminal_id or 1, b"stall")[:10])
        elif self.mode == GUESS:
            s.send(hello_answer(hello, self.terminal_id, f"guess-{self.figures.guesses_sent}".encode()))
            self.figures.guesses_sent += 1
            self._drop(s)  # impatient: never waits for the refusal

    def _drop(self, s: socket.socket) -> None:
        self._selector.unregister(s)
        s.close()
        if self.reconnect and not self._stop.is_set():
            self._open()


def hello_answer(hello: Frame, terminal_id: int, secret: bytes) -> bytes:
    """A terminal's answer to ``hello``, proving ``secret``."""
    nonce, tnonce = parse_body(hello).gateway_nonce, auth.new_nonce()
    body = dict(model="raw", firmware="1", protocol_version=1, max_users=1000, max_events=1000, terminal_nonce=tnonce,
                proof=auth.terminal_proof(secret, terminal_id, nonce, tnonce))
    return response(Frame(Command.HELLO, terminal_id=terminal_id, seq=hello.seq), body)


class RawTerminal:
    """A terminal written with a socket and the codec: it authenticates, then sends any bytes."""

    def __init__(self, port: int, terminal_id: int, secret: bytes, *, source: str = "127.0.0.1", timeout_s: float = 15.0,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None):
        self.terminal_id = terminal_id
        raw = socket.socket()
        raw.bind((source, 0))
        raw.settimeout(timeout_s)
        raw.connect(("127.0.0.1", port))
        self.sock = tls.wrap_socket(raw, server_hostname=server_name) if tls is not None else raw
        self._decoder = StreamDecoder()
        self._frames: list[Frame] = []
        self.secret = secret

    def authenticate(self) -> Frame:
        """The handshake; returns WELCOME, or the refusal (an error reply) if refused."""
        hello = self.next_frame()
        self.sock.sendall(hello_answer(hello, self.terminal_id, self.secret))
        answer = self.next_frame()
        if answer.is_response:
            return answer
        self.sock.sendall(response(answer))
        return answer

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, frame: Frame) -> None:
        self.sock.sendall(encode_frame(frame))

    def next_frame(self) -> Frame:
        """The next frame the gateway sends; ConnectionError if it closes first."""
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the gateway closed the link")
            self._frames += [item for item in self._decoder.feed(data) if isinstance(item, Frame)]
        return self._frames.pop(0)

    def close(self) -> None:
        self.sock.close()


def certificates(folder: Path) -> dict[str, Path]:
    """A CA and a certificate for ``localhost`` that it signed, as PEM files in ``folder``:
    ``ca``, ``cert``, ``key``. Needs trustme (a test dependency)."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    files = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    return files

