"""Mapping between the server's user records and what one ZK device holds, both ways.

docs/zk.md section "Gateway mapping" gives the reasons. In short: people are keyed on user_id
(uids are each device's own slots); a pulled record carries only what a ZK device can hold and
leaves every other field vacant, so the vacant-field merge never lets a device erase a server
field; what the device holds that the server has no field for (privilege, group) stays the
device's; fingerprint templates go only to devices of the algorithm that made them.
"""

import functools
import hashlib
from dataclasses import dataclass

from protocol.errors import MessageError
from protocol.records import MAX_FOREIGN_TEMPLATE, Card, CardType, Fingerprint, UserRecord, hash_pin
from protocol.zk.records import Template, User

# What each user record size holds (docs/zk.md, "Records").
USER_ID_BYTES = {72: 24, 28: None}  # 28-byte records hold a u32 user id
NAME_BYTES = {72: 24, 28: 8}
DEFAULT_GROUP = "1"  # every ZK device's default group: it says nothing about a person
# A device's clear password as the server's PIN hash (PBKDF2, milliseconds each), asked for at
# every pull and every write of a person holding one: computed once per user id and password.
pin_hash = functools.lru_cache(maxsize=4096)(hash_pin)
VALID, DURESS = 1, 3  # template flags; 0 is an invalid template


class Unfit(ValueError):
    """A server user this device cannot hold; the message says why, for the monitoring event."""


@dataclass(frozen=True)
class DeviceProfile:
    """What the mapping needs to know of one device."""

    record_size: int = 72  # 72, or 28 on old firmwares
    template_format: str | None = None  # "zk10"; None when the device did not say its algorithm


def template_format(fp_version: str | None) -> str | None:
    """The server's name for a device's fingerprint algorithm (option ``~ZKFPVersion``)."""
    version = (fp_version or "").strip()
    return f"zk{version}" if version.isascii() and version.isdigit() else None


def cut_utf8(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8, cut at a character boundary (never half a character)."""
    raw = text.replace("\0", "").encode("utf-8")
    return raw[:limit].decode("utf-8", "ignore")


def card_number(record: UserRecord) -> int:
    """The one card a ZK device gets: the record's first CSN of exactly 4 bytes (a u32, read big-
    endian). Other cards are not sent: a ZK card number has no type, and what is pulled back must
    be the very same card, or the union would give the person a second one."""
    for card in record.cards:
        if card.type == CardType.CSN and len(card.data) == 4 and any(card.data):
            return int.from_bytes(card.data, "big")
    return 0


def device_card(number: int) -> tuple[Card, ...]:
    return (Card(CardType.CSN, number.to_bytes(4, "big")),) if number else ()


def to_server(user: User, templates: list[Template], profile: DeviceProfile) -> UserRecord:
    """The record a pull from this device gives the server; MessageError if it can give none
    (a user id that is not UTF-8, for one). Fields a ZK device cannot hold stay vacant."""
    if not keyable(user):
        raise MessageError(f"user id {user.user_id!r} (uid {user.uid}) is empty or not UTF-8")
    fingers = ()
    if profile.template_format is not None:
        fingers = tuple(
            Fingerprint(t.fid, t.template, b"", t.valid == DURESS, profile.template_format)
            for t in sorted(templates, key=lambda t: t.fid)
            if t.valid in (VALID, DURESS) and len(t.template) <= MAX_FOREIGN_TEMPLATE
        )
    name = user.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return UserRecord(
        user_id=user.user_id,
        name=name or None,
        pin_hash=pin_hash(user.user_id, user.password) if user.password else None,
        cards=device_card(user.card),
        fingerprints=fingers,
    ).validate()


def to_device(record: UserRecord, uid: int, held: User | None, profile: DeviceProfile) -> tuple[User, list[Template]]:
    """The user and templates to write for ``record`` in slot ``uid``; ``held`` is the device's
    current copy (its privilege, group and password are the device's to keep). Raises Unfit."""
    user_id = record.user_id
    if profile.record_size == 28:
        if not (user_id.isascii() and user_id.isdigit() and str(int(user_id)) == user_id and int(user_id) < 2**32):
            raise Unfit(f"user id {user_id!r} is not a number this device's 28-byte records hold")
    elif len(user_id.encode("utf-8")) > USER_ID_BYTES[72]:
        raise Unfit(f"user id {user_id!r} is over the {USER_ID_BYTES[72]} bytes a ZK device holds")
    password = ""
    if held is not None and held.password and record.pin_hash == pin_hash(user_id, held.password):
        password = held.password  # the PIN the server has, set at this device: keep it
    user = User(
        uid=uid,
        user_id=user_id,
        name=cut_utf8(record.name or "", NAME_BYTES[profile.record_size]),
        privilege=held.privilege if held is not None else 0,
        password=password,
        card=card_number(record),
        group_id=held.group_id if held is not None else DEFAULT_GROUP,
    )
    fmt = profile.template_format
    templates = [Template(uid, f.index, f.template1, DURESS if f.duress else VALID) for f in record.fingerprints if fmt and f.format == fmt]
    return user, templates


def held_copy(record: UserRecord, profile: DeviceProfile) -> UserRecord:
    """What a pull gives back of ``record`` once written to this device: its name cut to the
    device's bytes, the one card it gets, templates of its own algorithm; nothing else (a PIN
    set on the server cannot go to a device, which holds only clear passwords)."""
    fmt = profile.template_format
    return UserRecord(
        user_id=record.user_id,
        name=cut_utf8(record.name or "", NAME_BYTES[profile.record_size]) or None,
        cards=device_card(card_number(record)),
        fingerprints=tuple(f for f in record.fingerprints if fmt and f.format == fmt),
    )


def held_digest(user: User, templates: list[Template]) -> bytes:
    """8 bytes that change whenever the device's copy of a person changes: every field but the
    uid (a slot, not the person) and every template."""
    h = hashlib.sha256()
    for value in (user.user_id, user.name, user.privilege, user.password, user.card, user.group_id):
        h.update(repr(value).encode("utf-8", "surrogateescape") + b"\0")
    for t in sorted(templates, key=lambda t: t.fid):
        h.update(bytes((t.fid, t.valid & 0xFF)) + len(t.template).to_bytes(4, "little") + t.template)
    return h.digest()[:8]


def is_text(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 on the device (surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def keyable(user: User) -> bool:
    """A device user the server can key on: a non-empty UTF-8 user id."""
    return bool(user.user_id) and is_text(user.user_id)
