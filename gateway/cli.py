"""The ``gateway`` command: run the service, and administer a running gateway through
its HTTP API (terminals, users, events, sync mode)."""

import argparse
import sys

from gateway import admin


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see docs/gateway.example.toml)")
    p.add_argument("--db", metavar="URL", help="database URL (default: sqlite:///gateway.db in the working folder)")


def _client_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", default=admin.DEFAULT_URL, help=f"the gateway's HTTP address (default {admin.DEFAULT_URL})")
    p.add_argument("--token", help=f"API token for changes (default: ${admin.TOKEN_ENV})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _user_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("user_id")
    p.add_argument("--name")
    p.add_argument("--pin", help="digits; the gateway stores only a hash")
    p.add_argument("--group", type=int, action="append", dest="groups", help="access group (repeatable)")
    p.add_argument("--card", action="append", metavar="TYPE:HEX", help="card, e.g. SMART_CARD:0a1b2c (repeatable)")
    p.add_argument("--disabled", action=argparse.BooleanOptionalAction, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Terminal gateway: keeps access-control terminals and the server user database in sync.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client = _client_options()

    run = sub.add_parser("run", help="run the gateway")
    _add_common(run)
    run.add_argument("--tcp-port", type=int, help="port terminals dial in to (default 4370)")
    run.add_argument("--http-port", type=int, help="port of the HTTP API and monitoring page (default 8080)")
    run.add_argument("--serial", action="append", metavar="DEVICE[:BAUD]", help="an RS-485 bus to master (repeatable)")
    run.add_argument("--admission", choices=["allowlist", "pending", "open"], help="who may connect")
    run.add_argument("--default-secret", help="secret of terminals admitted by 'open' admission")
    run.add_argument("--api-token", help="bearer token for API writes")
    run.add_argument("--sync-mode", help="initial sync mode if the database has none stored")

    sub.add_parser("demo", help="moved: the demo is its own command, gateway-demo (make demo)", add_help=False)

    terminals = sub.add_parser("terminals", parents=[client], help="list terminals, or admit, refuse or remove one")
    terminals.add_argument("action", nargs="?", choices=["admit", "refuse", "remove"])
    terminals.add_argument("terminal_id", nargs="?", type=int, metavar="ID")
    terminals.add_argument("--secret", help="the terminal's secret, when admitting one that has none")

    users = sub.add_parser("users", help="list, show, add, edit or delete server users")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = users_sub.add_parser("list", parents=[client], help="list users")
    listing.add_argument("--search", help="part of the id or name")
    listing.add_argument("--after", metavar="USER_ID", help="continue after this user id")
    listing.add_argument("--limit", type=int, default=50)
    users_sub.add_parser("show", parents=[client], help="show one user").add_argument("user_id")
    _user_fields(users_sub.add_parser("add", parents=[client], help="add a user"))
    _user_fields(users_sub.add_parser("edit", parents=[client], help="change some fields of a user"))
    users_sub.add_parser("delete", parents=[client], help="delete a user (terminals delete it too)").add_argument("user_id")

    events = sub.add_parser("events", parents=[client], help="show events, or follow them as they happen")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--type", action="append", help="event type, or sync, device-update, server-update, save-failed, push-refused (repeatable)")
    events.add_argument("--terminal", type=int)
    events.add_argument("--user")
    events.add_argument("--since", help="milliseconds since the epoch or ISO 8601 time")
    events.add_argument("--until", help="milliseconds since the epoch or ISO 8601 time")
    events.add_argument("--limit", type=int, default=20, help="how many of the latest to show (default 20)")

    mode = sub.add_parser("sync-mode", parents=[client], help="show or set the sync mode")
    mode.add_argument("mode", nargs="?", help="disabled | specific | all | all-with-device-updates")
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
        return _run(args)
    if args.command == "terminals" and (args.action is None) != (args.terminal_id is None):
        parser.error("terminals: give an action and a terminal id (gateway terminals admit 7), or neither")
    return admin.dispatch(args)


def _run(args) -> int:
    # Imported here: the database and the reactor cost half a second the API client never needs.
    from gateway.config import ConfigError, GatewayConfig
    from gateway.run import run

    try:
        config = GatewayConfig.load(
            args.config,
            db=args.db,
            tcp_port=args.tcp_port,
            http_port=args.http_port,
            admission=args.admission,
            default_secret=args.default_secret,
            api_token=args.api_token,
            sync_mode=args.sync_mode,
            serial=[{"device": s} for s in args.serial] if args.serial else None,
        )
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
