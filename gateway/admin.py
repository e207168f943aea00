"""Administrative commands that act on the database directly: users and the sync mode.

Each command is one transaction; a running gateway sees the change through its sweep.
"""

import json
import sys

from sqlalchemy import select

from gateway.database import Database
from gateway.schema import settings, users
from gateway.settings import MODE_KEY, _store_mode
from gateway.syncmode import SyncMode
from gateway.users import UnknownUser, UserExists, UserSummary, create_user, delete_user, edit_user, load_record
from protocol.errors import MessageError
from protocol.records import Card, CardType, UserRecord, hash_pin


def dispatch(config, args) -> int:
    db = Database(config.db, reactor=None)
    db.open()
    try:
        if args.command == "sync-mode":
            return _sync_mode(db, args.mode)
        return _users(db, args)
    except (UnknownUser, UserExists, MessageError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        db.engine.dispose()


def _sync_mode(db, mode: str | None) -> int:
    if mode is None:
        stored = db.run_now(lambda c: c.execute(select(settings.c.value).where(settings.c.key == MODE_KEY)).scalar())
        print(stored or "(not set: the gateway's configured default applies)")
        return 0
    try:
        new = SyncMode(mode)
    except ValueError:
        raise ValueError(f"sync mode must be one of {', '.join(m.value for m in SyncMode)}") from None
    db.run_now(_store_mode, new, False)
    print(f"sync mode set to {new}")
    return 0


def _fields(args) -> dict:
    fields = {}
    if args.name is not None:
        fields["name"] = args.name
    if args.pin is not None:
        fields["pin_hash"] = hash_pin(args.user_id, args.pin)
    if args.groups:
        fields["access_groups"] = tuple(args.groups)
    if args.card:
        fields["cards"] = tuple(_card(text) for text in args.card)
    if args.disabled is not None:
        fields["disabled"] = args.disabled
    return fields


def _card(text: str) -> Card:
    kind, _, data = text.partition(":")
    try:
        return Card(CardType[kind.upper()], bytes.fromhex(data))
    except (KeyError, ValueError):
        raise ValueError(f"card must be TYPE:HEX with TYPE one of {', '.join(t.name for t in CardType)}: {text!r}") from None


def _users(db, args) -> int:
    if args.action == "list":
        rows = db.run_now(lambda c: c.execute(select(users.c.user_id, users.c.name).where(users.c.record.is_not(None)).order_by(users.c.user_id)).all())
        for user_id, name in rows:
            print(f"{user_id}\t{name or ''}")
        return 0
    if args.action == "show":
        record = db.run_now(load_record, args.user_id)
        if record is None:
            raise UnknownUser(args.user_id)
        print(json.dumps(UserSummary.of(record, 0).__dict__, default=list, ensure_ascii=False))
        return 0
    if args.action == "add":
        db.run_now(create_user, UserRecord(args.user_id, **_fields(args)))
    elif args.action == "edit":
        db.run_now(edit_user, args.user_id, _fields(args))
    else:
        db.run_now(delete_user, args.user_id)
    print(f"user {args.user_id}: {args.action} committed")
    return 0
