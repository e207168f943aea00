"""Keypad: the commands a person types at a simulated terminal, and their interpreter.

One command per line, words split as a shell splits them (quote a name with spaces), options as
``key=value``. A reply is zero or more data lines, each indented by two spaces, then one status
line that starts with ``ok`` or ``error:``; so a script reads lines until one does not start
with a space, and a person reads it as it comes. The interpreter does no I/O: simulator/console.py
brings lines from standard input or a control socket. README section "Keypad" lists the commands.
"""

import json
import random
import shlex
import time
from dataclasses import dataclass, field

from protocol.errors import MessageError
from protocol.events import Credential, EventCode
from protocol.json_form import record_to_json
from protocol.records import FINGER_TEMPLATE_SIZE, MAX_CARD_DATA, Card, CardType, Face, Fingerprint, UserRecord, hash_pin

FACE_TEMPLATE_BYTES = 2048


class KeypadError(Exception):
    """A command that cannot be carried out; the text says why, for the person who typed it."""


@dataclass
class Reply:
    status: str  # "ok ..." or "error: ..."
    lines: list[str] = field(default_factory=list)
    quit: bool = False  # the person switched the terminal off

    def text(self) -> str:
        return "".join(f"  {line}\n" for line in self.lines) + self.status + "\n"


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    options: frozenset[str] = frozenset()


COMMANDS = {
    c.name: c
    for c in (
        Command("enrol", "enrol ID [name=TEXT] [pin=DIGITS] [card=TYPE:HEX]... [finger=SLOT]... [face=SLOT]... [group=N]...",
                "enrol a new user (fingers and faces are scanned: templates are made up)",
                frozenset({"name", "pin", "card", "finger", "face", "group"})),
        Command("edit", "edit ID [name=TEXT] [pin=DIGITS] [add-card=TYPE:HEX]... [remove-card=TYPE:HEX]... "
                "[add-finger=SLOT]... [remove-finger=SLOT]... [add-face=SLOT]... [remove-face=SLOT]... [group=N]...",
                "change a user; an empty name= or pin= clears it, group= replaces the groups",
                frozenset({"name", "pin", "add-card", "remove-card", "add-finger", "remove-finger", "add-face", "remove-face", "group"})),
        Command("delete", "delete ID", "delete a user from this terminal (the server keeps it)"),
        Command("show", "show ID", "a user's fields and digest"),
        Command("list", "list", "every user with its digest (as LIST_USERS reports it) and name"),
        Command("dump", "dump", "the whole user store as JSON"),
        Command("verify", "verify ID [card|finger|face|pin]",
                "someone presents a credential at the door: it opens for a user holding that credential, enabled and "
                "within the validity period (logs the event either way)"),
        Command("status", "status", "the link, the user count and the events the gateway has not acknowledged"),
        Command("help", "help", "this list"),
        Command("quit", "quit", "switch the terminal off (the simulator exits)"),
    )
}
ALIASES = {"enroll": "enrol", "exit": "quit", "?": "help"}
CREDENTIALS = {c.name.lower(): c for c in Credential}


class Keypad:
    """Runs keypad commands on one ``simulator.terminal.Terminal``."""

    def __init__(self, terminal):
        self.terminal = terminal
        self._scanner = random.Random(terminal.terminal_id)  # what fingers and faces "scan" as

    def run(self, line: str) -> Reply:
        """The reply to one typed line; a mistake is an ``error:`` reply, never an exception."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return Reply(f"error: {exc}")
        if not words:
            return Reply("ok")
        name = ALIASES.get(words[0].lower(), words[0].lower())
        command = COMMANDS.get(name)
        if command is None:
            return Reply(f"error: unknown command {words[0]!r}; type help")
        try:
            return getattr(self, "_" + name)(command, words[1:])
        except (KeypadError, MessageError) as exc:
            return Reply(f"error: {exc}")

    # -- commands ----------------------------------------------------------------------------

    def _enrol(self, command, args):
        user_id, options = _arguments(command, args)
        if user_id in self.terminal.users:
            raise KeypadError(f"user {user_id} is enrolled already: use edit")
        record = UserRecord(
            user_id,
            name=_text(options.get("name", [""])[-1]),
            pin_hash=self._pin(user_id, options.get("pin", [""])[-1]),
            access_groups=_groups(options.get("group", [])),
            cards=tuple(dict.fromkeys(_card(c) for c in options.get("card", []))),
            fingerprints=tuple(self._finger(s) for s in _slots(options.get("finger", []), "finger")),
            faces=tuple(self._face(s) for s in _slots(options.get("face", []), "face")),
        )
        event = self.terminal.enroll(record)
        return Reply(f"ok enrolled {user_id} (event {event.event_id})")

    def _edit(self, command, args):
        user_id, options = _arguments(command, args)
        record = self._held(user_id)
        if not options:
            raise KeypadError(f"nothing to change; usage: {command.usage}")
        fields = {}
        if "name" in options:
            fields["name"] = _text(options["name"][-1])
        if "pin" in options:
            fields["pin_hash"] = self._pin(user_id, options["pin"][-1])
        if "group" in options:
            fields["access_groups"] = _groups(options["group"])
        if "add-card" in options or "remove-card" in options:
            fields["cards"] = _changed_cards(record.cards, options.get("add-card", []), options.get("remove-card", []))
        if "add-finger" in options or "remove-finger" in options:
            added = {s: self._finger(s) for s in _slots(options.get("add-finger", []), "finger")}
            fields["fingerprints"] = _changed_slots(record.fingerprints, added, options.get("remove-finger", []), "finger")
        if "add-face" in options or "remove-face" in options:
            added = {s: self._face(s) for s in _slots(options.get("add-face", []), "face")}
            fields["faces"] = _changed_slots(record.faces, added, options.get("remove-face", []), "face")
        event = self.terminal.edit(user_id, **fields)
        return Reply(f"ok edited {user_id} (event {event.event_id})")

    def _delete(self, command, args):
        user_id, _ = _arguments(command, args)
        self._held(user_id)
        event = self.terminal.delete(user_id)
        return Reply(f"ok deleted {user_id} (event {event.event_id})")

    def _show(self, command, args):
        user_id, _ = _arguments(command, args)
        return Reply("ok", describe(self._held(user_id), user_id in self.terminal.changed_locally))

    def _list(self, command, args):
        _no_arguments(command, args)
        users = [self.terminal.users[u] for u in sorted(self.terminal.users)]
        width = max((len(r.user_id) for r in users), default=0)
        lines = [f"{r.user_id:<{width}}  {r.digest().hex()}  {r.name or ''}".rstrip() for r in users]
        return Reply(f"ok {_plural(len(users), 'user')}", lines)

    def _dump(self, command, args):
        _no_arguments(command, args)
        store = {"terminal_id": self.terminal.terminal_id, "users": [record_to_json(self.terminal.users[u]) for u in sorted(self.terminal.users)]}
        return Reply(f"ok {_plural(len(store['users']), 'user')}, as one line of JSON", [json.dumps(store, ensure_ascii=False, separators=(",", ":"))])

    def _verify(self, command, args):
        if not args or len(args) > 2:
            raise KeypadError(f"usage: {command.usage}")
        presented = args[1].lower() if len(args) == 2 else "card"
        if presented not in CREDENTIALS:
            raise KeypadError(f"credential must be one of {', '.join(CREDENTIALS)}, got {args[1]!r}")
        credential = CREDENTIALS[presented]
        refused = self._refusal(args[0], credential)
        code = EventCode.VERIFY_FAIL if refused else EventCode.VERIFY_SUCCESS
        event = self.terminal.log_event(code, credential, args[0])
        return Reply(f"ok {code.name} {args[0]} {presented} (event {event.event_id})" + (f": {refused}" if refused else ""))

    def _refusal(self, user_id: str, credential: Credential) -> str | None:
        """Why the door stays shut for this person and credential; None: it opens."""
        record = self.terminal.users.get(user_id)
        if record is None:
            return "no such user on this terminal"
        held = {Credential.CARD: record.cards, Credential.FINGER: record.fingerprints, Credential.FACE: record.faces,
                Credential.PIN: record.pin_hash}[credential]
        if not held:
            return f"the user holds no {credential.name.lower()}"
        if record.disabled:
            return "the user is disabled"
        if record.validity is not None:
            now_s, (start, end) = self.terminal.now_ms() // 1000, record.validity
            if now_s < start:
                return f"not valid before {_moment(start)}"
            if now_s > end:
                return f"expired at {_moment(end)}"
        return None

    def _status(self, command, args):
        _no_arguments(command, args)
        t = self.terminal
        link = "authenticated with the gateway" if t.authenticated else "not connected to a gateway"
        return Reply(f"ok terminal {t.terminal_id}, {link}, {_plural(len(t.users), 'user')}, "
                     f"next event {t.next_event_id}, {_plural(len(t.log), 'event')} not acknowledged")

    def _help(self, command, args):
        lines = [f"{c.usage}\n      {c.summary}" for c in COMMANDS.values()]
        lines += ["card types: " + ", ".join(t.name.lower() for t in CardType) + "; quote names with spaces: name=\"Ana Lima\""]
        return Reply("ok", "\n".join(lines).splitlines())

    def _quit(self, command, args):
        _no_arguments(command, args)
        return Reply("ok switching off", quit=True)

    # -- what a person presents to the reader ------------------------------------------------

    def _held(self, user_id: str) -> UserRecord:
        record = self.terminal.users.get(user_id)
        if record is None:
            raise KeypadError(f"no user {user_id} on this terminal")
        return record

    def _pin(self, user_id: str, pin: str) -> bytes | None:
        if not pin:
            return None
        if not (pin.isascii() and pin.isdigit() and len(pin) <= 16):
            raise KeypadError(f"a PIN is 1 to 16 digits, got {pin!r}")
        return hash_pin(user_id, pin)

    def _finger(self, slot: int) -> Fingerprint:
        return Fingerprint(slot, self._scanner.randbytes(FINGER_TEMPLATE_SIZE), self._scanner.randbytes(FINGER_TEMPLATE_SIZE))

    def _face(self, slot: int) -> Face:
        return Face(slot, self._scanner.randbytes(FACE_TEMPLATE_BYTES))


def describe(record: UserRecord, pending: bool = False) -> list[str]:
    """A user's fields as ``show`` prints them: credentials summarised, never template bytes."""
    rows = [
        ("user", record.user_id),
        ("name", record.name if record.name is not None else "(none)"),
        ("pin", "set" if record.pin_hash else "(none)"),
        ("groups", ", ".join(map(str, record.access_groups)) or "(none)"),
        ("cards", ", ".join(f"{c.type.name.lower()}:{c.data.hex()}" for c in record.cards) or "(none)"),
        ("fingers", _held_slots(f.index for f in record.fingerprints)),
        ("faces", _held_slots(f.index for f in record.faces if f.format is None)),  # another family's faces are kept, not used
        ("foreign", ", ".join(f"face {f}" for f in sorted({f.format for f in record.faces if f.format is not None})) or "(none)"),
        ("digest", record.digest().hex()),
    ]
    if pending:
        rows.append(("pending", "changed here; the gateway has not fetched it yet"))
    return [f"{key:<8} {value}" for key, value in rows]


def _held_slots(indexes) -> str:
    """How many, and in which slots: "1 (slot 0)" rather than a bare "0" that reads as none."""
    found = sorted(indexes)
    if not found:
        return "(none)"
    return f"{len(found)} (slot{'s' if len(found) > 1 else ''} {', '.join(map(str, found))})"


def _moment(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


# -- reading what was typed ------------------------------------------------------------------


def _arguments(command: Command, args: list[str]) -> tuple[str, dict[str, list[str]]]:
    """The user id and the ``key=value`` options, each key's values in the order typed."""
    if not args or "=" in args[0]:
        raise KeypadError(f"usage: {command.usage}")
    options: dict[str, list[str]] = {}
    for word in args[1:]:
        key, equals, value = word.partition("=")
        if not equals or key not in command.options:
            allowed = ", ".join(sorted(command.options)) or "none"
            raise KeypadError(f"{command.name}: unknown option {word!r} (options: {allowed})")
        options.setdefault(key, []).append(value)
    return args[0], options


def _no_arguments(command: Command, args: list[str]) -> None:
    if args:
        raise KeypadError(f"usage: {command.usage}")


def _plural(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def _text(value: str) -> str | None:
    return value or None  # an empty value leaves the field vacant


def _groups(values: list[str]) -> tuple[int, ...]:
    return tuple(sorted({_number(v, "group", 2**32 - 1) for v in values if v}))


def _number(text: str, what: str, top: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > top:
        raise KeypadError(f"{what} must be a number from 0 to {top}, got {text!r}")
    return int(text)


def _slots(values: list[str], kind: str) -> list[int]:
    return sorted({_number(v, f"{kind} slot", 255) for v in values})


def _card(text: str) -> Card:
    kind, colon, data = text.partition(":")
    try:
        card_type = CardType[kind.upper().replace("-", "_")]
    except KeyError:
        kinds = ", ".join(t.name.lower() for t in CardType)
        raise KeypadError(f"card {text!r}: type must be one of {kinds} (as TYPE:HEX)") from None
    try:
        card_data = bytes.fromhex(data)
    except ValueError:
        card_data = b""
    if not colon or not 0 < len(card_data) <= MAX_CARD_DATA:
        raise KeypadError(f"card {text!r}: give its data as 1 to {MAX_CARD_DATA} bytes of hex after the type, e.g. csn:04a1b2c3")
    return Card(card_type, card_data)


def _changed_cards(cards: tuple[Card, ...], added: list[str], removed: list[str]) -> tuple[Card, ...]:
    held = list(cards)
    for text in removed:
        card = _card(text)
        if card not in held:
            raise KeypadError(f"the user holds no card {text}")
        held.remove(card)
    return tuple(dict.fromkeys(held + [_card(text) for text in added]))


def _changed_slots(held: tuple, added: dict[int, object], removed: list[str], kind: str) -> tuple:
    """Templates by slot after removing some and (re-)scanning others into their slots. The keypad's
    slots are this protocol's own: another family's templates of the same index are kept."""
    by_slot = {item.slot: item for item in held}
    for slot in _slots(removed, kind):
        if ("", slot) not in by_slot:
            raise KeypadError(f"the user has no {kind} in slot {slot}")
        del by_slot[("", slot)]
    by_slot.update((("", index), item) for index, item in added.items())
    return tuple(by_slot[s] for s in sorted(by_slot))
