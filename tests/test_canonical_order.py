"""A record's parts in canonical order (docs/protocol.md, "Canonical order"): its digest is the
same whatever order its groups, cards, fingers and faces were given or received in."""

import pytest

from protocol.errors import MessageError
from protocol.records import Card, CardType, Face, Fingerprint, UserRecord, UserRecordWire

T = bytes(384)


def test_a_record_is_held_and_encoded_in_canonical_order():
    shuffled = UserRecord("u1", access_groups=(9, 1, 5),
                          cards=(Card(CardType.SMART_CARD, b"\x02"), Card(CardType.CSN, b"\x09"), Card(CardType.CSN, b"\x01")),
                          fingerprints=(Fingerprint(6, T, T), Fingerprint(2, T, T)), faces=(Face(3, b"f"), Face(0, b"g")))
    ordered = UserRecord("u1", access_groups=(1, 5, 9),
                         cards=(Card(CardType.CSN, b"\x01"), Card(CardType.CSN, b"\x09"), Card(CardType.SMART_CARD, b"\x02")),
                         fingerprints=(Fingerprint(2, T, T), Fingerprint(6, T, T)), faces=(Face(0, b"g"), Face(3, b"f")))
    assert shuffled == ordered
    assert UserRecordWire.build(shuffled) == UserRecordWire.build(ordered)
    assert shuffled.digest() == ordered.digest()


def test_a_record_received_out_of_order_is_read_as_the_canonical_one():
    ordered = UserRecord("u1", access_groups=(1, 5), cards=(Card(CardType.CSN, b"\x01"), Card(CardType.WIEGAND, b"\x01")))
    wire = bytearray(UserRecordWire.build(ordered))
    groups_at = wire.index(bytes([2, 0, 0, 0, 1, 0, 0, 0, 5]))
    wire[groups_at + 1 : groups_at + 9] = bytes([0, 0, 0, 5, 0, 0, 0, 1])  # a terminal that sends 5, 1
    assert UserRecordWire.parse(bytes(wire)) == ordered


@pytest.mark.parametrize("record, fault", [
    (UserRecord("u1", access_groups=(3, 3)), "access group listed twice"),
    (UserRecord("u1", cards=(Card(CardType.CSN, b"\x01"), Card(CardType.CSN, b"\x01"))), "card listed twice"),
])
def test_a_group_or_card_listed_twice_is_invalid(record, fault):
    with pytest.raises(MessageError, match=fault):
        record.validate()
