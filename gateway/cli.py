"""The ``gateway`` command: run the service, and administer users and settings.

Administrative commands work on the database directly for now (the HTTP API comes with the
monitoring issue); a running gateway picks their changes up within a second.
"""

import argparse
import sys

from gateway import admin
from gateway.config import ConfigError, GatewayConfig
from gateway.run import run

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see docs/gateway.example.toml)")
    p.add_argument("--db", metavar="URL", help="database URL (default: sqlite:///gateway.db in the working folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Terminal gateway: keeps access-control terminals and the server user database in sync.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway")
    _add_common(run)
    run.add_argument("--tcp-port", type=int, help="port terminals dial in to (default 4370)")
    run.add_argument("--http-port", type=int, help="port of the HTTP API and monitoring page (default 8080)")
    run.add_argument("--serial", action="append", metavar="DEVICE[:BAUD]", help="an RS-485 bus to master (repeatable)")
    run.add_argument("--admission", choices=["allowlist", "pending", "open"], help="who may connect")
    run.add_argument("--default-secret", help="secret of terminals admitted by 'open' admission")
    run.add_argument("--sync-mode", help="initial sync mode if the database has none stored")

    mode = sub.add_parser("sync-mode", help="show or set the sync mode")
    _add_common(mode)
    mode.add_argument("mode", nargs="?", help="disabled | specific | all | all-with-device-updates")

    users = sub.add_parser("users", help="list, show, add, edit or delete server users")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_common(users_sub.add_parser("list", help="list users"))
    show = users_sub.add_parser("show", help="show one user")
    _add_common(show)
    show.add_argument("user_id")
    for name in ("add", "edit"):
        p = users_sub.add_parser(name, help=f"{name} a user")
        _add_common(p)
        p.add_argument("user_id")
        p.add_argument("--name")
        p.add_argument("--pin", help="hashed before it is stored; never kept in clear")
        p.add_argument("--group", type=int, action="append", dest="groups", help="access group (repeatable)")
        p.add_argument("--card", action="append", metavar="TYPE:HEX", help="card, e.g. SMART_CARD:0a1b2c (repeatable)")
        p.add_argument("--disabled", action=argparse.BooleanOptionalAction, default=None)
    delete = users_sub.add_parser("delete", help="delete a user (terminals delete it too)")
    _add_common(delete)
    delete.add_argument("user_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            config = GatewayConfig.load(
                args.config,
                db=args.db,
                tcp_port=args.tcp_port,
                http_port=args.http_port,
                admission=args.admission,
                default_secret=args.default_secret,
                sync_mode=args.sync_mode,
                serial=[{"device": s} for s in args.serial] if args.serial else None,
            )
            return run(config)
        config = GatewayConfig.load(args.config, db=args.db)
        return admin.dispatch(config, args)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
