"""``gateway demo``: a gateway on SQLite with simulated terminals on TCP and on an emulated RS-485
bus, showing sync as it happens.

People are enrolled and edited at random terminals; the demo prints each change made at a
terminal and each terminal that received it, beside the gateway's own log. It is the only place
the gateway imports the simulator, and only when the demo runs.
"""

import random
import sys
import time
from pathlib import Path

from twisted.internet import reactor, task

from gateway.config import GatewayConfig
from gateway.run import start_logging
from gateway.service import Gateway
from simulator.bus import BusSimulation
from simulator.people import People
from simulator.tcp import DialingTerminal
from simulator.terminal import Terminal

FIRST_ID = 101
FIRST_BUS_ID = 201
BUS_BAUD = 38400
SECRET_PREFIX = "demo-secret-"


class Demo:
    def __init__(self, config: GatewayConfig, bus: BusSimulation, interval_s: float, seed: int):
        self.gateway = Gateway(config, reactor)
        self.tcp_terminals = {t["id"]: Terminal(t["id"], t["secret"]) for t in config.terminals if t["id"] not in bus.drops}
        self.terminals = {**self.tcp_terminals, **{tid: bus.terminal(tid) for tid in bus.drops}}
        self.people = People(seed)
        self.rng = random.Random(seed)
        self.interval_s = interval_s
        self.changed_at: dict[str, float] = {}
        self._enrolled = 0

    def start(self) -> None:
        self.gateway.start()
        port = self.gateway.tcp_port.getHost().port
        for terminal in self.terminals.values():
            terminal.applied_listeners.append(self._applied(terminal.terminal_id))
        for terminal in self.tcp_terminals.values():
            DialingTerminal(terminal, reactor, "127.0.0.1", port).start()
        task.LoopingCall(self.change_something).start(self.interval_s, now=False)

    def change_something(self) -> None:
        """What an operator might do at a random terminal: enrol someone new, or edit someone."""
        terminal = self.rng.choice(list(self.terminals.values()))
        if terminal.users and self.rng.random() < 0.4:
            user_id = self.rng.choice(sorted(terminal.users))
            changes = self.people.edit(terminal.users[user_id])
            terminal.edit(user_id, **changes)
            _say(f"terminal {terminal.terminal_id}: operator edits user {user_id} ({', '.join(changes)})")
        else:
            self._enrolled += 1
            user_id = f"{self._enrolled:04d}"
            record = self.people.person(user_id)
            terminal.enroll(record)
            _say(f"terminal {terminal.terminal_id}: operator enrols user {user_id}, {record.name}, "
                 f"{len(record.fingerprints)} finger(s), {len(record.cards)} card(s)")
        self.changed_at[user_id] = time.monotonic()

    def _applied(self, terminal_id: int):
        def applied(user_id: str, record) -> None:
            since = self.changed_at.get(user_id)
            delay = f" {1000 * (time.monotonic() - since):.0f} ms after the change" if since else ""
            _say(f"terminal {terminal_id}: received user {user_id} from the server{delay}")

        return applied


def _say(text: str) -> None:
    print(f">>> {text}", flush=True)


def demo_config(db: str | None, terminals: int, bus: BusSimulation, tcp_port: int | None, http_port: int | None) -> GatewayConfig:
    """TCP terminals 101, 102, ... and the bus's terminals 201, 202, ... with their secrets;
    without ``db``, a fresh SQLite file in ./demo/."""
    folder = Path("demo")
    folder.mkdir(exist_ok=True)
    if db is None:
        for old in folder.glob("gateway.db*"):
            old.unlink()
    entries = [dict(id=FIRST_ID + n, secret=f"{SECRET_PREFIX}{FIRST_ID + n}", name=f"Demo door {n + 1}") for n in range(terminals)]
    entries += [dict(id=tid, secret=f"{SECRET_PREFIX}{tid}", name=f"Demo bus reader {drop.terminal.address}")
                for tid, drop in bus.drops.items()]
    return GatewayConfig.load(
        None,
        db=db or f"sqlite:///{folder / 'gateway.db'}",
        tcp_host="127.0.0.1",
        tcp_port=tcp_port,
        http_port=http_port,
        api_token="demo-token",
        terminals=entries,
        serial=[dict(device=bus.path, baud=BUS_BAUD, ids=list(bus.drops))],
    )


def main(args) -> int:
    bus = BusSimulation(reactor, BUS_BAUD, range(FIRST_BUS_ID, FIRST_BUS_ID + args.bus_terminals), secret_prefix=SECRET_PREFIX)
    config = demo_config(args.db, args.terminals, bus, args.tcp_port, args.http_port)
    demo = Demo(config, bus, interval_s=args.interval, seed=0)
    start_logging()
    try:
        demo.start()
    except Exception as exc:  # a port in use or an unreadable database is the user's to fix
        print(f"gateway demo: cannot start: {exc}", file=sys.stderr)
        return 1
    _say(f"gateway on {config.db}: {len(demo.tcp_terminals)} simulated terminals on TCP, {len(bus.drops)} on an "
         f"RS-485 bus at {BUS_BAUD} baud ({bus.path}); a change every {demo.interval_s:g} s")
    url = f"http://{config.http_host}:{demo.gateway.http_port.getHost().port}"
    _say(f"monitoring page: {url}/   (API token for writes: {config.api_token})")
    _say(f"in another shell: .venv/bin/gateway users list --url {url}   |   Ctrl-C stops the demo")
    if args.duration:
        reactor.callLater(args.duration, reactor.stop)
    reactor.addSystemEventTrigger("before", "shutdown", demo.gateway.stop)
    reactor.run()
    return 0
