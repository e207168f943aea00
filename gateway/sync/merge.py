"""merge_vacant_fields: the server-wins merge of a record pulled from a terminal.

Rules (design.md, "Merge rules"): a field the server already has stays as it is; a vacant
server field takes the terminal's value; cards are unioned by card id and a card the server has
is never changed; finger and face slots are filled only where the server's slot is empty (a
finger's slot is its index and its template format: a ZK and a native template are two slots).
"""

from dataclasses import replace

from protocol.records import MAX_CARDS, UserRecord

# Fields taken whole: vacant when None (scalars) or empty (access groups).
_WHOLE_FIELDS = ("name", "pin_hash", "validity", "security_level", "auth_mode", "disabled", "photo", "access_groups")


def _vacant(value) -> bool:
    return value is None or value == ()


def merge_vacant_fields(server: UserRecord | None, terminal: UserRecord) -> UserRecord:
    """The record the server should hold after learning ``terminal``'s copy of the user."""
    if server is None:
        return terminal
    filled = {name: getattr(terminal, name) for name in _WHOLE_FIELDS if _vacant(getattr(server, name))}
    known_cards = {card.card_id for card in server.cards}
    # A record holds at most MAX_CARDS: the server's cards come first and are never dropped.
    cards = (server.cards + tuple(c for c in terminal.cards if c.card_id not in known_cards))[:MAX_CARDS]
    fingers = _fill_slots(server.fingerprints, terminal.fingerprints)
    faces = _fill_slots(server.faces, terminal.faces)
    return replace(server, **filled, cards=cards, fingerprints=fingers, faces=faces)


def _fill_slots(server_slots: tuple, terminal_slots: tuple) -> tuple:
    taken = {slot.slot for slot in server_slots}
    merged = server_slots + tuple(s for s in terminal_slots if s.slot not in taken)
    return tuple(sorted(merged, key=lambda slot: slot.slot))

