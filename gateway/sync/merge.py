"""merge_vacant_fields: the server-wins merge of a record pulled from a terminal, and the rule
behind each field it took or refused.

Rules (design.md, "Merge rules"): a field the server already has stays as it is; a vacant
server field takes the terminal's value; cards are unioned by card id and a card the server has
is never changed; finger and face slots are filled only where the server's slot is empty (a
finger's slot is its index and its template format: a ZK and a native template are two slots),
and a face of another algorithm only whole, where the server holds none of that format.
"""

from dataclasses import replace

from gateway.sync.changes import (
    CARD_ADDED,
    CARD_LIMIT,
    FACE_LIMIT,
    DEVICE_CANNOT_HOLD,
    MEMBER_FIELDS,
    NEW_USER,
    REFUSED,
    SERVER_KEPT,
    TAKEN,
    VACANT_FILLED,
    WHOLE_FIELDS,
    FieldChange,
    member,
    member_key,
    record_changes,
    shown,
)
from protocol.records import MAX_CARDS, MAX_FOREIGN_FACE_BYTES, MAX_FOREIGN_FACES, UserRecord


def _vacant(value) -> bool:
    return value is None or value == ()


def merge_vacant_fields(server: UserRecord | None, terminal: UserRecord) -> UserRecord:
    """The record the server should hold after learning ``terminal``'s copy of the user."""
    if server is None:
        return terminal
    filled = {name: getattr(terminal, name) for name in WHOLE_FIELDS if _vacant(getattr(server, name))}
    known_cards = {card.card_id for card in server.cards}
    # A record holds at most MAX_CARDS: the server's cards come first and are never dropped.
    cards = (server.cards + tuple(c for c in terminal.cards if c.card_id not in known_cards))[:MAX_CARDS]
    fingers = _fill_slots(server.fingerprints, terminal.fingerprints)
    faces = _fill_slots(server.faces, _faces_within_limits(server.faces, terminal.faces))
    return replace(server, **filled, cards=cards, fingerprints=fingers, faces=faces)


def _faces_within_limits(server_faces: tuple, terminal_faces: tuple) -> tuple:
    """The terminal's faces the record takes: this protocol's own by slot; another algorithm's as one
    unit (a near-infrared face is twelve templates that work only together, so slots of two
    enrolments must never mix): all of a format the server holds none of, when the record has room
    for all of it (foreign faces are bounded in number and bytes, protocol.records), else none."""
    foreign = [f for f in server_faces if f.format is not None]
    count, size = len(foreign), sum(len(f.template) for f in foreign)
    held = {f.format for f in foreign}
    room = [f for f in terminal_faces if f.format is None]
    for fmt in dict.fromkeys(f.format for f in terminal_faces if f.format is not None and f.format not in held):
        unit = [f for f in terminal_faces if f.format == fmt]
        unit_size = sum(len(f.template) for f in unit)
        if count + len(unit) <= MAX_FOREIGN_FACES and size + unit_size <= MAX_FOREIGN_FACE_BYTES:
            room += unit
            count, size = count + len(unit), size + unit_size
    return tuple(room)


def _fill_slots(server_slots: tuple, terminal_slots: tuple) -> tuple:
    taken = {slot.slot for slot in server_slots}
    merged = server_slots + tuple(s for s in terminal_slots if s.slot not in taken)
    return tuple(sorted(merged, key=lambda slot: slot.slot))


def whole_record(record: UserRecord) -> UserRecord:
    """What a terminal that holds every field (ours) holds of ``record``: all of it."""
    return record


def merge_reasons(server: UserRecord | None, terminal: UserRecord, merged: UserRecord, holdable=whole_record) -> list[FieldChange]:
    """For every field in which the terminal's copy and the server's differ, what the merge did
    and which rule decided. ``holdable(record)`` is the copy of a record the terminal can hold:
    a difference that is only what the terminal cannot hold is no edit made there."""
    if server is None:
        return record_changes(None, merged, TAKEN, NEW_USER)
    fits = holdable(server)
    changes = []
    for name in WHOLE_FIELDS:
        ours, theirs = getattr(server, name), getattr(terminal, name)
        if ours == theirs:
            continue
        if _vacant(ours):
            changes.append(FieldChange(name, TAKEN, VACANT_FILLED, None, shown(name, theirs)))
        else:
            rule = DEVICE_CANNOT_HOLD if getattr(fits, name) == theirs else SERVER_KEPT
            changes.append(FieldChange(name, REFUSED, rule, shown(name, ours), shown(name, theirs)))
    for name in MEMBER_FIELDS:
        ours = {member_key(name, m): m for m in getattr(server, name)}
        kept = {member_key(name, m) for m in getattr(merged, name)}
        held = {member_key(name, m) for m in getattr(fits, name)}
        for value in getattr(terminal, name):
            key = member_key(name, value)
            if ours.get(key) == value:
                continue
            if key in ours:  # a slot the server fills with another template
                changes.append(FieldChange(name, REFUSED, SERVER_KEPT, member(name, ours[key]), member(name, value)))
            elif name == "faces" and value.format is not None and value.format in {m.format for m in ours.values()}:
                changes.append(FieldChange(name, REFUSED, SERVER_KEPT, None, member(name, value)))  # the server's face of that format is whole
            elif key in kept:
                changes.append(FieldChange(name, TAKEN, CARD_ADDED if name == "cards" else VACANT_FILLED, None, member(name, value)))
            else:
                changes.append(FieldChange(name, REFUSED, CARD_LIMIT if name == "cards" else FACE_LIMIT, None, member(name, value)))
        offered = {member_key(name, m) for m in getattr(terminal, name)}
        for key, value in ours.items():
            if key not in offered:  # the server's stays: removed at the terminal, or never held there
                changes.append(FieldChange(name, REFUSED, SERVER_KEPT if key in held else DEVICE_CANNOT_HOLD, member(name, value), None))
    return changes
