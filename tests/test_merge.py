"""merge_vacant_fields: server fields win, vacant ones are filled, cards union, slots fill."""

from dataclasses import fields

from gateway.sync.changes import WHOLE_FIELDS as _WHOLE_FIELDS
from gateway.sync.merge import merge_vacant_fields
from protocol.records import MAX_CARDS, Card, CardType, Face, Fingerprint, UserRecord

T = bytes(384)


def finger(i, fill=0):
    return Fingerprint(i, bytes([fill]) * 384, bytes([fill]) * 384)


def test_unknown_user_is_taken_as_the_terminal_has_it():
    rec = UserRecord("u1", name="Ana")
    assert merge_vacant_fields(None, rec) is rec


def test_server_fields_win_and_vacant_ones_are_filled():
    server = UserRecord("u1", name="Ana", access_groups=(1,))
    terminal = UserRecord("u1", name="Anna", pin_hash=b"p" * 32, security_level=3, access_groups=(2,), validity=(1, 2))
    merged = merge_vacant_fields(server, terminal)
    assert merged.name == "Ana"
    assert merged.access_groups == (1,)
    assert merged.pin_hash == b"p" * 32
    assert merged.security_level == 3
    assert merged.validity == (1, 2)


def test_cards_union_by_id_and_server_cards_never_change():
    server = UserRecord("u1", cards=(Card(CardType.CSN, b"\x01"),))
    terminal = UserRecord("u1", cards=(Card(CardType.SMART_CARD, b"\x01"), Card(CardType.CSN, b"\x01")))
    merged = merge_vacant_fields(server, terminal)
    assert merged.cards == (Card(CardType.CSN, b"\x01"), Card(CardType.SMART_CARD, b"\x01"))


def test_cards_are_capped_at_the_record_limit_keeping_the_servers():
    server = UserRecord("u1", cards=tuple(Card(CardType.CSN, bytes([i])) for i in range(MAX_CARDS)))
    terminal = UserRecord("u1", cards=(Card(CardType.SECURE_CREDENTIAL, b"\xff"),))
    assert merge_vacant_fields(server, terminal).cards == server.cards


def test_finger_and_face_slots_fill_only_when_empty():
    server = UserRecord("u1", fingerprints=(finger(1, 1),), faces=(Face(0, b"server"),))
    terminal = UserRecord("u1", fingerprints=(finger(0, 2), finger(1, 3)), faces=(Face(0, b"t"), Face(2, b"t2")))
    merged = merge_vacant_fields(server, terminal)
    assert merged.fingerprints == (finger(0, 2), finger(1, 1))
    assert merged.faces == (Face(0, b"server"), Face(2, b"t2"))


def test_merge_result_is_a_valid_record():
    server = UserRecord("u1", name="Ana")
    terminal = UserRecord("u1", fingerprints=(finger(0),), cards=(Card(CardType.WIEGAND, b"\x00\x01"),))
    merge_vacant_fields(server, terminal).validate()


def test_every_record_field_has_a_merge_rule():
    ruled = set(_WHOLE_FIELDS) | {"user_id", "cards", "fingerprints", "faces"}
    assert ruled == {f.name for f in fields(UserRecord)}
