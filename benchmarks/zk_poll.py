"""ZK polling cost: the gateway's CPU per idle poll cycle per device.

Starts emulated ZK devices (``simulator zk-terminal``, each in its own process, so their CPU is
not counted), a gateway on SQLite in this process polling them, waits until everything is read
and settled, then measures this process's CPU time (reactor and database threads) over a
quiet period and divides it by the poll cycles the devices were given. Two sizes: small devices
(the user table is read at every poll) and large ones (only the counts are read, the table on
the slower schedule). Prints a table; ``--json FILE`` writes the figures. Measures, never judges.

    python benchmarks/zk_poll.py [--devices N] [--poll-s S] [--seconds T] [--json FILE]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select
from twisted.internet import defer, reactor, task

from gateway.config import GatewayConfig
from gateway.store.schema import events
from gateway.process.service import Gateway

SIZES = {"small (table every poll)": 200, "large (counts only)": 3000}


def start_device(users: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "simulator.cli", "zk-terminal", "--port", "0", "--users", str(users)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()  # "ZK device ... on 127.0.0.1:PORT: ..."
    return process, int(line.split(" on ", 1)[1].split(":")[1])


@defer.inlineCallbacks
def measure(users: int, devices: int, poll_s: float, seconds: float, folder: Path):
    started = [start_device(users) for _ in range(devices)]
    try:
        entries = [dict(id=n + 1, host="127.0.0.1", port=port, poll_s=poll_s) for n, (_, port) in enumerate(started)]
        config = GatewayConfig.load(None, db=f"sqlite:///{folder / f'poll-{users}.db'}", tcp_host="127.0.0.1", tcp_port=0, http_port=0, zk=entries)
        gateway = Gateway(config, reactor)
        gateway.start()
        try:
            deadline, quiet, stored = time.monotonic() + 300, 0, -1
            while quiet < 3:  # every device online, and no event stored for 3 s: the first reads' pulls and pushes ended
                if time.monotonic() > deadline:
                    raise SystemExit("the devices did not come online and settle within 300 s")
                yield task.deferLater(reactor, 1.0, lambda: None)
                now_stored = gateway.db.run_now(_events_stored)
                online = len(gateway.registry.connected()) == devices
                quiet, stored = (quiet + 1 if online and now_stored == stored else 0), now_stored
            cpu, wall = time.process_time(), time.monotonic()
            yield task.deferLater(reactor, seconds, lambda: None)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        finally:
            yield gateway.stop()
    finally:
        for process, _ in started:
            process.terminate()
            process.wait()
    figures = dict(users=users, devices=devices, poll_s=poll_s, seconds=round(wall, 1), cpu_s=round(cpu, 3), cpu_share=round(cpu / wall, 3))
    if devices:
        figures["cpu_ms_per_cycle_per_device"] = round(1000 * cpu / (devices * wall / poll_s), 3)
    return figures


def _events_stored(conn) -> int:
    return conn.execute(select(func.count()).select_from(events)).scalar()


@defer.inlineCallbacks
def run(_reactor, args):
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        # The gateway's own periodic work (sweep, activity figures) with no device: subtracted.
        baseline = yield measure(0, 0, args.poll_s, args.seconds, Path(folder))
        figures["no device (baseline)"] = baseline
        for label, users in SIZES.items():
            f = figures[label] = yield measure(users, args.devices, args.poll_s, args.seconds, Path(folder))
            extra_cpu = max(0.0, f["cpu_s"] - baseline["cpu_share"] * f["seconds"])
            f["cpu_ms_per_cycle_per_device"] = round(1000 * extra_cpu / (f["devices"] * f["seconds"] / f["poll_s"]), 3)
    print(f"{'devices':>28} {'users':>6} {'poll_s':>6} {'CPU ms/cycle/device':>20} {'CPU share':>9}")
    for label, f in figures.items():
        print(f"{label:>28} {f['users']:>6} {f['poll_s']:>6} {f.get('cpu_ms_per_cycle_per_device', '-'):>20} {f['cpu_share']:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--poll-s", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    task.react(run, [args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
