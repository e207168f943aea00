"""What a hostile client gets from a live gateway (``gateway run``, its own process, SQLite):

- strangers: 300 connections from five loopback addresses, each sending the header of a
  262,144-byte frame and 64 KiB of it, then waiting; the gateway's RSS before and with them
  held, and how many it accepted, refused or closed;
- guessing: one client at one address tries wrong secrets for a known terminal as fast as the
  gateway answers, for ``--guess-seconds``; how many proofs the gateway checked, and how the
  attempts ended (refused, refused late, locked out).

    python benchmarks/hostile.py [--guess-seconds 20] [--json FILE]

Prints a table; never fails on a figure.
"""

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from protocol import auth
from protocol.decoder import StreamDecoder
from protocol.frame import Frame, encode_frame, header_crc
from protocol.messages import Command, parse_body, response
from tools.loadtest.gateway_process import GatewayProcess

TERMINAL = 7001
STRANGERS, STRANGER_ADDRESSES = 300, [f"127.0.0.{n}" for n in range(10, 15)]


def strangers(gateway: GatewayProcess) -> dict:
    before = gateway.memory_mb()
    head = bytearray(encode_frame(Frame(Command.HELLO, b"", terminal_id=TERMINAL, seq=1)))[:21]
    head[15:19] = (256 * 1024).to_bytes(4, "big")
    head[19:21] = header_crc(bytes(head[:19])).to_bytes(2, "big")
    held, refused = [], 0
    for n in range(STRANGERS):
        s = socket.socket()
        s.bind((STRANGER_ADDRESSES[n % len(STRANGER_ADDRESSES)], 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", gateway.tcp_port))
            s.sendall(bytes(head) + bytes(64 * 1024))
            held.append(s)
        except OSError:
            refused += 1
            s.close()
    time.sleep(2.0)
    with_them = gateway.memory_mb()
    closed = sum(1 for s in held if _closed(s))
    for s in held:
        s.close()
    return dict(connections=STRANGERS, addresses=len(STRANGER_ADDRESSES), rss_before_mb=round(before, 1),
                rss_with_them_mb=round(with_them, 1), closed_by_gateway=closed, refused_at_connect=refused)


def _closed(s: socket.socket) -> bool:
    """Whether the gateway closed this connection (EOF or reset), without waiting long."""
    s.settimeout(0.2)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def guess(gateway: GatewayProcess, seconds: float) -> dict:
    outcomes = dict(refused=0, refused_late=0, locked_out=0)
    deadline = time.monotonic() + seconds
    attempts = 0
    while time.monotonic() < deadline:
        attempts += 1
        outcomes[_one_guess(gateway.tcp_port, attempts)] += 1
    checked = outcomes["refused"] + outcomes["refused_late"]
    return dict(seconds=seconds, attempts=attempts, proofs_checked=checked, proofs_per_s=round(checked / seconds, 2), **outcomes)


def _one_guess(port: int, n: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        decoder, started = StreamDecoder(), time.monotonic()
        hello = _next_frame(s, decoder)
        if hello is None:
            return "locked_out"
        nonce = parse_body(hello).gateway_nonce
        tnonce = auth.new_nonce()
        proof = auth.terminal_proof(f"guess-{n}".encode(), TERMINAL, nonce, tnonce)
        body = dict(model="X", firmware="1", protocol_version=1, max_users=1, max_events=1, terminal_nonce=tnonce, proof=proof)
        s.sendall(response(Frame(Command.HELLO, terminal_id=TERMINAL, seq=hello.seq), body))
        _next_frame(s, decoder)
        return "refused_late" if time.monotonic() - started > 0.5 else "refused"


def _next_frame(s: socket.socket, decoder: StreamDecoder) -> Frame | None:
    while True:
        try:
            data = s.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        for item in decoder.feed(data):
            if isinstance(item, Frame):
                return item


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guess-seconds", type=float, default=20.0)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="hostile-"))
    config = run_dir / "gateway.toml"
    config.write_text(f'[[terminals]]\nid = {TERMINAL}\nsecret = "the-real-secret"\n')
    gateway = GatewayProcess(run_dir, f"sqlite:///{run_dir / 'gateway.db'}", config_file=config).start()
    try:
        figures = dict(strangers=strangers(gateway), guessing=guess(gateway, args.guess_seconds))
    finally:
        gateway.stop()
    for part, values in figures.items():
        print(part)
        for key, value in values.items():
            print(f"  {key:<22} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
