"""PushStation: many emulated PUSH devices calling one server, from one process and one reactor.

Each is a ``PushTerminal`` driven by its own ``PushCaller`` (simulator/push/client.py), as
``simulator push-terminal`` runs one; their first calls are spread over ``spread_s`` as devices
switched on at different times are. The station enrols people at its devices and times each
enrolment until every other device holds the person (they learn of it at their next getrequest:
the bound is the server's ``Delay`` plus the time a call takes). ``simulator fleet --kind push``,
``gateway-loadtest --kind push`` (tools/loadtest/push_load.py) and benchmarks/push_propagation.py
run it.
"""

import argparse
import random
import sys
import time
from dataclasses import dataclass, field

from twisted.internet import defer, task

from protocol.figures import percentiles
from simulator.logs import start_logging
from simulator.push.client import PushCaller
from simulator.push.device import PushTerminal


@dataclass
class Enrolment:
    pin: str
    at: int  # the device it was enrolled at
    began_s: float
    waiting: set[int]  # devices that do not hold it yet
    delivered_s: list[float] = field(default_factory=list)  # after began_s, one per device that holds it


class PushStation:
    check_s = 0.05  # how often the devices' stores are looked at for what arrived

    def __init__(self, reactor, server_url: str, devices: int, prefix: str = "STATION", spread_s: float = 0.0,
                 push_versions: tuple[int, ...] = (2,)):
        self.reactor = reactor
        # device n speaks push_versions[n % len]: (2, 3) is a site of attendance and access devices
        self.devices = [PushTerminal(f"{prefix}{n:06d}", version=push_versions[n % len(push_versions)]) for n in range(devices)]
        self.callers = [PushCaller(d, server_url, reactor) for d in self.devices]
        self.spread_s = spread_s
        self.enrolments: list[Enrolment] = []
        self.punches = 0
        self._open: list[Enrolment] = []
        self._starts: list = []
        self._checking = task.LoopingCall(self._check)
        self._checking.clock = reactor

    def start(self) -> None:
        count = len(self.callers)
        for n, caller in enumerate(self.callers):
            self._starts.append(self.reactor.callLater(self.spread_s * n / count, caller.start))
        self._checking.start(self.check_s, now=False)

    def stop(self) -> None:
        for call in self._starts:
            if call.active():
                call.cancel()
        for caller in self.callers:
            caller.stop()
        if self._checking.running:
            self._checking.stop()

    def talking(self) -> int:
        """Devices initialized, listed by the server and asked again: part of the site (a 3.x device's
        hello is three calls: hello, registration, configuration)."""
        return sum(1 for c in self.callers if c.answers >= (5 if c.device.version == 3 else 3))

    @property
    def delay_s(self) -> float:
        """The ``Delay`` the server gave (the first device's: one server gives all the same)."""
        return self.devices[0].delay_s

    def enrol(self, at: int, pin: str, name: str) -> Enrolment:
        """A person enrolled at device ``at``'s keypad, which calls in at once (Realtime)."""
        self.devices[at].enroll(pin, name=name)
        self.callers[at].wake()
        enrolment = Enrolment(pin, at, time.monotonic(), {n for n in range(len(self.devices)) if n != at})
        self.enrolments.append(enrolment)
        self._open.append(enrolment)
        return enrolment

    def punch(self, at: int, pin: str) -> None:
        self.devices[at].verify(pin)
        self.callers[at].wake()
        self.punches += 1

    def settled(self) -> bool:
        return not self._open

    def deliveries_s(self) -> list[float]:
        return [s for e in self.enrolments for s in e.delivered_s]

    def never_arrived(self) -> int:
        return sum(len(e.waiting) for e in self.enrolments)

    def uploads_waiting(self) -> int:
        """Punches and operation lines not acknowledged by the server yet."""
        return sum(sum(1 for s, _ in d.punches if s > d.sent_stamp) + len(d.oplog) for d in self.devices)

    def _check(self) -> None:
        now = time.monotonic()
        for enrolment in list(self._open):
            for n in [n for n in enrolment.waiting if enrolment.pin in self.devices[n].users]:
                enrolment.waiting.discard(n)
                enrolment.delivered_s.append(now - enrolment.began_s)
            if not enrolment.waiting:
                self._open.remove(enrolment)


def pause(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(reactor, predicate, limit_s: float, step_s: float = 0.25):
    """Wait until ``predicate()`` or ``limit_s`` passed; fires with the predicate's last answer."""
    deadline = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < deadline:
        yield pause(reactor, step_s)
    return predicate()


@defer.inlineCallbacks
def enrol_at_rate(reactor, station: PushStation, rate: float, duration_s: float, seed: int = 0, prefix: str = "8"):
    """Enrol ``rate`` people a second, each at a device chosen at random, for ``duration_s``."""
    chooser = random.Random(seed)
    began, n = time.monotonic(), 0
    while n < rate * duration_s:
        due = began + n / rate
        if due > time.monotonic():
            yield pause(reactor, due - time.monotonic())
        station.enrol(chooser.randrange(len(station.devices)), f"{prefix}{n:06d}", f"Person {n}")
        n += 1


# -- simulator fleet --kind push ------------------------------------------------------------------------


def run_fleet(args: argparse.Namespace) -> int:
    """``simulator fleet --kind push --push URL``: the station against a running gateway."""
    if not (args.push or "").startswith(("http://", "https://")):
        print("simulator fleet: --kind push needs --push URL (the gateway's [push] address, http://HOST:PORT)", file=sys.stderr)
        return 2
    if args.gateway or args.listen or args.dump:
        print("simulator fleet: --kind push takes --push URL, not --gateway, --listen or --dump", file=sys.stderr)
        return 2
    outcome: dict = {}
    task.react(_fleet, [args, outcome])
    return 0 if outcome.get("ok") else 1


@defer.inlineCallbacks
def _fleet(reactor, args, outcome: dict):
    start_logging()
    station = PushStation(reactor, args.push, args.devices, prefix=f"FLEET{args.seed:02d}", spread_s=args.spread_s)
    station.start()
    try:
        talking = yield until(reactor, lambda: station.talking() == len(station.devices), 60 + args.spread_s + len(station.devices) * 0.05)
        print(f"{station.talking()} of {len(station.devices)} PUSH devices talking to {args.push}", flush=True)
        if not talking:
            return
        rate = args.rate or 1.0
        yield enrol_at_rate(reactor, station, rate, args.duration, args.seed)
        yield until(reactor, station.settled, 3 * station.delay_s + 30)
    finally:
        station.stop()
    figures = percentiles(s * 1000 for s in station.deliveries_s())
    print(f"{len(station.enrolments)} enrolments at {rate:g}/s, {len(station.deliveries_s())} deliveries, "
          f"never arrived: {station.never_arrived()}", flush=True)
    if figures:
        print(f"propagation to every other device: p50 {figures['p50']:.0f} ms, p99 {figures['p99']:.0f} ms, max {figures['max']:.0f} ms "
              f"(Delay {station.delay_s:g} s)", flush=True)
    outcome["ok"] = station.never_arrived() == 0
