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
from protocol.address import AddressError, parse_host_port
from simulator.logs import start_logging
from simulator.people import People
from simulator.tcp import DialingTerminal, ListeningTerminal
from simulator.tls import TlsFileError, dialling_options, listening_options
from simulator.push import client as push_terminal
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
    tls = p.add_argument_group("TLS (docs/tls.md)")
    tls.add_argument("--tls-ca", metavar="FILE", help="dialling: the CA the gateway's certificate must be signed by (turns TLS on); "
                     "listening: the CA the gateway's client certificate must be signed by")
    tls.add_argument("--tls-cert", metavar="FILE", help="this terminal's certificate (PEM): needed to listen over TLS; "
                     "shown to the gateway when dialling")
    tls.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    tls.add_argument("--tls-name", metavar="NAME", help="the name the gateway's certificate must carry (default: the host of --gateway)")
    console.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simulator", description="Simulated access-control terminals speaking the gateway protocol.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_terminal_parser(sub)
    fleet.add_parser(sub)
    bus.add_parser(sub)
    zk_terminal.add_parser(sub)
    push_terminal.add_parser(sub)
    return parser


def run_terminal(args) -> int:
    if args.gateway:
        try:
            parse_host_port(args.gateway)
        except AddressError as exc:
            print(f"simulator: --gateway: {exc}", file=sys.stderr)
            return 2
    try:
        tls = _tls_options(args)
    except (ValueError, TlsFileError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    task.react(_serve_terminal, [args, tls])


def _tls_options(args):
    """TLS options from the --tls-* arguments, or None for plain TCP; ValueError says what is missing."""
    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_name):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.gateway:
        if not args.tls_ca:
            raise ValueError("dialling over TLS needs --tls-ca (the CA that signed the gateway's certificate)")
        return dialling_options(args.tls_name or parse_host_port(args.gateway)[0], args.tls_ca, args.tls_cert, args.tls_key)
    if not args.tls_cert:
        raise ValueError("listening over TLS needs --tls-cert and --tls-key")
    if args.tls_name:
        raise ValueError("--tls-name is for dialling (--gateway)")
    return listening_options(args.tls_cert, args.tls_key, args.tls_ca)


def _serve_terminal(reactor, args, tls) -> defer.Deferred:
    start_logging()
    terminal = console.start(args, reactor)
    if args.gateway:
        host, port = parse_host_port(args.gateway)
        DialingTerminal(terminal, reactor, host, port, tls=tls).start()
    else:
        try:
            listener = ListeningTerminal(terminal, reactor).listen(args.listen, tls=tls)
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


COMMANDS = {"terminal": run_terminal, "fleet": fleet.run, "bus": bus.run, "zk-terminal": zk_terminal.run, "push-terminal": push_terminal.run}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
