"""ZK benchmark: decoding tables, and reading and filling an emulated device over loopback with
protocol.zk's client.

Prints a table; ``--json FILE`` also writes the figures. One run on one machine: compare ratios,
not absolute numbers. It measures and never fails on slowness.

    python benchmarks/zk.py [--quick] [--users N] [--json FILE]
"""

import argparse
import json
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from protocol.zk.client import ZkClient
from protocol.zk.records import Template, User, build_template_table, build_user_table, parse_template_table, parse_user_table

TIMEOUT_S = 30


def best_of(runs: int, work) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def people(count: int, seed: int = 1) -> tuple[list[User], list[Template]]:
    rng = random.Random(seed)
    users = [User(n, f"{100000 + n}", f"Person {n}", card=rng.randrange(1 << 24)) for n in range(1, count + 1)]
    return users, [Template(u.uid, 0, rng.randbytes(rng.randint(400, 800))) for u in users]


class Emulator:
    """``simulator zk-terminal`` in its own process, on a free loopback port."""

    def __init__(self, users: int):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "simulator.cli", "zk-terminal", "--port", "0", "--users", str(users)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.process.stdout.readline()  # "ZK device ... on 127.0.0.1:PORT: ..."
        self.port = int(line.split(" on ")[1].split(":")[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def drive(client: ZkClient, sock: socket.socket, start):
    token = start(time.monotonic())
    while True:
        for data in client.data_to_send():
            sock.sendall(data)
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the emulator closed the connection")
        for event in client.receive(data, now=time.monotonic()):
            if getattr(event, "token", None) == token:
                return event


def loopback(users: int, batch: int) -> dict:
    full, empty = Emulator(users), Emulator(0)
    try:
        client = ZkClient(timeout_s=TIMEOUT_S)
        with socket.create_connection(("127.0.0.1", full.port), timeout=TIMEOUT_S) as sock:
            drive(client, sock, lambda now: client.connect(now=now))
            start = time.perf_counter()
            read = drive(client, sock, lambda now: client.read_users(now=now))
            users_s = time.perf_counter() - start
            start = time.perf_counter()
            templates = drive(client, sock, lambda now: client.read_templates(now=now))
            templates_s = time.perf_counter() - start
        assert len(read.users) == users and len(templates.templates) == users
        new_users, new_templates = people(users)
        client = ZkClient(timeout_s=TIMEOUT_S)
        with socket.create_connection(("127.0.0.1", empty.port), timeout=TIMEOUT_S) as sock:
            drive(client, sock, lambda now: client.connect(now=now))
            start = time.perf_counter()
            for at in range(0, users, batch):
                reply = drive(client, sock, lambda now: client.save_users(new_users[at : at + batch], new_templates[at : at + batch], now=now))
                assert reply.ok, reply
            fill_s = time.perf_counter() - start
    finally:
        full.stop()
        empty.stop()
    return dict(read_users_s=users_s, read_templates_s=templates_s, fill_s=fill_s, fill_batch=batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ZK codec and loopback figures.")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each")
    parser.add_argument("--users", type=int, default=3000, help="users (and templates) per device (default 3000)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    count, runs = (200, 1) if args.quick else (args.users, 5)
    users, templates = people(count)
    user_table, template_table = build_user_table(users), build_template_table(templates)
    results = dict(
        quick=args.quick,
        python=platform.python_version(),
        users=count,
        user_table_bytes=len(user_table),
        template_table_bytes=len(template_table),
        decode_users_s=best_of(runs, lambda: parse_user_table(user_table, count)),
        decode_templates_s=best_of(runs, lambda: parse_template_table(template_table)),
        **loopback(count, batch=500),
    )
    print(f"{'figure':<24} value")
    for name in ("users", "user_table_bytes", "template_table_bytes"):
        print(f"{name:<24} {results[name]}")
    for name in ("decode_users_s", "decode_templates_s", "read_users_s", "read_templates_s", "fill_s"):
        print(f"{name:<24} {results[name] * 1000:.1f} ms")
    print(f"{'fill_batch':<24} {results['fill_batch']} users per upload")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
