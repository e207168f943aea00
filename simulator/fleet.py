"""Fleet: hundreds or thousands of simulated terminals, a few worker processes, one reactor each.

``Fleet.run`` (the parent, plain blocking code) splits the terminal ids among workers
(``python -m simulator.fleet_worker``) and talks to them in JSON lines over their stdin and
stdout: a worker's ZK devices listen at once and it says ``listening`` with their ports; the
parent (which may start a gateway configured with those ports now) says ``gateway`` with the
address native terminals dial; a worker says ``ready`` once its terminals are online (the
gateway holds a session with each ZK device), the parent answers ``go`` with one wall-clock
start time for all, workers report ``progress`` twice a second and stop producing by
themselves when the duration is over, the parent says ``stop`` once the fleet has settled, and
each worker answers with its ``result``, writes its dumps and exits. Between settling and
``stop`` the parent may ask for a ``sample`` of the ZK devices' traffic (``measure_idle``).

``--dump DIR`` writes one ``terminal-<id>.json`` per terminal (``Station.dump`` in
simulator/fleet_worker.py, ``ZkStation.dump`` in simulator/zk/station.py), so anyone can compare
the terminals with the server without trusting the gateway's own view.
"""

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protocol.address import AddressError, parse_host_port
from protocol.figures import percentiles
from simulator.fleet_worker import KINDS, FleetSpec, wall_ms
from simulator.gateway_config import fleet_config
from simulator.people import MIXES
from simulator.progress import Progress, ProgressBar
from simulator.push import station as push_station
from simulator.scenarios import SCENARIOS


class FleetError(RuntimeError):
    pass


@dataclass
class Propagation:
    """One user enrolled during the run: when, and how long until the last terminal applied it."""

    enrolled_s: float  # after "go"
    terminal_id: int  # where the person was enrolled
    from_steady: bool  # enrolled at a steady terminal: only these count towards steady_ms
    steady_ms: float | None  # to the last steady terminal; None if one never got it (or not from_steady)
    all_ms: float | None  # to the last terminal of all; None if one never got it


def propagation_figures(entries: list[Propagation], steady: bool = True, origins=None) -> tuple[dict | None, int]:
    """Percentiles of propagation (to steady terminals, or to all), and how many never completed;
    only of enrolments at ``origins`` (terminal ids) when given."""
    if origins is not None:
        entries = [e for e in entries if e.terminal_id in origins]
    if steady:
        entries = [e for e in entries if e.from_steady]
    values = [e.steady_ms if steady else e.all_ms for e in entries]
    done = [v for v in values if v is not None]
    figures = percentiles(done)
    return (None if figures is None else {k: round(v, 1) for k, v in figures.items()}), len(values) - len(done)


@dataclass
class FleetResult:
    spec: FleetSpec
    workers: int
    started_ms: float  # wall clock at "go"
    settled: bool
    settle_s: float  # from the end of production to settled (or to giving up)
    produced: int
    deliveries: int
    last_delivery_ms: float
    steady: int
    garbage_sent: int
    dropped: list | None
    cpu_s: float  # CPU the workers used from "go" until settled (or given up): is the fleet itself the bottleneck?
    online_s: float | None  # from dialling to every terminal online at once (as progress reports saw it)
    propagation: list[Propagation] = field(default_factory=list)
    zk_ports: dict[int, int] = field(default_factory=dict)  # where each ZK device listened


class Fleet:
    def __init__(self, spec: FleetSpec, log_file=None):
        self.spec = spec
        self.log_file = log_file  # where workers' warnings go; None: this process's stderr
        self._messages: queue.Queue = queue.Queue()
        self._procs: list[subprocess.Popen] = []
        self._progress: dict[int, dict] = {}
        self._reported: set[int] = set()  # workers that sent their result: their exit is no news
        self.zk_ports: dict[int, int] = {}
        self.online_s: float | None = None

    def run(self, on_progress=None, on_ready=None, settled=None, connect_timeout: float | None = None,
            on_listening=None, on_settled=None) -> FleetResult:
        """Run the scenario and return what the workers measured.

        ``on_listening(zk_ports)``, if given, is called once every ZK device listens ({terminal id:
        port}); it may start the gateway and return the HOST:PORT native terminals dial (else
        ``spec.gateway``). ``settled()``, if given, is asked (besides the fleet having no
        unacknowledged events or unread ZK changes) whether the fleet has settled: the load test
        asks the gateway's database. Without it, a fleet with no deliveries for ``settle_s`` has
        settled. ``on_settled(fleet)`` runs once it has, before the dumps (``measure_idle``).
        """
        spec = self.spec
        connect_timeout = connect_timeout or 30 + spec.devices * 0.05
        try:
            self._start_workers()
            for ports in self._gather("listening", connect_timeout).values():
                self.zk_ports.update({int(tid): port for tid, port in ports.items()})
            gateway = on_listening(dict(self.zk_ports)) if on_listening is not None else None
            self._send(dict(gateway=gateway or spec.gateway))
            self._connect(connect_timeout, on_progress)
            if on_ready is not None:
                on_ready()
            cpu_ready_s = self.cpu_s()
            started_ms = wall_ms() + 500
            self._send(dict(go=started_ms))
            self._drain(started_ms / 1000 + spec.duration, on_progress, "running", started_ms)
            ended = time.time()
            is_settled = self._settle(settled, on_progress, started_ms)
            settle_s = time.time() - ended
            # The gateway's load window ends here too; what follows (the load test's idle
            # measurement, reconciliation, the dumps) is not the load's.
            cpu_s = self.cpu_s() - cpu_ready_s
            if is_settled and on_settled is not None:
                on_settled(self)
            self._send(dict(stop=True))
            results = list(self._gather("result").values())
        finally:
            self._reap()
        return self._combine(results, started_ms, is_settled, settle_s, cpu_s)

    # -- workers ------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        ids = self.spec.terminal_ids
        count = self.spec.worker_count()
        for index in range(count):
            share = ids[index::count]
            proc = subprocess.Popen(
                [sys.executable, "-m", "simulator.fleet_worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log_file, text=True, bufsize=1,
            )
            self._procs.append(proc)
            threading.Thread(target=self._read, args=(index, proc), daemon=True).start()
            proc.stdin.write(json.dumps(dict(spec=asdict(self.spec), terminal_ids=share)) + "\n")

    def _read(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._messages.put((index, json.loads(line)))
        self._messages.put((index, None))

    def _send(self, message: dict) -> None:
        for proc in self._procs:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()

    def _next(self, timeout: float):
        """The next message of any worker. A worker exits once it sent its result: the parent may
        read that exit while it still waits for a slower worker's result, so it is skipped."""
        deadline = time.time() + timeout
        index, message = self._messages.get(timeout=max(timeout, 0.01))
        while message is None and index in self._reported:
            index, message = self._messages.get(timeout=max(deadline - time.time(), 0.01))
        if message is None:
            code = self._procs[index].wait()
            raise FleetError(f"fleet worker {index} ended early (exit status {code}); its log says why")
        if "result" in message:
            self._reported.add(index)
        if "progress" in message:
            self._progress[index] = message["progress"]
        return index, message

    def _connect(self, timeout: float, on_progress) -> None:
        """Wait until every worker is ready, timing when every terminal was online; on time-out say
        which terminals are not, and why (what their last dial came to)."""
        dialled = time.time()

        def ready() -> bool:
            if self.online_s is None and self._total("online") == self.spec.devices:
                self.online_s = round(time.time() - dialled, 2)
            return self._count("ready") == len(self._procs)

        try:
            self._wait_until(ready, timeout, on_progress, "connecting", f"terminals online within {timeout:.0f} s")
        except FleetError as exc:
            late = {tid: why for p in self._progress.values() for tid, why in p.get("offline", {}).items()}
            said = "; ".join(f"terminal {tid}: {why}" for tid, why in list(late.items())[:10])
            raise FleetError(f"{exc}: {self._total('online')}/{self.spec.devices} online; {said}") from None

    def _count(self, state: str) -> int:
        return sum(p["state"] == state for p in self._progress.values())

    def _total(self, key: str) -> int:
        return sum(p[key] for p in self._progress.values())

    def _notify(self, on_progress, state: str, started_ms: float | None) -> None:
        if on_progress is None:
            return
        elapsed = (wall_ms() - started_ms) / 1000 if started_ms else 0.0
        on_progress(Progress(
            state, self.spec.devices, self._total("online"), elapsed, self.spec.duration, self._total("produced"),
            self._total("unacknowledged"), self._total("enrolled"), self._total("deliveries"),
        ))

    def _drain(self, until: float, on_progress, state: str, started_ms=None) -> None:
        """Handle messages until the wall clock reaches ``until``."""
        while time.time() < until:
            try:
                _, message = self._next(until - time.time())
            except queue.Empty:
                return
            if "progress" in message:
                self._notify(on_progress, state, started_ms)

    def _wait_until(self, predicate, timeout: float, on_progress, state: str, what: str) -> None:
        deadline = time.time() + timeout
        while not predicate():
            if time.time() > deadline:
                raise FleetError(f"timed out waiting for {what}")
            self._drain(min(deadline, time.time() + 0.5), on_progress, state)

    def _settle(self, settled, on_progress, started_ms: float) -> bool:
        deadline = time.time() + self.spec.drain_timeout
        while time.time() < deadline:
            self._drain(time.time() + 0.5, on_progress, "settling", started_ms)
            calm = (
                self._count("ended") == len(self._procs)
                and self._total("online") == self.spec.devices
                and self._total("unacknowledged") == 0
            )
            if not calm:
                continue
            if settled is not None:
                if settled():
                    return True
            elif wall_ms() - max(p["last_delivery_ms"] for p in self._progress.values()) > self.spec.settle_s * 1000:
                return True
        return False

    def measure_idle(self, seconds: float, on_progress=None) -> dict:
        """The ZK devices' traffic over ``seconds`` while nobody changes anything: bytes both ways,
        requests, requests that wrote, and user deliveries (which should be none)."""
        before = self._sample()
        started = time.time()
        self._drain(started + seconds, on_progress, "idle")
        after = self._sample()
        elapsed = time.time() - started
        return dict(seconds=round(elapsed, 2), **{key: after[key] - before[key] for key in after if key != "zk_devices"},
                    zk_devices=after["zk_devices"])

    def cpu_s(self) -> float:
        """CPU seconds the workers have used so far, together."""
        return self._sample()["cpu_s"]

    def _sample(self) -> dict:
        self._send(dict(sample=True))
        samples = self._gather("sample").values()
        return {key: sum(s[key] for s in samples) for key in next(iter(samples))}

    def _gather(self, key: str, timeout: float = 60.0) -> dict[int, object]:
        """One message carrying ``key`` from every worker, by worker index; the others are handled."""
        found: dict[int, object] = {}
        deadline = time.time() + timeout
        while len(found) < len(self._procs):
            try:
                index, message = self._next(deadline - time.time())
            except queue.Empty:
                raise FleetError(f"fleet workers did not say {key!r} within {timeout:.0f} s") from None
            if key in message:
                found[index] = message[key]
        return found

    def _reap(self) -> None:
        for proc in self._procs:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    # -- results ------------------------------------------------------------------------------

    def _combine(self, results: list[dict], started_ms: float, settled: bool, settle_s: float, cpu_s: float) -> FleetResult:
        enrolled, reach = {}, {}
        for r in results:
            enrolled.update(r["enrolled"])
            for user_id, (steady, steady_ms, everyone, everyone_ms) in r["reach"].items():
                total = reach.setdefault(user_id, [0, 0.0, 0, 0.0])
                total[0] += steady
                total[1] = max(total[1], steady_ms)
                total[2] += everyone
                total[3] = max(total[3], everyone_ms)
        steady = sum(r["steady"] for r in results)
        scenario = SCENARIOS[self.spec.scenario](self.spec.terminal_ids, self.spec.seed, self.spec.duration)
        disturbed = scenario.disturbed()
        propagation = []
        for user_id, (terminal_id, at_ms) in sorted(enrolled.items(), key=lambda item: item[1][1]):
            r = reach.get(user_id, [0, 0.0, 0, 0.0])
            from_steady = terminal_id not in disturbed
            steady_due = steady - from_steady  # the enrolling terminal is not sent its own record
            propagation.append(Propagation(
                enrolled_s=round((at_ms - started_ms) / 1000, 3),
                terminal_id=terminal_id,
                from_steady=from_steady,
                steady_ms=round(r[1] - at_ms, 1) if from_steady and r[0] >= steady_due else None,
                all_ms=round(r[3] - at_ms, 1) if r[2] >= self.spec.devices - 1 else None,
            ))
        dropped = next((r["dropped"] for r in results if r["dropped"]), None)
        return FleetResult(
            spec=self.spec,
            workers=len(self._procs),
            started_ms=started_ms,
            settled=settled,
            settle_s=round(settle_s, 2),
            produced=sum(r["produced"] for r in results),
            deliveries=sum(r["deliveries"] for r in results),
            last_delivery_ms=max(r["last_delivery_ms"] for r in results),
            steady=steady,
            garbage_sent=sum(r["garbage_sent"] for r in results),
            dropped=dropped,
            cpu_s=round(cpu_s, 2),
            online_s=self.online_s,
            propagation=propagation,
            zk_ports=dict(self.zk_ports),
        )


# -- command line ------------------------------------------------------------------------------


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a fleet run, shared by ``simulator fleet`` and ``gateway-loadtest``."""
    p.add_argument("--devices", type=int, required=True, metavar="N", help="number of simulated terminals")
    p.add_argument("--kind", choices=(*KINDS, "push"), default="native",
                   help="native terminals, emulated ZK devices the gateway dials, or mixed: the first half of the ids "
                        "(rounded up) native, the rest ZK; push: emulated PUSH devices calling the gateway, from one "
                        "process (simulator/push/station.py) (default native)")
    p.add_argument("--zk-comm-key", type=int, default=0, metavar="K", help="every ZK device's comm key (default 0: none)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="enroll-storm",
                   help="; ".join(f"{name}: {s.about}" for name, s in sorted(SCENARIOS.items())) + " (default enroll-storm)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--duration", type=float, default=60.0, metavar="SEC", help="seconds of load (default 60)")
    p.add_argument("--rate", type=float, metavar="R",
                   help="action units a second across the fleet (default: the scenario's own; see docs/loadtest.md)")
    p.add_argument("--mix", choices=sorted(MIXES), default="typical", help="size of enrolled records (default typical)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="worker processes (default: as the cores suit)")
    p.add_argument("--first-id", type=int, default=1, metavar="ID", help="id of the first terminal (default 1)")
    p.add_argument("--drop-one", action="store_true",
                   help="make the first terminal silently lose one received user (to test convergence checks)")


def spec_from_args(args, **overrides) -> FleetSpec:
    values = dict(
        devices=args.devices, scenario=args.scenario, seed=args.seed, duration=args.duration, rate=args.rate,
        mix=args.mix, workers=args.workers, first_id=args.first_id, drop_one=args.drop_one,
        kind=args.kind, zk_comm_key=args.zk_comm_key,
    )
    values.update(overrides)
    return FleetSpec(**values)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fleet", help="many simulated terminals running a load scenario against a gateway",
        description="Run N simulated terminals in a few processes against a gateway (see docs/loadtest.md).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gateway", metavar="HOST:PORT", help="terminals dial in to the gateway here")
    where.add_argument("--listen", type=int, metavar="BASEPORT",
                       help="terminals listen on BASEPORT, BASEPORT+1, ... for a gateway that dials out")
    add_fleet_arguments(p)
    p.add_argument("--secret", default="fleet-secret", help="every terminal's secret (the gateway's default_secret)")
    p.add_argument("--dump", metavar="DIR", help="write each terminal's user store as JSON here at the end")
    p.add_argument("--zk-port", type=int, default=0, metavar="BASEPORT",
                   help="ZK devices listen on BASEPORT, BASEPORT+1, ... (default: each on a free port, printed)")
    p.add_argument("--zk-config", metavar="FILE",
                   help="write the gateway configuration for the fleet ([[zk]] entries and admission) here once the ZK devices listen")
    p.add_argument("--poll-s", type=float, metavar="SEC", help="with --zk-config: the poll_s of every [[zk]] entry")
    p.add_argument("--push", metavar="URL", help="with --kind push: the gateway's [push] address (http://HOST:PORT); the devices "
                   "enrol --rate people a second (default 1) for --duration")
    p.add_argument("--spread-s", type=float, default=10.0, metavar="SEC",
                   help="with --kind push: spread the devices' first calls over this long, as devices switched on apart (default 10)")
    return p


def run(args) -> int:
    if args.kind == "push":
        return push_station.run_fleet(args)
    if args.gateway:
        try:
            parse_host_port(args.gateway)
        except AddressError as exc:
            print(f"simulator fleet: --gateway: {exc}", file=sys.stderr)
            return 2
    spec = spec_from_args(args, gateway=args.gateway or "", listen=args.listen or 0, secret=args.secret, dump=args.dump,
                          zk_port=args.zk_port)
    if spec.native_ids and not (args.gateway or args.listen):
        print("simulator fleet: native terminals need --gateway HOST:PORT or --listen BASEPORT", file=sys.stderr)
        return 2
    if not 0 <= spec.zk_comm_key <= 999_999:
        print("simulator fleet: --zk-comm-key must be 0 to 999999", file=sys.stderr)
        return 2

    def announce(zk_ports: dict[int, int]) -> None:
        if zk_ports:
            print(f"{len(zk_ports)} ZK devices listening on 127.0.0.1, ports {describe_ports(zk_ports)}", flush=True)
        if args.zk_config:
            Path(args.zk_config).write_text(fleet_config(
                secret=spec.secret, dial_in=bool(args.gateway and spec.native_ids), zk=zk_ports, comm_key=spec.zk_comm_key,
                poll_s=args.poll_s, listening={t: spec.listen + t - spec.first_id for t in spec.native_ids} if args.listen else None))
            print(f"gateway configuration for the fleet written to {args.zk_config}", flush=True)

    bar = ProgressBar(sys.stderr, every_s=5)
    try:
        result = Fleet(spec).run(on_progress=bar, on_listening=announce)
    except FleetError as exc:
        print(f"simulator fleet: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    steady, incomplete = propagation_figures(result.propagation)
    print(f"{spec.devices} terminals in {result.workers} worker(s), scenario {spec.scenario}, seed {spec.seed}: "
          f"{result.produced:,} events, {len(result.propagation):,} enrolled, {result.deliveries:,} deliveries")
    if steady:
        print(f"propagation to every steady terminal: p50 {steady['p50']:.0f} ms, p99 {steady['p99']:.0f} ms, "
              f"max {steady['max']:.0f} ms; {incomplete} never complete")
    print(f"settled {result.settle_s:.1f} s after the load ended" if result.settled else "did NOT settle")
    per_delivery = f", {result.cpu_s * 1e6 / result.deliveries:.0f} us a delivery" if result.deliveries else ""
    print(f"the fleet's own CPU from the start until settled: {result.cpu_s:.1f} s{per_delivery}")
    if spec.dump:
        print(f"user stores written to {spec.dump}")
    return 0 if result.settled else 1


def describe_ports(ports: dict[int, int]) -> str:
    """``40001-40100`` for consecutive ports in terminal order, else ``id:port`` pairs."""
    ordered = [ports[t] for t in sorted(ports)]
    if ordered == list(range(ordered[0], ordered[0] + len(ordered))):
        return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    return ", ".join(f"{t}:{ports[t]}" for t in sorted(ports))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="simulator")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["fleet", *argv]))


if __name__ == "__main__":
    sys.exit(main())
