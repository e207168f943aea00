"""Field changes of a user and the rule that decided each: the words of a user's history.

A change names one field (or one card, finger or face of it), what it was and what it became or
was offered, whether it was taken, refused or set, and the rule that decided. Values are shown
as an operator may see them: a PIN or a photo as "set", a template as its slot, never bytes of
a secret.
"""

from dataclasses import dataclass

from protocol.records import MAX_CARDS, MAX_FOREIGN_FACE_BYTES, MAX_FOREIGN_FACES, UserRecord

# Outcomes of one field's change.
TAKEN = "taken"  # a terminal's value the server now holds
REFUSED = "refused"  # a terminal's value the server did not take (the rule says why)
SET = "set"  # an operator's change, through the API
NOTED = "noted"  # a change made elsewhere that the server does not follow (a keypad delete)

# The rules, by the key the history stores, and what each means.
NEW_USER = "new user"
VACANT_FILLED = "vacant field filled"
SERVER_KEPT = "server field kept"
CARD_ADDED = "card added"
CARD_LIMIT = "card beyond the limit"
FACE_LIMIT = "face beyond the limit"
DEVICE_CANNOT_HOLD = "device cannot hold it"
SERVER_DELETED = "deleted on the server"
TERMINAL_DELETE = "delete at a terminal not applied to the server"
NOT_PULLED = "not pulled in this sync mode"
OPERATOR = "operator's change"
RULES = {
    NEW_USER: "the server did not know the user: the terminal's record is taken whole",
    VACANT_FILLED: "the server's field was vacant: the terminal's value fills it",
    SERVER_KEPT: "the server had a value: it stays, the terminal gets the server's back",
    CARD_ADDED: "cards are a union by card id: a card the server did not have is added",
    CARD_LIMIT: f"a user holds at most {MAX_CARDS} cards, the server's first: the rest is refused",
    FACE_LIMIT: f"a user holds at most {MAX_FOREIGN_FACES} faces of other algorithms, {MAX_FOREIGN_FACE_BYTES} bytes together, "
                "the server's first: the rest is refused",
    DEVICE_CANNOT_HOLD: "the terminal cannot hold the server's value: the difference is no edit",
    SERVER_DELETED: "the server deleted the user while the terminal changed it: the delete wins",
    TERMINAL_DELETE: "a delete at a terminal's keypad never deletes on the server",
    NOT_PULLED: "the sync mode does not take keypad changes into the server",
    OPERATOR: "set through the API or the gateway command; the server is authoritative",
}

WHOLE_FIELDS = ("name", "pin_hash", "validity", "security_level", "auth_mode", "disabled", "photo", "access_groups")
MEMBER_FIELDS = ("cards", "fingerprints", "faces")


@dataclass(frozen=True)
class FieldChange:
    field: str
    outcome: str
    rule: str
    old: object = None  # the server's value before (JSON: text, number, list)
    new: object = None  # what it became, or what the terminal offered when refused

    def as_json(self) -> list:
        return [self.field, self.outcome, self.rule, self.old, self.new]


def shown(name: str, value):
    """A field's value as the history keeps and shows it."""
    if value is None or value == ():
        return None
    if name in ("pin_hash", "photo"):
        return "set"
    if name == "validity":
        return {"start": value[0], "end": value[1]}
    if name == "access_groups":
        return list(value)
    return value


def member(name: str, value) -> str:
    """One card, finger or face, as the history names it."""
    if name == "cards":
        return f"{value.type.name} {value.data.hex()}"
    if name == "fingerprints":
        return f"finger {value.index}" + (f" ({value.format})" if value.format else "")
    return f"face {value.index}" + (f" ({value.format})" if value.format else "")


def member_key(name: str, value):
    return value.card_id if name == "cards" else value.slot


def summary(changes: list[FieldChange]) -> str:
    """One line for a monitoring event: what was taken, what was refused, each with its rule."""
    if changes and all(c.rule == NEW_USER for c in changes):
        return f"{NEW_USER}, taken whole: {_record_text(changes)}"
    taken = [_change_text(c) for c in changes if c.outcome in (TAKEN, SET)]
    refused = [_change_text(c) for c in changes if c.outcome in (REFUSED, NOTED)]
    parts = ([f"taken: {', '.join(taken)}"] if taken else []) + ([f"refused: {', '.join(refused)}"] if refused else [])
    return "; ".join(parts)


# How a change names its field in a sentence; members name themselves ("finger 0", "face 1").
_LABELS = {"cards": "card ", "fingerprints": "", "faces": "", "pin_hash": "pin ", "access_groups": "groups ", "user": "user "}


def _record_text(changes: list[FieldChange]) -> str:
    """A new record in a few words: its name, the other fields by name, credentials counted."""
    words = [f"name {c.new!r}" if c.field == "name" else _LABELS.get(c.field, c.field + " ").strip()
             for c in changes if c.field not in MEMBER_FIELDS]
    for name, one in (("cards", "card"), ("fingerprints", "finger"), ("faces", "face")):
        count = sum(c.field == name for c in changes)
        if count:
            words.append(f"{count} {one}{'s' if count > 1 else ''}")
    return ", ".join(words)


def _change_text(change: FieldChange) -> str:
    value = change.new if change.new is not None else change.old
    label = _LABELS.get(change.field, change.field + " ")
    if change.field in MEMBER_FIELDS:
        shown_value = str(value)
    elif isinstance(value, dict):
        shown_value = f"{value['start']}..{value['end']}"
    elif isinstance(value, list):
        shown_value = ",".join(map(str, value))
    else:
        shown_value = repr(value) if isinstance(value, str) and value != "set" else str(value)
    return f"{label}{shown_value} ({change.rule})"


def record_changes(old: UserRecord | None, new: UserRecord | None, outcome: str, rule: str) -> list[FieldChange]:
    """Every field in which ``new`` differs from ``old`` (None: no record), all with one outcome and rule."""
    changes = []
    for name in WHOLE_FIELDS:
        before, after = (getattr(r, name) if r is not None else None for r in (old, new))
        if shown(name, before) != shown(name, after) or (name in ("pin_hash", "photo") and before != after):
            changes.append(FieldChange(name, outcome, rule, shown(name, before), shown(name, after)))
    for name in MEMBER_FIELDS:
        before, after = ({member_key(name, m): m for m in getattr(r, name)} if r is not None else {} for r in (old, new))
        for key, value in after.items():
            if before.get(key) != value:
                changes.append(FieldChange(name, outcome, rule, member(name, before[key]) if key in before else None, member(name, value)))
        changes += [FieldChange(name, outcome, rule, member(name, value), None) for key, value in before.items() if key not in after]
    return changes
