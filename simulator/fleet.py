"""Fleet: hundreds or thousands of simulated terminals, a few worker processes, one reactor each.

``Fleet.run`` (the parent, plain blocking code) splits the terminal ids among workers
(``python -m simulator.fleet --worker``) and talks to them in JSON lines over their stdin and
stdout: a worker says ``ready`` once its terminals are online, the parent answers ``go`` with one
wall-clock start time for all, workers report ``progress`` twice a second and stop producing by
themselves when the duration is over, the parent says ``stop`` once the fleet has settled, and
each worker answers with its ``result``, writes its dumps and exits.

A worker times propagation with wall-clock milliseconds (one machine, one clock): when a
terminal enrols someone, and when each other terminal first applies that user.

``--dump DIR`` writes one ``terminal-<id>.json`` per terminal (see ``Station.dump``), so anyone
can compare the terminals with the server without trusting the gateway's own view.
"""

import argparse
import base64
import itertools
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from twisted.internet import task

from protocol.events import EventCode, Origin
from protocol.records import UserRecordWire
from simulator.people import MIXES, People
from simulator.scenarios import SCENARIOS
from simulator.tcp import DialingTerminal, ListeningTerminal
from simulator.terminal import Terminal

TERMINALS_PER_WORKER = 500  # one reactor holds this many comfortably; more use more processes


def wall_ms() -> float:
    return time.time() * 1000


@dataclass
class FleetSpec:
    """Everything a fleet run needs; sent to each worker as JSON."""

    devices: int
    gateway: str = ""  # HOST:PORT the terminals dial, unless they listen
    listen: int = 0  # first port of terminals the gateway dials out to (terminal i on listen + i)
    scenario: str = "enroll-storm"
    seed: int = 0
    duration: float = 60.0
    rate: float | None = None  # action units a second across the fleet; None: the scenario's default
    dump: str | None = None
    mix: str = "typical"
    secret: str = "fleet-secret"
    first_id: int = 1
    workers: int = 0  # 0: as the machine's cores suit
    drop_one: bool = False  # for the harness's own tests: one terminal silently loses a record
    settle_s: float = 3.0  # without a settled() check: quiet this long means settled
    drain_timeout: float = 120.0

    @property
    def terminal_ids(self) -> list[int]:
        return list(range(self.first_id, self.first_id + self.devices))

    @property
    def effective_rate(self) -> float:
        return SCENARIOS[self.scenario].default_rate if self.rate is None else self.rate

    def worker_count(self) -> int:
        if self.workers:
            return max(1, min(self.workers, self.devices))
        by_size = math.ceil(self.devices / TERMINALS_PER_WORKER)
        return max(1, min(by_size, (os.cpu_count() or 2) - 1))  # leave a core to the gateway


# -- inside a worker ---------------------------------------------------------------------------


class Station:
    """One terminal of the fleet, with what the scenario does at its keypad and what it remembers.

    ``changed_here`` keeps the last version of each user made at this keypad, ``deleted_here`` the
    users deleted here and not sent back since: the convergence check needs both.
    """

    def __init__(self, terminal: Terminal, link_factory, people: People, clock):
        self.terminal = terminal
        self.terminal_id = terminal.terminal_id
        self.link_factory = link_factory
        self.people = people
        self.clock = clock
        self.away = False
        self.changed_here: dict = {}
        self.deleted_here: set[str] = set()
        self._serial = itertools.count(1)
        terminal.applied_listeners.append(self._applied)

    @property
    def online(self) -> bool:
        link = self.link_factory.link
        return link is not None and link.established

    def holds(self, user_id: str) -> bool:
        return user_id in self.terminal.users

    def enroll_new(self) -> str:
        user_id = f"{self.terminal_id}-{next(self._serial)}"
        self.enroll(self.people.person(user_id))
        return user_id

    def enroll(self, record) -> None:
        self.terminal.enroll(record)
        self._changed(record.user_id)

    def edit(self, user_id: str) -> None:
        self.terminal.edit(user_id, **self.people.edit(self.terminal.users[user_id]))
        self._changed(user_id)

    def delete(self, user_id: str) -> None:
        self.terminal.delete(user_id)
        self.deleted_here.add(user_id)

    def verify(self, user_id: str) -> None:
        self.terminal.verify(user_id)

    def go_offline(self) -> None:
        self.away = True
        self.link_factory.go_offline()

    def come_back(self) -> None:
        self.away = False
        self.link_factory.come_back()

    def _changed(self, user_id: str) -> None:
        self.changed_here[user_id] = self.terminal.users[user_id]
        self.deleted_here.discard(user_id)

    def _applied(self, user_id: str, record) -> None:
        if record is not None:
            self.deleted_here.discard(user_id)

    def dump(self) -> dict:
        """This terminal as JSON: its users (digest and name), what was changed here, its log."""
        t = self.terminal
        return dict(
            terminal_id=self.terminal_id,
            last_event_id=t.next_event_id - 1,
            unacknowledged=len(t.log),
            overwritten=t.overwritten,
            users={u: dict(digest=r.digest().hex(), name=r.name) for u, r in sorted(t.users.items())},
            changed_here={u: base64.b64encode(UserRecordWire.build(r)).decode() for u, r in sorted(self.changed_here.items())},
            deleted_here=sorted(self.deleted_here),
        )


class Tally:
    """A worker's measurements: enrolments, first arrivals of each user at each terminal, deliveries."""

    def __init__(self, steady: frozenset[int]):
        self.steady = steady
        self.started_ms: float | None = None
        self.enrolled: dict[str, list] = {}  # user -> [terminal, wall ms]
        self.arrived: dict[str, set[int]] = {}
        self.reach: dict[str, list] = {}  # user -> [steady count, steady last ms, all count, all last ms]
        self.deliveries = 0
        self.last_delivery_ms = 0.0

    def watch(self, station: Station) -> None:
        station.terminal.applied_listeners.append(lambda user_id, record: self._applied(station, user_id))
        station.terminal.listeners.append(lambda event: self._logged(station, event))

    def _logged(self, station: Station, event) -> None:
        if self.started_ms is not None and event.code == EventCode.ENROLL_SUCCESS and event.sub_code == Origin.DEVICE:
            self.enrolled[event.user_id] = [station.terminal_id, wall_ms()]

    def _applied(self, station: Station, user_id: str) -> None:
        if self.started_ms is None:
            return
        now = wall_ms()
        self.deliveries += 1
        self.last_delivery_ms = now
        arrived = self.arrived.setdefault(user_id, set())
        if station.terminal_id in arrived or user_id in station.changed_here:
            return
        arrived.add(station.terminal_id)
        reach = self.reach.setdefault(user_id, [0, 0.0, 0, 0.0])
        if station.terminal_id in self.steady:
            reach[0] += 1
            reach[1] = now
        reach[2] += 1
        reach[3] = now


class FleetWorker:
    """One worker process: its share of the terminals, one reactor, JSON lines on stdin/stdout."""

    tick_s = 0.05
    scenario_tick_s = 0.2
    progress_s = 0.5
    connects_per_tick = 50  # dial in steps, so a thousand terminals do not hit the listen backlog at once

    def __init__(self, reactor, write_line):
        self.reactor = reactor
        self.write_line = write_line
        self.stations: list[Station] = []
        self.state = "connecting"
        self._timers = []

    def start(self, spec: FleetSpec, terminal_ids: list[int]) -> None:
        self.spec = spec
        self.scenario = SCENARIOS[spec.scenario](spec.terminal_ids, spec.seed, spec.duration)
        self.tally = Tally(frozenset(spec.terminal_ids) - self.scenario.disturbed())
        host, _, port = spec.gateway.rpartition(":")
        for terminal_id in terminal_ids:
            terminal = Terminal(terminal_id, spec.secret)
            faults = self.scenario.faults(terminal_id)
            if spec.listen:
                link = ListeningTerminal(terminal, self.reactor, faults=faults)
            else:
                link = DialingTerminal(terminal, self.reactor, host, int(port), faults=faults)
            people = People(spec.seed * 1_000_003 + terminal_id, MIXES[spec.mix])
            station = Station(terminal, link, people, self.reactor)
            self.tally.watch(station)
            self.stations.append(station)
        self.scenario.bind(self.stations)
        self._repeat(self.progress_s, self._report_progress)
        self._repeat(self.tick_s, self._connect_some, iter(self.stations))

    def _repeat(self, period_s: float, action, *args):
        timer = task.LoopingCall(action, *args)
        timer.clock = self.reactor
        timer.start(period_s, now=True)
        self._timers.append(timer)
        return timer

    def _connect_some(self, pending) -> None:
        for station in itertools.islice(pending, self.connects_per_tick):
            if self.spec.listen:
                station.link_factory.listen(self.spec.listen + station.terminal_id - self.spec.first_id, "127.0.0.1")
            else:
                station.link_factory.start()

    def _report_progress(self) -> None:
        online = sum(s.online for s in self.stations)
        if self.state == "connecting" and online == len(self.stations):
            self.state = "preparing"
            self.scenario.prepare()
        if self.state == "preparing" and self.scenario.prepared():
            self.state = "ready"
            self.write_line(dict(ready=True))
        self.write_line(dict(progress=dict(
            state=self.state,
            online=online,
            produced=sum(s.terminal.next_event_id - 1 for s in self.stations),
            unacknowledged=sum(len(s.terminal.log) for s in self.stations),
            enrolled=len(self.tally.enrolled),
            deliveries=self.tally.deliveries,
            last_delivery_ms=self.tally.last_delivery_ms,
        )))

    def go(self, start_ms: float) -> None:
        self.reactor.callLater(max(0.0, (start_ms - wall_ms()) / 1000), self._begin, start_ms)

    def _begin(self, start_ms: float) -> None:
        self.state = "running"
        self._cpu_at_start = time.process_time()
        self.tally.started_ms = start_ms
        share = self.spec.effective_rate * len(self.stations) / self.spec.devices
        self.scenario.begin()
        self._budget, self._last = 0.0, self.reactor.seconds()
        self._drive = self._repeat(self.tick_s, self._act, share)
        self._ticks = self._repeat(self.scenario_tick_s, lambda: self.scenario.tick((wall_ms() - start_ms) / 1000))
        self.reactor.callLater(self.spec.duration, self._end)

    def _act(self, rate: float) -> None:
        now = self.reactor.seconds()
        self._budget += rate * (now - self._last)
        self._last = now
        for _ in range(int(self._budget)):
            self.scenario.act()
        self._budget -= int(self._budget)

    def _end(self) -> None:
        for timer in (self._drive, self._ticks):
            timer.stop()
        self.scenario.end()
        self.state = "ended"

    def stop(self) -> None:
        """The parent saw the fleet settle: drop a record if asked, dump, report, exit."""
        dropped = self._drop_one() if self.spec.drop_one else None
        if self.spec.dump:
            folder = Path(self.spec.dump)
            folder.mkdir(parents=True, exist_ok=True)
            for station in self.stations:
                (folder / f"terminal-{station.terminal_id}.json").write_text(json.dumps(station.dump()))
        for timer in self._timers:
            if timer.running:
                timer.stop()
        for station in self.stations:
            station.link_factory.go_offline()
        t = self.tally
        self.write_line(dict(result=dict(
            terminals=len(self.stations),
            steady=len([s for s in self.stations if s.terminal_id in t.steady]),
            produced=sum(s.terminal.next_event_id - 1 for s in self.stations),
            enrolled=t.enrolled,
            reach=t.reach,
            deliveries=t.deliveries,
            last_delivery_ms=t.last_delivery_ms,
            garbage_sent=sum(getattr(s.link_factory.link, "garbage_sent", 0) for s in self.stations),
            dropped=dropped,
            cpu_s=time.process_time() - self._cpu_at_start,
        )))

    def _drop_one(self):
        """The fleet's first terminal forgets one user it received, telling nobody."""
        for station in self.stations:
            if station.terminal_id == self.spec.first_id:
                received = sorted(set(station.terminal.users) - set(station.changed_here))
                if received:
                    del station.terminal.users[received[0]]
                    return [station.terminal_id, received[0]]
        return None


def worker_main() -> int:
    """Entry of a worker process: the spec comes as the first line on stdin."""
    from twisted.internet import reactor, stdio
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, textFileLogObserver
    from twisted.protocols.basic import LineReceiver

    warnings = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stderr), [warnings])])

    class Pipe(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 20

        def connectionMade(self):
            self.worker = FleetWorker(reactor, lambda message: self.sendLine(json.dumps(message).encode()))

        def lineReceived(self, line):
            message = json.loads(line)
            if "spec" in message:
                self.worker.start(FleetSpec(**message["spec"]), message["terminal_ids"])
            elif "go" in message:
                self.worker.go(message["go"])
            elif "stop" in message:
                self.worker.stop()
                self.transport.loseConnection()

        def connectionLost(self, reason):
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Pipe())
    reactor.run()
    return 0


# -- the parent --------------------------------------------------------------------------------


class FleetError(RuntimeError):
    pass


@dataclass
class Progress:
    state: str  # connecting | running | settling
    devices: int
    online: int
    elapsed_s: float
    duration_s: float
    produced: int
    unacknowledged: int
    enrolled: int
    deliveries: int


@dataclass
class Propagation:
    """One user enrolled during the run: when, and how long until the last terminal applied it."""

    enrolled_s: float  # after "go"
    from_steady: bool  # enrolled at a steady terminal: only these count towards steady_ms
    steady_ms: float | None  # to the last steady terminal; None if one never got it (or not from_steady)
    all_ms: float | None  # to the last terminal of all; None if one never got it


def propagation_figures(entries: list[Propagation], steady: bool = True) -> tuple[dict | None, int]:
    """Percentiles of propagation (to steady terminals, or to all), and how many never completed."""
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
    cpu_s: float  # CPU the workers used from "go" to "stop": is the fleet itself the bottleneck?
    propagation: list[Propagation] = field(default_factory=list)


class Fleet:
    def __init__(self, spec: FleetSpec, log_file=None):
        self.spec = spec
        self.log_file = log_file  # where workers' warnings go; None: this process's stderr
        self._messages: queue.Queue = queue.Queue()
        self._procs: list[subprocess.Popen] = []
        self._progress: dict[int, dict] = {}

    def run(self, on_progress=None, on_ready=None, settled=None, connect_timeout: float | None = None) -> FleetResult:
        """Run the scenario and return what the workers measured.

        ``settled()``, if given, is asked (besides the fleet having no unacknowledged events) whether
        the fleet has settled: the load test asks the gateway's database. Without it, a fleet with
        no deliveries for ``settle_s`` has settled.
        """
        spec = self.spec
        connect_timeout = connect_timeout or 30 + spec.devices * 0.05
        try:
            self._start_workers()
            self._wait_until(lambda: self._count("ready") == len(self._procs), connect_timeout, on_progress, "connecting",
                             f"terminals online within {connect_timeout:.0f} s")
            if on_ready is not None:
                on_ready()
            started_ms = wall_ms() + 500
            self._send(dict(go=started_ms))
            self._drain(started_ms / 1000 + spec.duration, on_progress, "running", started_ms)
            ended = time.time()
            is_settled = self._settle(settled, on_progress, started_ms)
            settle_s = time.time() - ended
            self._send(dict(stop=True))
            results = self._collect_results()
        finally:
            self._reap()
        return self._combine(results, started_ms, is_settled, settle_s)

    # -- workers ------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        ids = self.spec.terminal_ids
        count = self.spec.worker_count()
        for index in range(count):
            share = ids[index::count]
            proc = subprocess.Popen(
                [sys.executable, "-m", "simulator.fleet", "--worker"],
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
        index, message = self._messages.get(timeout=max(timeout, 0.01))
        if message is None:
            code = self._procs[index].wait()
            raise FleetError(f"fleet worker {index} ended early (exit status {code}); its log says why")
        if "progress" in message:
            self._progress[index] = message["progress"]
        return index, message

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

    def _collect_results(self, timeout: float = 60.0) -> list[dict]:
        results: dict[int, dict] = {}
        deadline = time.time() + timeout
        while len(results) < len(self._procs):
            try:
                index, message = self._next(deadline - time.time())
            except queue.Empty:
                raise FleetError(f"fleet workers did not report within {timeout:.0f} s") from None
            if "result" in message:
                results[index] = message["result"]
        return list(results.values())

    def _reap(self) -> None:
        for proc in self._procs:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    # -- results ------------------------------------------------------------------------------

    def _combine(self, results: list[dict], started_ms: float, settled: bool, settle_s: float) -> FleetResult:
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
            cpu_s=round(sum(r["cpu_s"] for r in results), 2),
            propagation=propagation,
        )


def percentiles(values) -> dict | None:
    """p50, p95, p99 (nearest rank) and max of some numbers; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None

    def rank(p: float):
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return dict(p50=rank(50), p95=rank(95), p99=rank(99), max=ordered[-1])


def progress_line(p: Progress) -> str:
    if p.state == "connecting":
        return f"connecting: {p.online}/{p.devices} terminals online"
    return (f"{p.state} {min(p.elapsed_s, p.duration_s):4.0f}/{p.duration_s:.0f} s: {p.online}/{p.devices} online, "
            f"{p.produced:,} events ({p.unacknowledged:,} unacknowledged), {p.enrolled:,} enrolled, "
            f"{p.deliveries:,} deliveries")


# -- command line ------------------------------------------------------------------------------


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a fleet run, shared by ``simulator fleet`` and ``gateway-loadtest``."""
    p.add_argument("--devices", type=int, required=True, metavar="N", help="number of simulated terminals")
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
    )
    values.update(overrides)
    return FleetSpec(**values)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fleet", help="many simulated terminals running a load scenario against a gateway",
        description="Run N simulated terminals in a few processes against a gateway (see docs/loadtest.md).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--gateway", metavar="HOST:PORT", help="terminals dial in to the gateway here")
    where.add_argument("--listen", type=int, metavar="BASEPORT",
                       help="terminals listen on BASEPORT, BASEPORT+1, ... for a gateway that dials out")
    add_fleet_arguments(p)
    p.add_argument("--secret", default="fleet-secret", help="every terminal's secret (the gateway's default_secret)")
    p.add_argument("--dump", metavar="DIR", help="write each terminal's user store as JSON here at the end")
    return p


def run(args) -> int:
    spec = spec_from_args(args, gateway=args.gateway or "", listen=args.listen or 0, secret=args.secret, dump=args.dump)
    last = [0.0]

    def show(p: Progress) -> None:
        if time.time() - last[0] >= 5:
            last[0] = time.time()
            print(progress_line(p), file=sys.stderr)

    try:
        result = Fleet(spec).run(on_progress=show)
    except FleetError as exc:
        print(f"simulator fleet: {exc}", file=sys.stderr)
        return 1
    steady, incomplete = propagation_figures(result.propagation)
    print(f"{spec.devices} terminals in {result.workers} worker(s), scenario {spec.scenario}, seed {spec.seed}: "
          f"{result.produced:,} events, {len(result.propagation):,} enrolled, {result.deliveries:,} deliveries")
    if steady:
        print(f"propagation to every steady terminal: p50 {steady['p50']:.0f} ms, p99 {steady['p99']:.0f} ms, "
              f"max {steady['max']:.0f} ms; {incomplete} never complete")
    print(f"settled {result.settle_s:.1f} s after the load ended" if result.settled else "did NOT settle")
    if spec.dump:
        print(f"user stores written to {spec.dump}")
    return 0 if result.settled else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--worker"]:
        return worker_main()
    parser = argparse.ArgumentParser(prog="simulator")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["fleet", *argv]))


if __name__ == "__main__":
    sys.exit(main())
