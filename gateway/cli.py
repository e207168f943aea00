"""The ``gateway`` command: run the service, and administer a running gateway through
its HTTP API (terminals, users, events, sync mode).

The client options (``--url``, ``--token``, ``--json``) may come before the command or after it.
"""

import argparse
import os
import sys
from datetime import datetime
from functools import partial

from gateway import admin
from gateway.admission import AdmissionPolicy
from gateway.api_token import TOKEN_ENV, TOKEN_FILE, keep_token
from gateway.sync.syncmode import SyncMode
from gateway.process.workers import WorkerRole

SYNC_MODES = [mode.value for mode in SyncMode]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see docs/gateway.example.toml)")
    p.add_argument("--db", metavar="URL", help="database URL (default: sqlite:///gateway.db in the working folder)")


def _client_options(p: argparse.ArgumentParser, defaults: bool) -> argparse.ArgumentParser:
    """On the main parser with their defaults; on each command without, so that an option given
    before the command is not overwritten by the command's default."""
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    p.add_argument("--url", default=default(admin.DEFAULT_URL), help=f"the gateway's HTTP address (default {admin.DEFAULT_URL})")
    p.add_argument("--token", default=default(None),
                   help=f"API token for changes (default: ${TOKEN_ENV}, else ./{TOKEN_FILE} for a gateway on this machine)")
    p.add_argument("--json", action="store_true", default=default(False),
                   help="print JSON instead of a table: one document (events: one object a line, as they stream)")
    p.add_argument("--jsonl", action="store_true", default=default(False),
                   help="print JSON Lines: one object a line (each terminal, user, event, history entry)")
    return p


def _user_fields(p: argparse.ArgumentParser, edit: bool) -> None:
    replacing = " Replaces all the user's {0}: --add-{1} and --remove-{1} keep the others." if edit else ""
    p.add_argument("user_id")
    p.add_argument("--name")
    p.add_argument("--pin", help="digits; the gateway stores only a hash")
    p.add_argument("--group", type=int, action="append", dest="groups", metavar="N",
                   help="access group (repeatable)." + replacing.format("groups", "group"))
    p.add_argument("--card", action="append", metavar="TYPE:HEX",
                   help="card, e.g. SMART_CARD:0a1b2c (repeatable)." + replacing.format("cards", "card"))
    p.add_argument("--valid-from", type=valid_from, metavar="WHEN",
                   help="valid from this date or time: 2025-03-01, 2025-03-01T08:00 (local time unless it names an offset), "
                        "or seconds since the epoch")
    p.add_argument("--valid-until", type=valid_until, metavar="WHEN",
                   help="valid until this date (its end) or time" + ("; with only one of the two, the other stays" if edit else ""))
    p.add_argument("--security-level", type=byte, metavar="N", help="0-255, as the terminals define it")
    p.add_argument("--auth-mode", type=byte, metavar="N", help="0-255, as the terminals define it")
    p.add_argument("--disabled", action=argparse.BooleanOptionalAction, default=None)
    if not edit:
        return
    p.add_argument("--add-card", action="append", default=[], metavar="TYPE:HEX", help="add a card, keeping the others (repeatable)")
    p.add_argument("--remove-card", action="append", default=[], metavar="TYPE:HEX", help="remove one of the user's cards (repeatable)")
    p.add_argument("--add-group", type=int, action="append", default=[], metavar="N", help="add an access group, keeping the others (repeatable)")
    p.add_argument("--remove-group", type=int, action="append", default=[], metavar="N", help="remove one of the user's access groups (repeatable)")
    p.add_argument("--clear", action="append", default=[], choices=list(admin.CLEARABLE), metavar="FIELD",
                   help=f"empty a field: {', '.join(admin.CLEARABLE)} (repeatable)")


def valid_from(text: str) -> int:
    return _moment(text, end_of_day=False)


def valid_until(text: str) -> int:
    return _moment(text, end_of_day=True)


def _moment(text: str, end_of_day: bool) -> int:
    """Seconds since the epoch, as the terminals keep validity: digits are that already; an ISO
    8601 date or time is local time unless it names its offset; a date alone is the start of
    that day, or for --valid-until its last second."""
    try:
        if text.isdigit():
            seconds = int(text)
        else:
            moment = datetime.fromisoformat(text)
            if end_of_day and len(text) == len("2025-03-01"):
                moment = moment.replace(hour=23, minute=59, second=59)
            seconds = int(moment.timestamp())
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(f"expected a date (2025-03-01), a time (2025-03-01T08:00) or seconds, got {text!r}") from None
    if not admin.OPEN_START <= seconds <= admin.OPEN_END:
        raise argparse.ArgumentTypeError(f"{text!r} is outside what terminals keep (1970 to 2106)")
    return seconds


def byte(text: str) -> int:
    """A terminal-defined number of one byte: a security level, an auth mode."""
    if not (text.isdigit() and int(text) <= 255):
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 255, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Terminal gateway: keeps access-control terminals and the server user database in sync.")
    _client_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client = _client_options(argparse.ArgumentParser(add_help=False), defaults=False)

    run = sub.add_parser("run", help="run the gateway")
    _add_common(run)
    run.add_argument("--tcp-host", metavar="ADDRESS",
                     help="address terminals dial in to (default 0.0.0.0: every address, as terminals are on the network)")
    run.add_argument("--tcp-port", type=int, help="port terminals dial in to (default 4370)")
    run.add_argument("--http-port", type=int, help="port of the HTTP API and monitoring page (default 8080)")
    run.add_argument("--api-in-process", action="store_true", help="serve HTTP on the gateway's own reactor, not from an API process")
    run.add_argument("--serial", action="append", metavar="DEVICE[:BAUD]", help="an RS-485 bus to master (repeatable)")
    run.add_argument("--zk", metavar="HOST[:PORT]", help="a ZKTeco device to keep in sync (port 4370 unless given)")
    run.add_argument("--zk-id", type=int, metavar="N", help="its terminal id (default: derived from HOST:PORT)")
    run.add_argument("--zk-comm-key", type=int, default=0, metavar="K", help="its comm key (default 0: none)")
    run.add_argument("--admission", choices=[policy.value for policy in AdmissionPolicy], help="who may connect (default allowlist)")
    run.add_argument("--default-secret", help="secret of terminals admitted by 'open' admission")
    run.add_argument("--api-token", help=f"bearer token for API writes (default: ${TOKEN_ENV}, the file's api_token, "
                     f"else one made at first start and kept in {TOKEN_FILE} beside the database)")
    run.add_argument("--sync-mode", choices=SYNC_MODES, help="sync mode from this start on, replacing the stored one")
    run.add_argument("--workers", type=int, metavar="N",
                     help="gateway processes sharing the terminal port (default 1; above 1 needs PostgreSQL)")
    run.add_argument("--worker", type=WorkerRole.parse, help=argparse.SUPPRESS)  # I/N: set by --workers for each process it starts

    sub.add_parser("demo", help="moved: the demo is its own command, gateway-demo (make demo)", add_help=False)

    terminals = sub.add_parser("terminals", parents=[client], help="list terminals, or admit, refuse or remove one")
    terminals.add_argument("action", nargs="?", choices=["admit", "refuse", "remove"])
    terminals.add_argument("terminal_id", nargs="?", type=int, metavar="ID")
    terminals.add_argument("--secret", help="the terminal's secret, when admitting one that has none")
    terminals.add_argument("--group", type=int, action="append", dest="groups", metavar="N",
                           help="an access group of the terminal, when admitting it (repeatable; sync mode specific sends it "
                                "the users sharing one); given, they replace its groups")

    users = sub.add_parser("users", help="list, show, add, edit or delete server users")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = users_sub.add_parser("list", parents=[client], help="list users")
    listing.add_argument("--search", help="part of the id or name")
    listing.add_argument("--after", metavar="USER_ID", help="continue after this user id")
    listing.add_argument("--limit", type=int, default=50)
    shown = users_sub.add_parser("show", parents=[client], help="show one user")
    shown.add_argument("user_id")
    shown.add_argument("--provenance", action="store_true", help="for every field and credential: who gave it, when, by which rule")
    users_sub.add_parser("history", parents=[client],
                         help="every version of a user: where it came from, what changed, which rule took or refused each field"
                         ).add_argument("user_id")
    _user_fields(users_sub.add_parser("add", parents=[client], help="add a user"), edit=False)
    _user_fields(users_sub.add_parser("edit", parents=[client], help="change some fields of a user"), edit=True)
    users_sub.add_parser("delete", parents=[client], help="delete a user (terminals delete it too)").add_argument("user_id")

    events = sub.add_parser("events", parents=[client], help="show events, or follow them as they happen")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--type", action="append", help="event type, or sync, a short name (device-update, server-update, save-failed, "
                        "push-refused, server-delete, ...: GET /api/event-types), or the vendor's spelling, "
                        "e.g. 'User update succeeded(Device)' (repeatable)")
    events.add_argument("--terminal", type=int)
    events.add_argument("--user")
    events.add_argument("--since", help="milliseconds since the epoch or ISO 8601 time")
    events.add_argument("--until", help="milliseconds since the epoch or ISO 8601 time")
    events.add_argument("--limit", type=int, default=20, help="how many of the latest to show (default 20)")

    lockouts = sub.add_parser("lockouts", parents=[client], help="list addresses locked out after wrong proofs, or lift one's lockout")
    lockouts.add_argument("action", nargs="?", choices=["clear"])
    lockouts.add_argument("address", nargs="?", metavar="ADDRESS")

    mode = sub.add_parser("sync-mode", parents=[client], help="show or set the sync mode")
    mode.add_argument("mode", nargs="?", choices=SYNC_MODES, help="the new mode (without it: show the current one)")
    sub.add_parser("reconcile", parents=[client], help="compare every online terminal with the server now and repair "
                                                       "what the gateway owns (a wiped device is refilled)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "demo":
        print("gateway: the demo is its own command now: gateway-demo (or make demo)", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        return _run(args, sys.argv[1:] if argv is None else argv)
    if args.command == "terminals" and (args.action is None) != (args.terminal_id is None):
        parser.error("terminals: give an action and a terminal id (gateway terminals admit 7), or neither")
    if args.command == "lockouts" and (args.action is None) != (args.address is None):
        parser.error("lockouts: give clear and an address (gateway lockouts clear 192.0.2.7), or neither")
    return admin.dispatch(args)


def _run(args, argv: list[str]) -> int:
    # Imported here: the database and the reactor cost half a second the API client never needs.
    from gateway.api_token import stored_or_new, token_path
    from gateway.config import ConfigError, GatewayConfig
    from gateway.zk.config import zk_from_option
    from gateway.process.run import run, run_workers

    try:
        zk = [zk_from_option(args.zk, args.zk_id, args.zk_comm_key)] if args.zk else None
        config = GatewayConfig.load(
            args.config,
            db=args.db,
            tcp_host=args.tcp_host,
            tcp_port=args.tcp_port,
            http_port=args.http_port,
            http_process=False if args.api_in_process else None,
            admission=args.admission,
            default_secret=args.default_secret,
            api_token=args.api_token or os.environ.get(TOKEN_ENV) or None,
            sync_mode=args.sync_mode,
            serial=[{"device": s} for s in args.serial] if args.serial else None,
            zk=zk,
            workers=args.workers,
        )
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    sync_mode = SyncMode(args.sync_mode) if args.sync_mode else None
    if args.worker is None and config.workers > 1:
        return run_workers(config, sync_mode, partial(worker_argv, argv, config.workers))
    role = args.worker or WorkerRole()
    announce = None
    if config.api_token is None and role.primary:  # only the first worker serves the API
        path = token_path(config.db)
        try:
            config.api_token, made = stored_or_new(path)
        except OSError as exc:
            print(f"gateway: cannot start: cannot read the API token in {path}: {exc.strerror}", file=sys.stderr)
            return 1
        announce = partial(announce_token, path.resolve(), made)
    run(config, sync_mode, announce, role)


def worker_argv(argv: list[str], count: int, index: int, tcp_port: int, http_port: int) -> list[str]:
    """The command line of worker ``index`` of ``gateway run --workers N``: the same options, on
    the ports the supervisor holds, without those it did once for all (``--sync-mode``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--workers", "--sync-mode", "--tcp-port", "--http-port"):
            skip = True
        elif not arg.startswith(("--workers=", "--sync-mode=", "--tcp-port=", "--http-port=")):
            kept.append(arg)
    return [sys.executable, "-m", "gateway.cli", *kept, "--tcp-port", str(tcp_port), "--http-port", str(http_port),
            "--worker", f"{index}/{count}"]


def announce_token(path, made: bool, gateway) -> None:
    """Once the gateway listens: a new token kept in its file and shown in full with how to use
    it; a kept one named by its file."""
    if not made:
        print(f"API token for writes: the one kept in {path}", flush=True)
        return
    token = gateway.config.api_token
    try:
        keep_token(path, token)
    except OSError as exc:
        print(f"gateway: cannot keep the API token in {path} ({exc.strerror}): it works until this gateway stops; "
              f"give --api-token or {TOKEN_ENV} to keep one of your own", file=sys.stderr, flush=True)
    host = gateway.config.http_host
    reachable_at = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # listening everywhere: reached here on loopback
    url = f"http://{reachable_at}:{gateway.http_port.getHost().port}"
    at = "" if url == admin.DEFAULT_URL else f" --url {url}"
    print(f"\nAPI token for writes, made at this first start and kept in {path} (yours alone to read):\n"
          f"    {token}\n"
          f"From the folder {path.parent} the gateway command finds it by itself:\n"
          f"    gateway{at} users add 1001 --name \"Ana Lima\"\n"
          f"From anywhere else, give it: gateway --token {token} ... or export {TOKEN_ENV}={token}\n"
          f"Over HTTP: curl -H 'Authorization: Bearer {token}' {url}/api/sync\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
