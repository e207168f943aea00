"""The ``simulator`` command: simulated terminals for trying and testing a gateway without hardware."""

import argparse
import sys

from twisted.internet import reactor, task

from gateway.config import ConfigError, parse_host_port
from gateway.run import start_logging
from simulator import bus, console, fleet
from simulator.people import People
from simulator.tcp import DialingTerminal, ListeningTerminal


def _add_terminal_parser(sub) -> None:
    p = sub.add_parser("terminal", help="one simulated terminal, dialling in to a gateway or listening for one")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--gateway", metavar="HOST:PORT", help="dial in to the gateway here")
    where.add_argument("--listen", type=int, metavar="PORT", help="listen on this port for a gateway dialling out")
    p.add_argument("--id", type=int, required=True, help="terminal id, as configured on the gateway")
    p.add_argument("--secret", required=True, help="the terminal's secret, as configured on the gateway")
    p.add_argument("--enroll", type=int, default=0, metavar="N", help="enrol N people, one per --interval (default 0)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SEC", help="seconds between enrolments (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated people (default 0)")
    console.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simulator", description="Simulated access-control terminals speaking the gateway protocol.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_terminal_parser(sub)
    fleet.add_parser(sub)
    bus.add_parser(sub)
    return parser


def run_terminal(args) -> int:
    terminal = console.start(args, reactor)
    if args.gateway:
        host, port = parse_host_port(args.gateway)
        DialingTerminal(terminal, reactor, host, port).start()
    else:
        ListeningTerminal(terminal, reactor).listen(args.listen)
    if args.enroll:
        people = People(args.seed)
        user_ids = iter(f"{args.id}-{n:05d}" for n in range(args.enroll))
        enrolling = task.LoopingCall(lambda: terminal.enroll(people.person(next(user_ids))))
        enrolling.start(args.interval, now=False).addErrback(lambda f: f.trap(StopIteration))
    start_logging()
    reactor.run()
    return 0


COMMANDS = {"terminal": run_terminal, "fleet": fleet.run, "bus": bus.run}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
