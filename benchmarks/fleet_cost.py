"""The simulated fleet's own CPU: per delivery when each push carries one user, and per idle terminal.

A load test's `fleet_cpu_us_per_delivery` moves with the gateway's pace (a slower gateway puts
more users in each push, and a push costs the terminal about the same for one user as for five)
and with everything else on the machine. This plays a gateway of fixed habits instead: it runs
``simulator fleet --listen`` (one worker), dials every terminal, does the handshake (the
gateway's side of ``protocol.connection``, as gateway-check does), and then, round after round,
pushes one new user to every terminal (PUT_USERS), takes the answer and the terminal's EVENTS
request and acknowledges it: a lone delivery, as at one enrolment a second. The worker's CPU
comes from /proc (utime + stime), over the rounds and over a quiet spell after them.

    python benchmarks/fleet_cost.py --devices 2000 --rounds 20
    cd <another tree> && python <this file> ...   # that tree's simulator (the fleet runs from the working folder)
"""

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.connection_events import Answer, Request  # noqa: E402
from protocol.messages import Command, build_body  # noqa: E402
from simulator.people import People  # noqa: E402
from tools.check import Peer, check_handshake  # noqa: E402

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def worker_of(parent: int, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    stat = (proc / "stat").read_text()
                    args = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"simulator.fleet_worker" in args:
                    return int(proc.name)
        time.sleep(0.2)
    raise SystemExit("no fleet worker appeared")


def dial_all(devices: int, base_port: int, secret: str) -> list[Peer]:
    args = argparse.Namespace(id=None, secret=secret)
    peers = []
    for n in range(devices):
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", base_port + n), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        peer = Peer(sock, timeout=30)
        check_handshake(peer, args)
        peers.append(peer)
    return peers


def push_round(peers: list[Peer], payload: bytes) -> None:
    """One user to every terminal, all sent before any answer is read, as a gateway's round."""
    now = time.monotonic()
    pending = []
    for peer in peers:
        frame, request = peer.connection.request(Command.PUT_USERS, payload=payload, now=now)
        peer.send(frame)
        pending.append(request)
    for peer, request in zip(peers, pending):
        deadline = time.monotonic() + 30
        peer.wait_for(lambda e, r=request: type(e) is Answer and e.request == r, deadline)
        events = peer.wait_for(lambda e: type(e) is Request and e.frame.command == Command.EVENTS, deadline)
        ack_through = events.body.events[-1].event_id
        peer.send(peer.connection.reply(events.frame, dict(ack_through=ack_through), now=time.monotonic()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--round-s", type=float, default=1.0, help="a round every this often (one enrolment a second)")
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--base-port", type=int, default=21000, help="terminal i listens on this + i - 1; below the ephemeral range, where this side's own dials take ports")
    p.add_argument("--mix", default="typical")
    args = p.parse_args(argv)
    secret = "bench-secret"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per terminal here too
    log = open(Path(tempfile.gettempdir()) / "fleet_cost.log", "w")  # the fleet's progress, for a run that goes wrong
    fleet = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "fleet", "--listen", str(args.base_port), "--devices", str(args.devices),
         "--workers", "1", "--scenario", "enroll-storm", "--rate", "1e-9", "--duration", "3600", "--secret", secret,
         "--mix", args.mix], stdout=subprocess.DEVNULL, stderr=log)
    try:
        worker = worker_of(fleet.pid)
        peers = dial_all(args.devices, args.base_port, secret)
        time.sleep(3)  # the fleet sees every terminal online and starts its clock
        people = People(seed=4711)
        payloads = [build_body(Command.PUT_USERS, False, dict(keep_local_changes=True, users=[people.person(f"bench-{n}")]))
                    for n in range(args.rounds)]
        before, started = cpu_s(worker), time.monotonic()
        for n, payload in enumerate(payloads):
            push_round(peers, payload)
            time.sleep(max(0.0, started + (n + 1) * args.round_s - time.monotonic()))
        loaded_cpu, loaded_s = cpu_s(worker) - before, time.monotonic() - started
        before, started = cpu_s(worker), time.monotonic()
        time.sleep(args.idle_s)
        idle_cpu, idle_s = cpu_s(worker) - before, time.monotonic() - started
    finally:
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=30)
        log.close()
    deliveries = args.rounds * args.devices
    print(f"{args.devices} terminals, {args.rounds} rounds of one user each in {loaded_s:.1f} s: "
          f"fleet worker {loaded_cpu:.2f} s of CPU, {loaded_cpu * 1e6 / deliveries:.1f} us a delivery; "
          f"idle {idle_cpu * 1e6 / idle_s / args.devices:.1f} us a second a terminal; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
