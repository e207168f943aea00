"""``gateway-demo`` (``make demo``): a gateway on SQLite with simulated terminals on TCP and on an
emulated RS-485 bus, telling the story of sync as it happens.

People are enrolled and edited at random terminals; standard output carries only the story:
each change made at a terminal, what the server's merge made of it (taken, refused and why), and
each terminal that received it. The gateway's own log goes
to a file whose path the demo prints first. It lives in tools/ because it uses both the gateway
and the simulator, which never import each other.
"""

import argparse
import random
import sys
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.logger import LogLevel

from gateway.config import ConfigError, GatewayConfig
from gateway.http.queries import EventFilter, last_event_id, read_events
from gateway.sync.monitor import CHANGE_DROPPED, MERGED_UNCHANGED, SAVED_FROM_DEVICE
from gateway.logs import start_logging
from gateway.process.run import StartFailed, start_gateway
from simulator.bus import BusSimulation
from simulator.people import People
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal

FIRST_ID = 101
FIRST_BUS_ID = 201
BUS_BAUD = 38400
SECRET_PREFIX = "demo-secret-"
API_TOKEN = "demo-token"
FOLDER = Path("demo")


# The merge's monitoring events, and how the story tells each.
MERGE_VERDICTS = {
    SAVED_FROM_DEVICE: "merged into a new version",
    MERGED_UNCHANGED: "merged, the server's record unchanged",
    CHANGE_DROPPED: "change dropped",
}
MERGE_OUTCOMES = EventFilter(types=tuple(MERGE_VERDICTS))


class Demo:
    outcome_poll_s = 0.5

    def __init__(self, reactor, gateway, bus: BusSimulation, interval_s: float, seed: int):
        self.reactor = reactor
        self.gateway = gateway
        config = gateway.config
        self.tcp_terminals = {t["id"]: Terminal(t["id"], t["secret"]) for t in config.terminals if t["id"] not in bus.drops}
        self.terminals = {**self.tcp_terminals, **{tid: bus.terminal(tid) for tid in bus.drops}}
        self.people = People(seed)
        self.rng = random.Random(seed)
        self.interval_s = interval_s
        self.changed_at: dict[str, float] = {}
        self._enrolled = 0
        self._seen_event: int | None = None  # the last event told (None: those before the demo began are not)

    def start(self) -> None:
        port = self.gateway.tcp_port.getHost().port
        for terminal in self.terminals.values():
            terminal.applied_listeners.append(self._applied(terminal.terminal_id))
        for terminal in self.tcp_terminals.values():
            DialingTerminal(terminal, self.reactor, "127.0.0.1", port).start()
        changes = task.LoopingCall(self.change_something)
        changes.clock = self.reactor
        changes.start(self.interval_s, now=False)
        self._outcomes = task.LoopingCall(self.tell_outcomes)
        self._outcomes.clock = self.reactor
        self._outcomes.start(self.outcome_poll_s, now=True)

    @defer.inlineCallbacks
    def tell_outcomes(self):
        """What the server made of each keypad change: the merge's monitoring events, as stored."""
        if self._seen_event is None:
            self._seen_event = yield self.gateway.db.read(last_event_id)
        found, _ = yield self.gateway.db.read(read_events, MERGE_OUTCOMES, self._seen_event, None, 100)
        for event in found:
            self._seen_event = event["id"]
            verdict = MERGE_VERDICTS[event["type"]]
            say(f"server: user {event['user_id']} from terminal {event['terminal_id']} {verdict}"
                + (f": {event['detail']}" if event["detail"] else ""))

    def change_something(self) -> None:
        """What an operator might do at a random terminal: enrol someone new, or edit someone."""
        terminal = self.rng.choice(list(self.terminals.values()))
        if terminal.users and self.rng.random() < 0.4:
            user_id = self.rng.choice(sorted(terminal.users))
            changes = self.people.edit(terminal.users[user_id])
            terminal.edit(user_id, **changes)
            say(f"terminal {terminal.terminal_id}: operator edits user {user_id} at the keypad ({', '.join(changes)}); "
                f"the server decides what it takes")
        else:
            self._enrolled += 1
            user_id = f"{self._enrolled:04d}"
            record = self.people.person(user_id)
            terminal.enroll(record)
            say(f"terminal {terminal.terminal_id}: operator enrols user {user_id}, {record.name}, "
                f"{len(record.fingerprints)} finger(s), {len(record.cards)} card(s)")
        self.changed_at[user_id] = time.monotonic()

    def _applied(self, terminal_id: int):
        def applied(user_id: str, record) -> None:
            since = self.changed_at.get(user_id)
            delay = f" {1000 * (time.monotonic() - since):.0f} ms after the change" if since else ""
            say(f"terminal {terminal_id}: received user {user_id} from the server{delay}")

        return applied


def say(text: str) -> None:
    print(f">>> {text}", flush=True)


def demo_config(db: str | None, terminals: int, bus: BusSimulation, tcp_port: int | None, http_port: int | None) -> GatewayConfig:
    """TCP terminals 101, 102, ... and the bus's terminals 201, 202, ... with their secrets;
    without ``db``, a fresh SQLite file in ./demo/."""
    if db is None:
        for old in FOLDER.glob("gateway.db*"):
            old.unlink()
    entries = [dict(id=FIRST_ID + n, secret=f"{SECRET_PREFIX}{FIRST_ID + n}", name=f"Demo door {n + 1}") for n in range(terminals)]
    entries += [dict(id=tid, secret=f"{SECRET_PREFIX}{tid}", name=f"Demo bus reader {drop.terminal.address}")
                for tid, drop in bus.drops.items()]
    return GatewayConfig.load(
        None,
        db=db or f"sqlite:///{FOLDER / 'gateway.db'}",
        tcp_host="127.0.0.1",
        tcp_port=tcp_port,
        http_port=http_port,
        api_token=API_TOKEN,
        terminals=entries,
        serial=[dict(device=bus.path, baud=BUS_BAUD, ids=list(bus.drops))],
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-demo", description="A gateway with simulated terminals on TCP and RS-485, "
                                "narrating each change made at a terminal and each terminal that received it.")
    p.add_argument("--db", metavar="URL", help="database URL (default: a fresh SQLite file in ./demo/)")
    p.add_argument("--terminals", type=int, default=4, metavar="N", help="simulated terminals on TCP (default 4)")
    p.add_argument("--bus-terminals", type=int, default=2, metavar="N", help="simulated terminals on an emulated RS-485 bus (default 2)")
    p.add_argument("--tcp-port", type=int, default=4370, help="port the simulated terminals dial in to (default 4370)")
    p.add_argument("--http-port", type=int, default=8080, help="port of the monitoring page and API (default 8080)")
    p.add_argument("--interval", type=float, default=2.0, metavar="SEC", help="seconds between changes at terminals (default 2)")
    p.add_argument("--duration", type=float, default=0, metavar="SEC", help="stop after this long (default: run until Ctrl-C)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs until Ctrl-C (or ``--duration``); exits 1 at once with one line if it cannot start."""
    args = build_parser().parse_args(argv)
    task.react(_run, [args])


async def _run(reactor, args) -> None:
    FOLDER.mkdir(exist_ok=True)
    log_path = FOLDER / "gateway.log"
    bus = BusSimulation(reactor, BUS_BAUD, range(FIRST_BUS_ID, FIRST_BUS_ID + args.bus_terminals), secret_prefix=SECRET_PREFIX)
    reactor.addSystemEventTrigger("before", "shutdown", bus.stop)
    try:
        config = demo_config(args.db, args.terminals, bus, args.tcp_port, args.http_port)
    except ConfigError as exc:
        print(f"gateway-demo: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log_file = log_path.open("w", encoding="utf-8")  # a fresh story, like the fresh database
    reactor.addSystemEventTrigger("after", "shutdown", log_file.close)
    start_logging(log_file, LogLevel.info)
    say(f"the gateway's log goes to {log_path.resolve()}")
    try:
        gateway = await start_gateway(reactor, config)
    except StartFailed as exc:
        print(f"gateway-demo: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    demo = Demo(reactor, gateway, bus, interval_s=args.interval, seed=0)
    demo.start()
    say(f"gateway on {config.db}: {len(demo.tcp_terminals)} simulated terminals on TCP, {len(bus.drops)} on an "
        f"RS-485 bus at {BUS_BAUD} baud ({bus.path}); a change every {demo.interval_s:g} s")
    url = f"http://{config.http_host}:{gateway.http_port.getHost().port}"
    say(f"monitoring page: {url}/   (API token for writes: {config.api_token})")
    say(f"in another shell: .venv/bin/gateway users list --url {url}   |   Ctrl-C stops the demo")
    if args.duration:
        await task.deferLater(reactor, args.duration, lambda: None)
    else:
        await defer.Deferred()  # until Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
