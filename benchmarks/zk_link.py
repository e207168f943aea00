"""ZK link benchmark: reading the users of an emulated device over a slow link, pyzk beside
protocol.zk's client, and what a hostile device's 2 GB announcement costs the client.

Each device is ``simulator zk-terminal`` in its own process (``--firmware slow-link``: answers
at 4 KB/s; ``--firmware huge-buffer``). One run on one machine: compare the rows, not absolute
numbers. It measures and never fails on slowness.

    python benchmarks/zk_link.py [--users N] [--link-bps N] [--json FILE]
"""

import argparse
import json
import resource
import socket
import subprocess
import sys
import time

from protocol.zk.client import ZkClient
from protocol.zk.events import OverLimit, UsersRead

TIMEOUT_S = 10  # silence allowed per request: shorter than one 65,472-byte chunk takes at 4 KB/s


class Emulator:
    def __init__(self, *options: str):
        self.process = subprocess.Popen([sys.executable, "-m", "simulator.cli", "zk-terminal", "--port", "0", *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()  # "ZK device ... on 127.0.0.1:PORT: ..."
        self.port = int(line.split(" on ")[1].split(":")[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def ours(port: int, chunk_size: int | None) -> tuple[float, object]:
    client = ZkClient(timeout_s=TIMEOUT_S, chunk_size=chunk_size)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        for start in (client.connect, client.read_users):
            token = start(now=time.monotonic())
            result = None
            while result is None:
                sock.sendall(b"".join(client.data_to_send()))
                deadline = client.next_deadline()
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                    events = client.receive(data, now=time.monotonic()) if data else []
                except socket.timeout:
                    events = client.check_deadline(now=time.monotonic())
                result = next((e for e in events if getattr(e, "token", None) == token), None)
            if not isinstance(result, UsersRead) and start == client.read_users or isinstance(result, OverLimit):
                return time.monotonic() - started, result
    return time.monotonic() - started, result


# pyzk (a test dependency) in a process of its own: benchmarks/zk.py would shadow its package here.
PYZK = """
import sys, time
from zk import ZK
started = time.monotonic()
conn = ZK("127.0.0.1", int(sys.argv[1]), timeout=60, ommit_ping=True).connect()
users = conn.get_users()
seconds = time.monotonic() - started
try:
    conn.disconnect()
except Exception:
    pass  # over a slow link pyzk may misread the answer to EXIT; the users were read
print(len(users), seconds)
"""


def theirs(port: int) -> tuple[float, int]:
    done = subprocess.run([sys.executable, "-c", PYZK, str(port)], capture_output=True, text=True, timeout=600, cwd="/")
    if done.returncode:
        raise RuntimeError(f"pyzk failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    count, seconds = done.stdout.split()
    return float(seconds), int(count)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--link-bps", type=int, default=4096)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    figures = {}
    device = Emulator("--firmware", "slow-link", "--link-bps", str(args.link_bps), "--users", str(args.users))
    try:
        seconds, count = theirs(device.port)
        figures["pyzk_read_users_s"] = seconds if count == args.users else f"failed: {count} users"
        for name, chunk in (("ours_read_users_s", None), ("ours_read_users_4k_chunks_s", 4096)):
            seconds, result = ours(device.port, chunk)
            figures[name] = seconds if isinstance(result, UsersRead) and len(result.users) == args.users else f"failed: {result}"
    finally:
        device.stop()
    hostile = Emulator("--firmware", "huge-buffer", "--users", "3")
    try:
        before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds, result = ours(hostile.port, None)
        figures["huge_buffer_refused_s"] = seconds
        figures["huge_buffer_outcome"] = getattr(result, "reason", str(result))
        figures["huge_buffer_peak_rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    finally:
        hostile.stop()
    print(f"{args.users} users over a {args.link_bps} B/s link (timeout_s {TIMEOUT_S}):")
    for name, value in figures.items():
        print(f"  {name:32} {value:.2f}" if isinstance(value, float) else f"  {name:32} {value}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(users=args.users, link_bps=args.link_bps, **figures), out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
