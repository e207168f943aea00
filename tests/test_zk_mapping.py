"""Server records to ZK users and back (docs/zk.md, "Gateway mapping"): what goes, what is cut,
what stays the device's, and that a pull never erases a server field the device cannot hold."""

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from gateway.sync.merge import merge_vacant_fields
from protocol.errors import MessageError
from gateway.zk.mapping import (
    DeviceProfile,
    PinHashes,
    Unfit,
    CardField,
    cut_utf8,
    held_digest,
    template_format,
    to_device,
    to_server,
)
from protocol.records import Card, CardType, Fingerprint, UserRecord, hash_pin
from protocol.text import is_plain_text
from protocol.zk.records import Template, User, decode_user, encode_user
from simulator.people import People

ZK10 = DeviceProfile(72, "zk10")


def test_a_write_hashes_the_devices_password_only_when_the_server_has_a_pin(monkeypatch):
    hashed = []
    monkeypatch.setattr("gateway.zk.mapping.hash_pin", lambda user_id, pin: hashed.append(pin) or hash_pin(user_id, pin))
    monkeypatch.setattr("gateway.zk.mapping.pin_hash", PinHashes())
    held = User(7, "42", "Old", password="7731")
    assert to_device(UserRecord("42", name="New"), 7, held, ZK10)[0].password == "", "no server PIN: nothing to compare"
    assert hashed == [], "PBKDF2 (milliseconds) not spent on a record without a PIN"
    assert to_device(UserRecord("42", pin_hash=hash_pin("42", "7731")), 7, held, ZK10)[0].password == "7731"
    assert hashed == ["7731"]


def test_pin_hashes_are_kept_for_the_latest_pairs_only():
    hashes = PinHashes(size=2)
    hashes.learn({("1", "11"): b"a", ("2", "22"): b"b"})
    assert hashes("1", "11") == b"a"  # ("1", "11") is now the latest
    hashes.learn({("3", "33"): b"c"})
    assert hashes.known([("1", "11"), ("2", "22"), ("3", "33")]) == {("1", "11"): b"a", ("3", "33"): b"c"}
    assert hashes("2", "22") == hash_pin("2", "22")


def test_hashes_made_for_a_write_or_a_pull_are_taken_before_the_cache(monkeypatch):
    hashed = []
    monkeypatch.setattr("gateway.zk.mapping.hash_pin", lambda user_id, pin: hashed.append(pin) or hash_pin(user_id, pin))
    monkeypatch.setattr("gateway.zk.mapping.pin_hash", PinHashes())  # empty: what an eviction leaves
    made = {("42", "7731"): hash_pin("42", "7731")}
    held = User(7, "42", "Old", password="7731")
    assert to_device(UserRecord("42", pin_hash=hash_pin("42", "7731")), 7, held, ZK10, made)[0].password == "7731"
    assert to_server(held, [], ZK10, made).pin_hash == hash_pin("42", "7731")
    assert hashed == [], "no PBKDF2 in place for a pair the caller hashed"


def test_names_are_cut_at_a_character_boundary_within_24_bytes():
    assert cut_utf8("Γιώργος Παπαδόπουλος", 24) == "Γιώργος Παπα"  # 23 bytes: the next letter would make 25
    assert cut_utf8("山田 太郎 山田 太郎 山田 太郎", 24) == "山田 太郎 山田 太"  # 24 bytes exactly
    assert cut_utf8("Ana", 24) == "Ana"
    for text in ("Zoë Ivanova-Lindqvist García", "محمد علي محمد علي محمد علي"):
        cut = cut_utf8(text, 24)
        assert len(cut.encode()) <= 24 and text.startswith(cut)


def test_one_card_goes_the_first_4_byte_csn():
    record = UserRecord("1", cards=(Card(CardType.SMART_CARD, b"s" * 16), Card(CardType.WIEGAND, b"\x01\x02\x03"),
                                    Card(CardType.CSN, bytes.fromhex("0a0b0c0d0e0f10")), Card(CardType.CSN, bytes.fromhex("a1b2c3d4"))))
    assert CardField().number(record) == 0xA1B2C3D4
    assert CardField().number(UserRecord("1", cards=(Card(CardType.WIEGAND, b"\x01\x02\x03"),))) == 0


def test_a_device_set_for_wiegand_cards_carries_them_and_gives_back_the_same_card():
    wiegand = CardField.parse("wiegand:3")
    profile = DeviceProfile(72, None, cards=wiegand)
    record = UserRecord("1", cards=(Card(CardType.CSN, bytes.fromhex("a1b2c3d4")), Card(CardType.WIEGAND, bytes.fromhex("0c3039"))))
    user, _ = to_device(record, 1, None, profile)
    assert user.card == 0x0C3039 and encode_user(user)[35:39] == bytes.fromhex("39300c00"), "facility 12, card 12345: a u32 on the wire"
    assert to_server(user, [], profile).cards == (Card(CardType.WIEGAND, bytes.fromhex("0c3039")),), "the very same card comes back"
    too_big = User(2, "2", card=0x01000000)  # enrolled at the device's keypad: no 3-byte Wiegand card
    with pytest.raises(MessageError, match="does not fit the 3 bytes of this device's WIEGAND cards"):
        to_server(too_big, [], profile)
    for wrong in ("SMART_CARD:4", "CSN:5", "CSN", "wiegand:0"):
        with pytest.raises(ValueError, match="card must be CSN:N or WIEGAND:N"):
            CardField.parse(wrong)


def test_a_record_for_the_device_keeps_what_only_the_device_has():
    held = User(7, "42", "Old", privilege=14, password="1234", card=9, group_id="3")
    record = UserRecord("42", name="Ana Lima", pin_hash=hash_pin("42", "1234"), cards=(Card(CardType.CSN, b"\0\0\0\x05"),),
                        fingerprints=(Fingerprint(1, b"t" * 600, b"", False, "zk10"), Fingerprint(2, b"d" * 500, b"", True, "zk10"),
                                      Fingerprint(3, b"n" * 384, b"m" * 384), Fingerprint(4, b"x" * 500, b"", False, "zk9")))
    user, templates = to_device(record, 7, held, ZK10)
    assert user == User(7, "42", "Ana Lima", privilege=14, password="1234", card=5, group_id="3")
    assert templates == [Template(7, 1, b"t" * 600, 1), Template(7, 2, b"d" * 500, 3)]
    other_pin = to_device(UserRecord("42", pin_hash=hash_pin("42", "9999")), 7, held, ZK10)[0]
    assert other_pin.password == "", "a PIN changed elsewhere: the device's no longer holds"
    fresh = to_device(UserRecord("43"), 8, None, DeviceProfile(72, None))
    assert fresh == (User(8, "43", "", 0, "", 0, ""), [])
    assert encode_user(fresh[0], 72)[39:48] == bytes.fromhex("010000000000000000"), "the SDK's group 1 at byte 39, group time zones"
    old = to_device(UserRecord("43"), 8, None, DeviceProfile(28, None))[0]
    assert encode_user(old, 28)[21:24] == bytes.fromhex("010000"), "group 1, time zone 0"


def test_user_ids_the_device_cannot_hold_are_refused():
    with pytest.raises(Unfit, match="over the 24 bytes"):
        to_device(UserRecord("x" * 25), 1, None, ZK10)
    with pytest.raises(Unfit, match="28-byte"):
        to_device(UserRecord("A-7"), 1, None, DeviceProfile(28, "zk10"))
    with pytest.raises(Unfit, match="28-byte"):
        to_device(UserRecord("007"), 1, None, DeviceProfile(28, "zk10"))  # would come back as "7"
    assert to_device(UserRecord("7", name="Ana Lima Silva"), 1, None, DeviceProfile(28, None))[0].name == "Ana Lima"


def test_a_pulled_record_holds_only_what_a_zk_device_can_hold():
    user = User(3, "42", "Ana", privilege=14, password="1234", card=0xA1B2C3D4, group_id="3")
    record = to_server(user, [Template(3, 0, b"a" * 500, 1), Template(3, 1, b"b" * 500, 0), Template(3, 2, b"c" * 500, 3)], ZK10)
    assert record == UserRecord("42", name="Ana", pin_hash=hash_pin("42", "1234"), cards=(Card(CardType.CSN, bytes.fromhex("a1b2c3d4")),),
                                fingerprints=(Fingerprint(0, b"a" * 500, b"", False, "zk10"), Fingerprint(2, b"c" * 500, b"", True, "zk10")))
    bare = to_server(User(4, "43"), [Template(4, 0, b"a" * 500, 1)], DeviceProfile(72, None))
    assert bare == UserRecord("43"), "no name, PIN, card or groups invented; templates of an unknown algorithm not taken"


def test_the_fingerprint_format_comes_from_the_device_option():
    assert (template_format("10"), template_format(" 9 "), template_format(None), template_format("x")) == ("zk10", "zk9", None, None)


def test_merge_fills_a_zk_finger_slot_beside_a_native_one():
    native = Fingerprint(0, b"n" * 384, b"m" * 384)
    zk = Fingerprint(0, b"z" * 500, b"", False, "zk10")
    merged = merge_vacant_fields(UserRecord("1", fingerprints=(native,)), UserRecord("1", fingerprints=(zk,)))
    assert merged.fingerprints == (native, zk)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.text(max_size=48).filter(is_plain_text), password=st.text("0123456789", max_size=8))
def test_a_pull_after_a_push_never_erases_nor_invents_on_the_server(seed, name, password):
    # Names as the API takes them: plain text (a device's name that is not is refused, test_zk_driver.py).
    server = replace(People(seed).person("1042"), name=name or None)
    user, templates = to_device(server, 1, User(1, "1042", password=password), ZK10)
    pulled = to_server(decode_user(encode_user(user)), templates, ZK10)  # what the device stores and answers
    merged = merge_vacant_fields(server, pulled)
    for field in ("name", "pin_hash", "validity", "security_level", "auth_mode", "disabled", "photo", "access_groups"):
        if getattr(server, field) not in (None, ()):
            assert getattr(merged, field) == getattr(server, field), field
    assert merged.cards == server.cards, "the card that went comes back as the same card"
    assert merged.fingerprints == server.fingerprints and merged.faces == server.faces


def test_the_digest_ignores_the_uid_and_sees_every_field_and_template():
    user = User(1, "42", "Ana", card=5)
    t = [Template(1, 0, b"a" * 10)]
    assert held_digest(user, t) == held_digest(User(9, "42", "Ana", card=5), [Template(9, 0, b"a" * 10)])
    assert held_digest(user, t) != held_digest(User(1, "42", "Ana", card=6), t)
    assert held_digest(user, t) != held_digest(user, [Template(1, 0, b"b" * 10)])
    assert held_digest(user, t) != held_digest(user, [])
