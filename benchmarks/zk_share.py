"""ZK session sharing: what ``[[zk]] session = "released"`` costs against a held session, and
what it gives the site's own ZK software.

Starts emulated ZK devices that serve one client at a time (``simulator zk-terminal --sessions
1``, each in its own process, so their CPU is not counted) and a gateway on SQLite in this
process polling them, once with every session held and once released. For each: the gateway's
CPU per poll cycle per device over a quiet period (no probe running), then a probe playing the
site's software: every ``--probe-every-s`` it connects to one device, says CONNECT and EXIT, and
counts how often it got the device and how long each try took. Prints a table; ``--json FILE``
writes the figures. Measures, never judges.

    python benchmarks/zk_share.py [--devices N] [--users N] [--poll-s S] [--seconds T] [--json FILE]
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task, threads

from gateway.config import GatewayConfig
from gateway.process.service import Gateway
from protocol.zk.client import ZkClient
from protocol.zk.events import Connected

PROBE_TIMEOUT_S = 1.0


def start_device(users: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "simulator.cli", "zk-terminal", "--port", "0", "--users", str(users), "--sessions", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()  # "ZK device ... on 127.0.0.1:PORT: ..."
    return process, int(line.split(" on ", 1)[1].split(":")[1])


def probe_once(port: int) -> bool:
    """The site's software trying the device: CONNECT answered (then EXIT), or turned away."""
    client = ZkClient(timeout_s=PROBE_TIMEOUT_S)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as sock:
            token = client.connect(now=time.monotonic())
            sock.sendall(b"".join(client.data_to_send()))
            while True:
                data = sock.recv(4096)
                if not data:
                    return False  # turned away: another client has it
                events = client.receive(data, now=time.monotonic())
                if any(isinstance(e, Connected) and e.token == token for e in events):
                    client.disconnect(now=time.monotonic())
                    sock.sendall(b"".join(client.data_to_send()))
                    return True
                if events:
                    return False
    except OSError:
        return False


def probe(port: int, seconds: float, every_s: float) -> dict:
    tries, got, took = 0, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        tries += 1
        got += probe_once(port)
        took.append(time.monotonic() - started)
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))
    took.sort()
    return dict(probe_tries=tries, probe_got_device_share=round(got / tries, 3), probe_p99_ms=round(1000 * took[int(0.99 * (len(took) - 1))], 1))


@defer.inlineCallbacks
def measure(session: str, args, folder: Path):
    started = [start_device(args.users) for _ in range(args.devices)]
    try:
        entries = [dict(id=n + 1, host="127.0.0.1", port=port, poll_s=args.poll_s, session=session) for n, (_, port) in enumerate(started)]
        config = GatewayConfig.load(None, db=f"sqlite:///{folder / f'share-{session}.db'}", tcp_host="127.0.0.1", tcp_port=0, http_port=0, zk=entries)
        gateway = Gateway(config, reactor)
        gateway.start()
        try:
            deadline = time.monotonic() + 120
            while len(gateway.registry.connected()) < args.devices:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the devices did not come online within 120 s ({session})")
                yield task.deferLater(reactor, 0.5, lambda: None)
            yield task.deferLater(reactor, 3 * args.poll_s, lambda: None)  # the first reads' pulls and pushes settle
            cpu, wall = time.process_time(), time.monotonic()
            yield task.deferLater(reactor, args.seconds, lambda: None)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            probed = yield threads.deferToThread(probe, started[0][1], args.seconds, args.probe_every_s)
            online = len(gateway.registry.connected())
        finally:
            yield gateway.stop()
    finally:
        for process, _ in started:
            process.terminate()
            process.wait()
    cycles = args.devices * wall / args.poll_s
    return dict(session=session, devices=args.devices, users=args.users, poll_s=args.poll_s, seconds=round(wall, 1), cpu_s=round(cpu, 3),
                cpu_ms_per_cycle_per_device=round(1000 * cpu / cycles, 3), online_after_probe=online, **probed)


@defer.inlineCallbacks
def run(_reactor, args):
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        for session in ("held", "released"):
            figures[session] = yield measure(session, args, Path(folder))
    held, released = figures["held"], figures["released"]
    if held["cpu_ms_per_cycle_per_device"]:
        figures["released_over_held_cpu"] = round(released["cpu_ms_per_cycle_per_device"] / held["cpu_ms_per_cycle_per_device"], 2)
    print(f"{'session':>9} {'CPU ms/cycle/device':>20} {'probe got device':>17} {'probe p99 ms':>13} {'online':>7}")
    for f in (held, released):
        print(f"{f['session']:>9} {f['cpu_ms_per_cycle_per_device']:>20} {f['probe_got_device_share']:>17} {f['probe_p99_ms']:>13} "
              f"{f['online_after_probe']:>4}/{f['devices']}")
    if "released_over_held_cpu" in figures:
        print(f"released / held CPU per poll cycle: {figures['released_over_held_cpu']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--poll-s", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--probe-every-s", type=float, default=0.25)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    task.react(run, [args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
