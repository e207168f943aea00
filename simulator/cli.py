"""The ``simulator`` command: simulated terminals for trying and testing a gateway without hardware.

Every subcommand that runs a reactor runs it through ``twisted.internet.task.react``, so a
failure to start (a port in use, a device that cannot be opened) ends the process at once with
exit status 1 and one line saying why.
"""

import argparse
import sys

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from simulator import bus, console, fleet
from simulator.address import AddressError, parse_host_port
from simulator.logs import start_logging
from simulator.people import People
from simulator.tcp import DialingTerminal, ListeningTerminal
from simulator.zk import tcp as zk_terminal

log = Logger()


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
    zk_terminal.add_parser(sub)
    return parser


def run_terminal(args) -> int:
    if args.gateway:
        try:
            parse_host_port(args.gateway)
        except AddressError as exc:
            print(f"simulator: --gateway: {exc}", file=sys.stderr)
            return 2
    task.react(_serve_terminal, [args])


def _serve_terminal(reactor, args) -> defer.Deferred:
    start_logging()
    terminal = console.start(args, reactor)
    if args.gateway:
        host, port = parse_host_port(args.gateway)
        DialingTerminal(terminal, reactor, host, port).start()
    else:
        try:
            listener = ListeningTerminal(terminal, reactor).listen(args.listen)
        except CannotListenError as exc:
            print(f"simulator: cannot listen on port {args.listen}: {exc.socketError}", file=sys.stderr)
            raise SystemExit(1) from None
        log.info("terminal {id} listening for a gateway on port {port}", id=args.id, port=listener.port_number)
    if args.enroll:
        people = People(args.seed)
        user_ids = iter(f"{args.id}-{n:05d}" for n in range(args.enroll))
        enrolling = task.LoopingCall(lambda: terminal.enroll(people.person(next(user_ids))))
        enrolling.clock = reactor
        enrolling.start(args.interval, now=False).addErrback(lambda f: f.trap(StopIteration))
    return defer.Deferred()  # runs until stopped (Ctrl-C, SIGTERM)


COMMANDS = {"terminal": run_terminal, "fleet": fleet.run, "bus": bus.run, "zk-terminal": zk_terminal.run}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
