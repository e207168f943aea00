"""The floor under a lone delivery: what Twisted, protocol/ and loopback TCP cost with no sync and no database.

A delivery at one enrolment a second costs the gateway about 250 us of CPU (issue 24). Part of
that is the round trip itself, which no change to the gateway's own logic can remove: PUT_USERS
out, its answer in, the terminal's EVENTS request (its UPDATE_SUCCESS event) in and answered.
This measures that part. A bare server, in a child process with one reactor, takes the load
test's fleet (``simulator.fleet``, one worker, 200 terminals), does the real handshake with
``protocol.connection.Connection`` and sends every terminal one prebuilt PUT_USERS of a new user
(``simulator.people``, the load test's mix), R changes a second; it reads each answer and
acknowledges each EVENTS request at once. Nothing of gateway/: no pulls, no merge, no feed, no
commit, no monitoring rows, no API process, no timers. Its CPU comes from /proc over the same
window as the load test's ``gateway_cpu_s`` (the fleet ready to the fleet settled), divided by
the deliveries the fleet counted.

The gateway's figure comes from ``tools.loadtest`` runs alternating with the floor's, rate by
rate, in the same sitting (the machine is shared and noisy: compare within one sitting only).

    python benchmarks/round_trip_floor.py --rates 1,10 --devices 200 --duration 40 --pairs 3 --json reports/round_trip_floor.json
    python benchmarks/round_trip_floor.py --floor-only --rates 1 --duration 20
"""

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.connection import Connection, Role  # noqa: E402
from protocol.connection_events import Answer, Established, HelloAnswered, Rejected, Replied, Request  # noqa: E402
from protocol.errors import RemoteProtocolError  # noqa: E402
from protocol.frame import Flags, Frame, encode_frame  # noqa: E402
from protocol.messages import Command, UserStatus, parse_body, put_users_payload  # noqa: E402
from protocol.records import UserRecordWire  # noqa: E402
from simulator.fleet import Fleet, FleetSpec  # noqa: E402
from simulator.people import MIXES, People  # noqa: E402
from simulator.tcp import send_now  # noqa: E402
from benchmarks.fleet_cost import cpu_s  # noqa: E402

SECRET = "floor-secret"
SEED = 4711
START_DELAY_S = 1.0  # the first push after "go": the fleet starts counting deliveries 0.5 s after it is ready


# -- the bare server (the child process) -----------------------------------------------------


class Tally:
    """What the bare server saw: pushes sent, answered (and how many said OK), events acknowledged."""

    def __init__(self, terminals: int, pushes: int):
        self.expected = terminals * pushes
        self.pushed = self.answered = self.applied = self.events_acked = 0

    @property
    def done(self) -> bool:
        return self.pushed == self.expected and self.answered == self.pushed and self.events_acked >= self.applied

    def figures(self) -> dict:
        return dict(pushed=self.pushed, answered=self.answered, applied=self.applied, unanswered=self.pushed - self.answered,
                    events_acked=self.events_acked)


@lru_cache(maxsize=64)
def applied_in(answer_payload: bytes) -> int:
    """How many users a PUT_USERS answer says were applied; every terminal answers a push with the
    same bytes, so each distinct answer is parsed once (as the gateway does)."""
    body = parse_body(Frame(Command.PUT_USERS, answer_payload, Flags.RESPONSE))
    return sum(r["status"] == UserStatus.OK for r in body["results"])


def bare_link_factory(reactor, tally: Tally, on_change):
    """The Twisted protocol of one terminal's link: the handshake, then answers and events."""
    from twisted.internet import protocol

    class BareLink(protocol.Protocol):
        def connectionMade(self):
            self.connection = Connection(Role.GATEWAY, handshake_s=30, now=reactor.seconds())
            self.send(self.connection.start(now=reactor.seconds()))

        def send(self, frame: Frame) -> None:
            send_now(self.transport, encode_frame(frame))

        def dataReceived(self, data: bytes):
            now = reactor.seconds()
            try:
                events = self.connection.receive_data(data, now=now)
            except RemoteProtocolError:
                self.transport.abortConnection()
                return
            for event in events:
                kind = type(event)
                if kind is Answer:
                    tally.answered += 1
                    tally.applied += applied_in(event.frame.payload)
                elif kind is Request:  # EVENTS: acknowledged at once, nothing stored
                    tally.events_acked += len(event.body.events)
                    self.send(self.connection.reply(event.frame, dict(ack_through=event.body.events[-1].event_id), now=now))
                elif kind is HelloAnswered:
                    refusal = self.connection.authenticate(SECRET.encode())
                    if refusal is not None:
                        self.send(self.connection.refuse_terminal(*refusal, now=now))
                        self.transport.loseConnection()
                        return
                    self.send(self.connection.welcome(ack_through=0, server_time_ms=int(time.time() * 1000), now=now))
                elif kind is Established:
                    self.factory.links.append(self)
                elif kind in (Replied, Rejected) and event.reply is not None:
                    self.send(event.reply)
            on_change()

        def connectionLost(self, reason=None):
            if self in self.factory.links:
                self.factory.links.remove(self)

    factory = protocol.Factory.forProtocol(BareLink)
    factory.links = []
    return factory


def serve(rate: float, changes: int, users_per_push: int, terminals: int, mix: str) -> None:
    """The child: listen, say the port, wait for "go", push ``changes`` new users ``rate`` a second
    to every terminal online, ``users_per_push`` in each PUT_USERS, say "done" with its tally once
    every push is answered and every event acknowledged."""
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    people = People(SEED, MIXES[mix])
    records = [UserRecordWire.build(people.person(f"floor-{n}")) for n in range(changes)]
    payloads = [put_users_payload(records[n:n + users_per_push], True) for n in range(0, changes, users_per_push)]
    interval_s = users_per_push / rate
    tally = Tally(terminals, len(payloads))
    said_done = []

    def on_change():
        if tally.done and not said_done:
            said_done.append(True)
            control.sendLine(json.dumps(dict(done=tally.figures())).encode())

    factory = bare_link_factory(reactor, tally, on_change)

    def push(n: int, start: float) -> None:
        now = reactor.seconds()
        for link in factory.links:
            frame, _ = link.connection.request(Command.PUT_USERS, payload=payloads[n], now=now)
            link.send(frame)
            tally.pushed += 1
        if n + 1 < len(payloads):
            reactor.callLater(max(0.0, start + (n + 1) * interval_s - reactor.seconds()), push, n + 1, start)

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            if "go" in json.loads(line):
                start = reactor.seconds() + START_DELAY_S
                reactor.callLater(START_DELAY_S, push, 0, start)

        def connectionLost(self, reason=None):
            reactor.stop()  # the parent closed the pipe: the run is over

    control = Control()
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    stdio.StandardIO(control)
    control.sendLine(json.dumps(dict(listening=port.getHost().port)).encode())
    reactor.run()


# -- the parent: a floor run, a load test run, the table -------------------------------------


def read_message(proc: subprocess.Popen, timeout_s: float) -> dict | None:
    """The child's next JSON line, or None if it said nothing within ``timeout_s``."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        return None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the bare server exited (status {proc.wait()})")
    return json.loads(line)


def floor_run(devices: int, rate: float, duration_s: float, users_per_push: int, mix: str, log) -> dict:
    changes = round(rate * duration_s)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--devices", str(devices), "--rate", str(rate),
                               "--changes", str(changes), "--users-per-push", str(users_per_push), "--mix", mix],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
    figures: dict = {}
    try:
        listening = read_message(server, 60)
        if listening is None:
            raise RuntimeError("the bare server did not say its port within 60 s")
        spec = FleetSpec(devices=devices, gateway=f"127.0.0.1:{listening['listening']}", scenario="enroll-storm", rate=0.0,
                         duration=duration_s, seed=SEED, mix=mix, secret=SECRET, drain_timeout=30 + duration_s)

        def ready():
            figures["cpu_ready_s"] = cpu_s(server.pid)
            server.stdin.write(json.dumps(dict(go=True)) + "\n")
            server.stdin.flush()

        def settled() -> bool:
            said = read_message(server, 0)
            if said is not None:
                figures["cpu_settled_s"] = cpu_s(server.pid)
                figures["server"] = said["done"]
            return "server" in figures

        fleet = Fleet(spec, log_file=log).run(on_ready=ready, settled=settled)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if not fleet.settled:
        raise RuntimeError(f"the fleet did not settle: the bare server said {figures.get('server')}")
    cpu = figures["cpu_settled_s"] - figures["cpu_ready_s"]
    per_delivery = round(cpu * 1e6 / fleet.deliveries, 1) if fleet.deliveries else None
    return dict(kind="floor", rate=rate, devices=devices, changes=changes, users_per_push=users_per_push,
                deliveries=fleet.deliveries, cpu_s=round(cpu, 2), cpu_us_per_delivery=per_delivery, **figures["server"])


def gateway_run(devices: int, rate: float, duration_s: float, mix: str, run_dir: Path, log) -> dict:
    """One ``tools.loadtest`` run of this tree's gateway, as the team runs it."""
    report = run_dir / f"loadtest-{rate:g}-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-m", "tools.loadtest", "--devices", str(devices), "--scenario", "enroll-storm",
                    "--duration", str(duration_s), "--seed", str(SEED), "--rate", str(rate), "--mix", mix, "--json", str(report)],
                   cwd=run_dir, stdout=log, stderr=log, check=False)
    if not report.exists():
        raise RuntimeError(f"tools.loadtest wrote no report; its output is in {log.name}")
    r = json.loads(report.read_text())
    return dict(kind="gateway", rate=rate, devices=devices, deliveries=r["user_deliveries"], cpu_s=r["gateway_cpu_s"],
                cpu_us_per_delivery=r["gateway_cpu_us_per_delivery"], ok=r["ok"])


def summary(runs: list[dict]) -> list[dict]:
    """Per rate: the mean floor, the mean gateway and their ratio."""
    rows = []
    for rate in sorted({r["rate"] for r in runs}):
        means: dict[str, float | None] = {}
        for kind in ("floor", "gateway"):
            values = [r["cpu_us_per_delivery"] for r in runs
                      if r["rate"] == rate and r["kind"] == kind and r["cpu_us_per_delivery"] is not None]
            means[kind] = round(sum(values) / len(values), 1) if values else None
        ratio = round(means["gateway"] / means["floor"], 2) if means["floor"] and means["gateway"] is not None else None
        rows.append(dict(rate=rate, floor_us=means["floor"], gateway_us=means["gateway"], gateway_over_floor=ratio))
    return rows


def _figure(us: float | None) -> str:
    return "-" if us is None else f"{us:.1f}"


def table(runs: list[dict], rows: list[dict]) -> str:
    lines = [f"{'pair':>4} {'rate':>5} {'kind':8} {'deliveries':>10} {'CPU s':>6} {'us/delivery':>11} {'load avg':>9}"]
    for r in runs:
        lines.append(f"{r['pair']:>4} {r['rate']:>5g} {r['kind']:8} {r['deliveries']:>10} {r['cpu_s']:>6.2f} "
                     f"{_figure(r['cpu_us_per_delivery']):>11} {r['load_before']:>4.1f}-{r['load_after']:<4.1f}")
    for row in rows:
        lines.append(f"rate {row['rate']:g}/s: floor {row['floor_us']} us a delivery, gateway {row['gateway_us']} us, "
                     f"gateway / floor {row['gateway_over_floor']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="1,10", help="changes a second, comma-separated (default 1,10)")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--duration", type=float, default=40.0, help="seconds of load per run (default 40)")
    p.add_argument("--pairs", type=int, default=2, help="floor and gateway runs alternating, per rate (default 2)")
    p.add_argument("--users-per-push", type=int, default=1, metavar="N",
                   help="users each PUT_USERS of the floor carries, pushed N / rate seconds apart (default 1: every change "
                        "alone; the gateway's 0.5 s round interval packs about 5 at 10/s)")
    p.add_argument("--floor-only", action="store_true", help="no load test runs")
    p.add_argument("--mix", default="typical", choices=sorted(MIXES))
    p.add_argument("--json", help="write the runs and the summary here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child: the bare server
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--changes", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.rate, args.changes, args.users_per_push, args.devices, args.mix)
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    run_dir = Path(tempfile.mkdtemp(prefix="round-trip-floor-"))
    runs = []
    with open(run_dir / "runs.log", "w") as log:
        try:
            for pair in range(1, args.pairs + 1):
                for rate in rates:
                    kinds = ["floor"] if args.floor_only else ["floor", "gateway"]
                    for kind in kinds if pair % 2 else reversed(kinds):  # neither side always goes first
                        load_before = os.getloadavg()[0]
                        if kind == "floor":
                            run = floor_run(args.devices, rate, args.duration, args.users_per_push, args.mix, log)
                        else:
                            run = gateway_run(args.devices, rate, args.duration, args.mix, run_dir, log)
                        runs.append(dict(pair=pair, load_before=load_before, load_after=os.getloadavg()[0], **run))
                        print(f"pair {pair}, {rate:g}/s, {kind}: {run['cpu_us_per_delivery']} us a delivery", file=sys.stderr)
        except RuntimeError as exc:
            print(f"round_trip_floor: {exc} (logs in {run_dir})", file=sys.stderr)
            return 1
    rows = summary(runs)
    print(table(runs, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(runs=runs, summary=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
