"""A fleet worker: one process, one reactor, hundreds of simulated terminals and ZK devices.

``simulator fleet`` (simulator/fleet.py) starts these as ``python -m simulator.fleet_worker`` and
talks to each in JSON lines over stdin and stdout (the protocol is described there). A worker
times propagation with wall-clock milliseconds (one machine, one clock): when a terminal enrols
someone, and when each other terminal first applies that user. Native terminals are ``Station``s
here; emulated ZK devices are ``simulator.zk.station.ZkStation``s, which scenarios drive alike.
"""

import base64
import itertools
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import task

from protocol.events import EventCode, Origin
from protocol.records import UserRecordWire
from protocol.zk.commands import Command as ZkCommand
from protocol.address import parse_host_port
from simulator.people import MIXES, People
from simulator.scenarios import SCENARIOS
from simulator.tcp import DialingTerminal, ListeningTerminal
from simulator.terminal import Terminal, record_digest_of
from simulator.zk.device import ZkDevice
from simulator.zk.station import ZkStation

TERMINALS_PER_WORKER = 500  # one reactor holds this many comfortably; more use more processes
FDS_NOT_FOR_LINKS = 100  # a worker's pipes, its Python and its log
KINDS = ("native", "zk", "mixed")  # mixed: the first half of the ids (rounded up) native, the rest ZK devices
ZK_WRITES = (ZkCommand.USER_WRQ, ZkCommand.SAVE_USERTEMPS, ZkCommand.DELETE_USER, ZkCommand.DELETE_USERTEMP, ZkCommand.DEL_FPTMP)


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
    kind: str = "native"  # one of KINDS
    zk_port: int = 0  # ZK device n (0, 1, ...) listens on zk_port + n; 0: each on a free port of its own
    zk_comm_key: int = 0

    @property
    def terminal_ids(self) -> list[int]:
        return list(range(self.first_id, self.first_id + self.devices))

    @property
    def zk_ids(self) -> list[int]:
        """The ids that are emulated ZK devices, the gateway dialling each."""
        ids = self.terminal_ids
        return {"native": [], "zk": ids, "mixed": ids[(len(ids) + 1) // 2 :]}[self.kind]

    @property
    def native_ids(self) -> list[int]:
        zk = set(self.zk_ids)
        return [t for t in self.terminal_ids if t not in zk]

    @property
    def effective_rate(self) -> float:
        return SCENARIOS[self.scenario].default_rate if self.rate is None else self.rate

    def worker_count(self) -> int:
        if self.workers:
            return max(1, min(self.workers, self.devices))
        by_size = math.ceil(self.devices / TERMINALS_PER_WORKER)
        by_cores = max(1, min(by_size, (os.cpu_count() or 2) - 1))  # leave a core to the gateway
        return max(by_cores, math.ceil(self.devices / links_per_worker()))  # each link holds a file descriptor


def links_per_worker() -> int:
    """How many terminals one worker can hold: its open-file limit once raised (``raise_fd_limit``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if hard == resource.RLIM_INFINITY else hard
    return max(1, limit - FDS_NOT_FOR_LINKS)


def raise_fd_limit() -> None:
    """Lift this process's soft open-file limit to the hard one: a worker holds a socket per terminal."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Station:
    """One native terminal of the fleet, with what the scenario does at its keypad and what it remembers.

    ``changed_here`` keeps the last version of each user made at this keypad, ``deleted_here`` the
    users deleted here and not sent back since: the convergence check needs both.
    """

    kind = "native"

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

    @property
    def produced(self) -> int:
        return self.terminal.next_event_id - 1

    @property
    def unacknowledged(self) -> int:
        return len(self.terminal.log)

    def watch(self, applied, enrolled) -> None:
        """``applied(user_id)`` for each user the gateway put or deleted here; ``enrolled(user_id)``
        for each person enrolled at this keypad."""
        self.terminal.applied_listeners.append(lambda user_id, record: applied(user_id))
        self.terminal.listeners.append(
            lambda event: enrolled(event.user_id) if (event.code, event.sub_code) == (EventCode.ENROLL_SUCCESS, Origin.DEVICE) else None)

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
        self.changed_here.pop(user_id, None)  # an edit not pulled before this delete is gone with it, as at a ZK station
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
            kind=self.kind,
            last_event_id=t.next_event_id - 1,
            unacknowledged=len(t.log),
            overwritten=t.overwritten,
            users={u: dict(digest=record_digest_of(r).hex(), name=r.name) for u, r in sorted(t.users.items())},
            changed_here={u: base64.b64encode(UserRecordWire.build(r)).decode() for u, r in sorted(self.changed_here.items())},
            deleted_here=sorted(self.deleted_here),
        )

    def forget_one(self) -> str | None:
        """Lose one user the gateway sent, telling nobody (the harness's own tests)."""
        received = sorted(set(self.terminal.users) - set(self.changed_here))
        if not received:
            return None
        del self.terminal.users[received[0]]
        return received[0]


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

    def watch(self, station) -> None:
        station.watch(applied=lambda user_id: self._applied(station, user_id),
                      enrolled=lambda user_id: self._enrolled(station, user_id))

    def _enrolled(self, station, user_id: str) -> None:
        if self.started_ms is not None:
            self.enrolled[user_id] = [station.terminal_id, wall_ms()]

    def _applied(self, station, user_id: str) -> None:
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
    # Dials still shaking hands, the fleet's workers together: under the gateway's limit of links
    # shaking hands from one address (64 by default; every simulated terminal comes from one).
    # Beyond it the gateway refuses and they redial: 29,000 refusals in 10 s, four minutes to
    # connect 10,000 terminals.
    dials_in_flight = 48
    # A dial not ended by then gives up its place among ``dials_in_flight``: a handshake takes well
    # under a second even with thousands online, and the link's own deadline (30 s) would hold the
    # fleet's dialling back that long behind each gateway that neither answers nor refuses.
    dial_place_s = 10.0

    def __init__(self, reactor, write_line):
        self.reactor = reactor
        self.write_line = write_line
        self.stations: list[Station] = []
        self.state = "connecting"
        self._timers = []

    def start(self, spec: FleetSpec, terminal_ids: list[int]) -> None:
        """The ZK devices listen at once and their ports go to the parent (``listening``): it may
        have to write the gateway's configuration before the gateway can start."""
        self.spec = spec
        self.terminal_ids = terminal_ids
        self.scenario = SCENARIOS[spec.scenario](spec.terminal_ids, spec.seed, spec.duration)
        self.tally = Tally(frozenset(spec.terminal_ids) - self.scenario.disturbed())
        zk_ids = spec.zk_ids
        ports = {}
        for terminal_id in sorted(set(terminal_ids) & set(zk_ids)):
            device = ZkDevice(comm_key=spec.zk_comm_key, serial_number=f"EMU{terminal_id:010d}")
            station = ZkStation(terminal_id, device, spec.seed * 1_000_003 + terminal_id, self.reactor)
            ports[terminal_id] = station.listen(spec.zk_port + zk_ids.index(terminal_id) if spec.zk_port else 0)
            self.stations.append(station)
        self.write_line(dict(listening=ports))

    def connect(self, gateway: str) -> None:
        """The gateway is up (at ``gateway`` for terminals that dial in): native terminals connect,
        the scenario binds, progress reports start."""
        spec = self.spec
        host, port = parse_host_port(gateway) if not spec.listen and spec.native_ids else ("", 0)
        for terminal_id in sorted(set(self.terminal_ids) - set(spec.zk_ids)):
            terminal = Terminal(terminal_id, spec.secret)
            faults = self.scenario.faults(terminal_id)
            if spec.listen:
                link = ListeningTerminal(terminal, self.reactor, faults=faults)
            else:
                link = DialingTerminal(terminal, self.reactor, host, port, faults=faults)
            people = People(spec.seed * 1_000_003 + terminal_id, MIXES[spec.mix])
            self.stations.append(Station(terminal, link, people, self.reactor))
        self.stations.sort(key=lambda s: s.terminal_id)
        for station in self.stations:
            self.tally.watch(station)
        self.scenario.bind(self.stations)
        self._repeat(self.progress_s, self._report_progress)
        natives = [s for s in self.stations if s.kind == "native"]
        if natives:
            self._connecting = self._repeat(self.tick_s, self._connect_some, iter(natives), {})

    def _repeat(self, period_s: float, action, *args):
        timer = task.LoopingCall(action, *args)
        timer.clock = self.reactor
        timer.start(period_s, now=True)
        self._timers.append(timer)
        return timer

    def _connect_some(self, pending, dialling: dict) -> None:
        """Start the next terminals: those listening all, a tick's worth at a time; those dialling
        as dials of this worker end their handshakes (``dialling``: station -> when it was dialled)."""
        room = self.connects_per_tick
        now = self.reactor.seconds()
        if not self.spec.listen:
            for station, dialled_at in list(dialling.items()):
                if not self._shaking_hands(station, now - dialled_at):
                    del dialling[station]
            room = min(room, max(1, self.dials_in_flight // self.spec.worker_count()) - len(dialling))
        batch = list(itertools.islice(pending, max(0, room)))
        if not batch and not dialling:
            self._connecting.stop()  # every terminal has been started
        for station in batch:
            if self.spec.listen:
                station.link_factory.listen(self.spec.listen + station.terminal_id - self.spec.first_id, "127.0.0.1")
            else:
                station.link_factory.start()
                dialling[station] = now

    def _shaking_hands(self, station, dialled_s: float) -> bool:
        """Whether a dialled station still holds a place: its first dial neither ended online nor
        failed or was refused (``trouble`` says why it ended), and is younger than ``dial_place_s``.
        One refused for good (pending admission, a wrong secret) must not keep the others from
        dialling: it redials on its own backoff, outside the count."""
        return not station.online and station.link_factory.trouble is None and dialled_s < self.dial_place_s

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
            offline=self._offline() if self.state == "connecting" else {},
            produced=sum(s.produced for s in self.stations),
            unacknowledged=sum(s.unacknowledged for s in self.stations),
            enrolled=len(self.tally.enrolled),
            deliveries=self.tally.deliveries,
            last_delivery_ms=self.tally.last_delivery_ms,
        )))

    def _offline(self, most: int = 5) -> dict:
        """A few terminals that are not online yet, each with why (what its last dial came to)."""
        late = [s for s in self.stations if s.kind == "native" and not s.online][:most]
        return {s.terminal_id: getattr(s.link_factory, "trouble", None) or "not dialled yet or still shaking hands" for s in late}

    def sample(self) -> dict:
        """The ZK devices' traffic so far, for the parent's idle measurement: bytes both ways,
        requests, and the requests that wrote something; and this worker's CPU seconds so far,
        so the parent can measure the fleet over the gateway's own windows."""
        devices = [s for s in self.stations if s.kind == "zk"]
        return dict(
            cpu_s=time.process_time(),
            zk_devices=len(devices),
            zk_bytes=sum(s.bytes_exchanged for s in devices),
            zk_requests=sum(sum(s.device.requests.values()) for s in devices),
            zk_writes=sum(s.device.requests[c] for s in devices for c in ZK_WRITES),
            deliveries=self.tally.deliveries,
        )

    def go(self, start_ms: float) -> None:
        self.reactor.callLater(max(0.0, (start_ms - wall_ms()) / 1000), self._begin, start_ms)

    def _begin(self, start_ms: float) -> None:
        self.state = "running"
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
            station.go_offline()
        t = self.tally
        self.write_line(dict(result=dict(
            terminals=len(self.stations),
            steady=len([s for s in self.stations if s.terminal_id in t.steady]),
            produced=sum(s.produced for s in self.stations),
            enrolled=t.enrolled,
            reach=t.reach,
            deliveries=t.deliveries,
            last_delivery_ms=t.last_delivery_ms,
            garbage_sent=sum(getattr(s.link_factory.link, "garbage_sent", 0) for s in self.stations if s.kind == "native"),
            dropped=dropped,
        )))

    def _drop_one(self):
        """The fleet's first terminal forgets one user it received, telling nobody."""
        for station in self.stations:
            if station.terminal_id == self.spec.first_id:
                forgotten = station.forget_one()
                return None if forgotten is None else [station.terminal_id, forgotten]
        return None


def worker_main() -> int:
    """Entry of a worker process: the spec comes as the first line on stdin."""
    task.react(_work)


def _work(reactor):
    from twisted.internet import defer, stdio
    from twisted.logger import LogLevel
    from twisted.protocols.basic import LineReceiver

    from simulator.logs import start_logging

    start_logging(sys.stderr, LogLevel.warn)
    raise_fd_limit()
    finished = defer.Deferred()

    class Pipe(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 20

        def connectionMade(self):
            self.worker = FleetWorker(reactor, lambda message: self.sendLine(json.dumps(message).encode()))

        def lineReceived(self, line):
            message = json.loads(line)
            if "spec" in message:
                self.worker.start(FleetSpec(**message["spec"]), message["terminal_ids"])
            elif "gateway" in message:
                self.worker.connect(message["gateway"])
            elif "sample" in message:
                self.sendLine(json.dumps(dict(sample=self.worker.sample())).encode())
            elif "go" in message:
                self.worker.go(message["go"])
            elif "stop" in message:
                self.worker.stop()
                self.transport.loseConnection()

        def connectionLost(self, reason):
            finished.callback(None)  # the parent closed the pipe, or said stop: the worker's work is done

    stdio.StandardIO(Pipe(), reactor=reactor)
    return finished


if __name__ == "__main__":
    sys.exit(worker_main())
