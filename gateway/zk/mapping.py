"""Mapping between the server's user records and what one ZK device holds, both ways.

docs/zk.md section "Gateway mapping" gives the reasons. In short: people are keyed on user_id
(uids are each device's own slots); a pulled record carries only what a ZK device can hold and
leaves every other field vacant, so the vacant-field merge never lets a device erase a server
field; what the device holds that the server has no field for (privilege, group) stays the
device's; fingerprint templates go only to devices of the algorithm that made them.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from twisted.internet import defer

from protocol.errors import MessageError
from protocol.records import (
    MAX_FOREIGN_TEMPLATE,
    MAX_PIN_DIGITS,
    Card,
    CardType,
    Fingerprint,
    UserRecord,
    hash_pin,
    is_clear_pin,
)
from protocol.text import is_plain_text, text_fault
from protocol.zk.records import Template, User

# What each user record size holds (docs/zk.md, "Records").
USER_ID_BYTES = {72: 24, 28: None}  # 28-byte records hold a u32 user id
NAME_BYTES = {72: 24, 28: 8}
# What ZKTeco's SDK writes for a person new to a device: group 1, and the group's time zones
# (not time zones of the person's own). In a 72-byte record that is byte 39 = 1 and bytes 40-47
# zero (so pyzk's text group at 40 reads empty); in a 28-byte record the group byte (21) = 1 and
# the time zone (22-23) 0. docs/zk.md, "A person new to a device".
NEW_PERSON = {72: (bytes(39) + b"\x01" + bytes(32), ""), 28: (bytes(21) + b"\x01" + bytes(6), "1")}
VALID, DURESS = 1, 3  # template flags; 0 is an invalid template


class Unfit(ValueError):
    """A server user this device cannot hold; the message says why, for the monitoring event."""


class PinHashes:
    """Devices' clear passwords as the server's PIN hashes, the pairs seen lately kept. A hash is
    PBKDF2, about 2 ms, asked for at every pull and every write of a person holding a password:
    the driver has the missing ones made off the reactor thread (``known``, then ``hash_pins`` in
    a thread, then ``learn`` on the reactor, which alone touches the cache) and hands them to the
    mapping with its pull or write (``hashes``), so an eviction meanwhile costs nothing; a call
    that misses computes in place. The keys are (user id, clear password), in memory only, as
    the pass that read them holds them: never logged nor stored (a digest of a few digits would
    hide nothing)."""

    def __init__(self, size: int = 4096):
        self._size = size
        self._known: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def __call__(self, user_id: str, pin: str) -> bytes:
        key = (user_id, pin)
        known = self._known.get(key)
        if known is None:
            known = hash_pin(user_id, pin)
            self.learn({key: known})
        else:
            self._known.move_to_end(key)
        return known

    def known(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The hashes of the (user id, password) pairs of ``pairs`` already made (the latest now)."""
        found = {pair: self._known[pair] for pair in pairs if pair in self._known}
        for pair in found:
            self._known.move_to_end(pair)
        return found

    def made(self, pairs: set[tuple[str, str]], in_thread) -> defer.Deferred:
        """The PIN hashes of these (user id, password) pairs, for the pull or write pass that
        keeps them: those not known made by ``hash_pins`` on a thread (``in_thread``, as
        ``deferToThreadPool`` without its first two arguments), then learnt."""
        known = self.known(pairs)
        unhashed = pairs - known.keys()
        if not unhashed:
            return defer.succeed(known)
        return in_thread(hash_pins, unhashed).addCallback(lambda hashed: self.learn(hashed) or {**known, **hashed})

    def learn(self, hashed: Mapping[tuple[str, str], bytes]) -> None:
        self._known.update(hashed)
        for key in hashed:
            self._known.move_to_end(key)
        while len(self._known) > self._size:
            self._known.popitem(last=False)


def hash_pins(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """Each (user id, password) pair's PIN hash: what a thread computes for ``PinHashes.learn``
    (PBKDF2 lets go of the GIL, so the reactor thread runs meanwhile)."""
    return {(user_id, pin): hash_pin(user_id, pin) for user_id, pin in pairs}


pin_hash = PinHashes()
PIN_THREADS = 2  # PBKDF2 lets go of the GIL: two hash at once beside the reactor thread
NO_HASHES: Mapping[tuple[str, str], bytes] = MappingProxyType({})


def held_pin_hash(user_id: str, password: str, hashes: Mapping[tuple[str, str], bytes]) -> bytes:
    """The PIN hash of a device's password: from ``hashes`` (made for this pull or write off the
    reactor thread), else from the cache, else made now."""
    return hashes.get((user_id, password)) or pin_hash(user_id, password)


@dataclass(frozen=True)
class CardField:
    """Which server cards a device's card field (a u32 number with no type) carries: cards of one
    numeric type and length, read as a big-endian number (``[[zk]] card``: "CSN:4", the default,
    a 4-byte card serial number; "WIEGAND:3", a 26-bit Wiegand card's 3 data bytes; 1 to 4 bytes).
    One type and length per device, because the number must come back as the very same card."""

    type: CardType = CardType.CSN
    size: int = 4

    @classmethod
    def parse(cls, text: str) -> "CardField":
        """"TYPE:BYTES"; ValueError naming what is wrong."""
        kind, _, size = text.partition(":")
        if kind.upper() not in NUMERIC_CARDS or not size.isdigit() or not 1 <= int(size) <= 4:
            raise ValueError(f"card must be CSN:N or WIEGAND:N with N from 1 to 4 bytes (the device's field is 32 bits), not {text!r}")
        return cls(CardType[kind.upper()], int(size))

    def number(self, record: UserRecord) -> int:
        """The card a ZK device gets: the record's first card of this type and length; 0: none."""
        for card in record.cards:
            if card.type == self.type and len(card.data) == self.size and any(card.data):
                return int.from_bytes(card.data, "big")
        return 0

    def card(self, number: int) -> tuple[Card, ...]:
        """The card a device's number is, or nothing (0 is no card). ValueError if it does not fit."""
        if not number:
            return ()
        if number >= 1 << (8 * self.size):
            raise ValueError(f"card number {number} does not fit the {self.size} bytes of this device's {self.type.name} cards")
        return (Card(self.type, number.to_bytes(self.size, "big")),)


NUMERIC_CARDS = ("CSN", "WIEGAND")  # card types that are numbers; smart cards and secure credentials are not


@dataclass(frozen=True)
class DeviceProfile:
    """What the mapping needs to know of one device."""

    record_size: int = 72  # 72, or 28 on old firmwares
    template_format: str | None = None  # "zk10"; None when the device did not say its algorithm
    cards: CardField = CardField()  # which server cards its card field carries
    id_width: int | None = None  # the longest user id it holds (option ~PIN2Width); None: the record's field


def id_width(option: str | None) -> int | None:
    """A device's ``~PIN2Width``: how many characters of user id it holds; None when it did not
    say or said something that is no width (then the record's own field is the limit)."""
    text = (option or "").strip()
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) <= USER_ID_BYTES[72] else None


def template_format(fp_version: str | None) -> str | None:
    """The server's name for a device's fingerprint algorithm (option ``~ZKFPVersion``)."""
    version = (fp_version or "").strip()
    return f"zk{version}" if version.isascii() and version.isdigit() else None


def cut_utf8(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8, cut at a character boundary (never half a character)."""
    raw = text.replace("\0", "").encode("utf-8")
    return raw[:limit].decode("utf-8", "ignore")


def refusal(user: User, cards: CardField) -> str | None:
    """Why the server cannot take this device user, or None: its id, name and password must pass
    the rules the API applies to the same fields (protocol.records: plain text, a PIN of digits;
    UserRecord.validate checks the lengths). The reason shows the id escaped, never the password."""
    if not keyable(user):
        return f"user id {ascii(user.user_id)} (uid {user.uid}) is empty or not UTF-8"
    if (fault := text_fault(user.user_id)) is not None:
        return f"user id {ascii(user.user_id)} (uid {user.uid}) {fault}"
    if (fault := text_fault(device_name(user))) is not None:
        return f"the name of user {ascii(user.user_id)} {fault}"
    if user.password and not (is_text(user.password) and is_clear_pin(user.password)):
        return f"the password of user {ascii(user.user_id)} is not a PIN (1 to {MAX_PIN_DIGITS} digits)"
    try:
        cards.card(user.card)
    except ValueError as exc:
        return f"user {ascii(user.user_id)}: {exc}"
    return None


def device_name(user: User) -> str:
    """The name as text; bytes that are not UTF-8 (an old device's code page) read as U+FFFD."""
    return user.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def to_server(user: User, templates: list[Template], profile: DeviceProfile,
              hashes: Mapping[tuple[str, str], bytes] = NO_HASHES) -> UserRecord:
    """The record a pull from this device gives the server; MessageError if it can give none
    (``refusal`` says why). Fields a ZK device cannot hold stay vacant. ``hashes``: PIN hashes
    made for this pull (``held_pin_hash``)."""
    refused = refusal(user, profile.cards)
    if refused is not None:
        raise MessageError(refused)
    pin = held_pin_hash(user.user_id, user.password, hashes) if user.password else None
    return replace(device_record(user, templates, profile), pin_hash=pin).validate()


def pin_pair(user: User) -> tuple[str, str] | None:
    """The (user id, password) whose hash is the server's PIN for this device user; None when it
    holds no password that could be a PIN (none, or bytes that are not UTF-8)."""
    return (user.user_id, user.password) if user.password and is_text(user.password) else None


def device_record(user: User, templates: list[Template], profile: DeviceProfile) -> UserRecord:
    """What the device holds of a person, as a server record, without the PIN (its hash costs
    milliseconds, and a PIN never goes to a device)."""
    fingers = ()
    if profile.template_format is not None:
        fingers = tuple(
            Fingerprint(t.fid, t.template, b"", t.valid == DURESS, profile.template_format)
            for t in sorted(templates, key=lambda t: t.fid)
            if t.valid in (VALID, DURESS) and len(t.template) <= MAX_FOREIGN_TEMPLATE
        )
    return UserRecord(user_id=user.user_id, name=device_name(user) or None, cards=profile.cards.card(user.card), fingerprints=fingers)


def held_view(record: UserRecord, profile: DeviceProfile) -> UserRecord | None:
    """The part of ``record`` a device of this profile holds once the gateway wrote it: what
    reconciliation compares (docs/zk.md, "Reconciliation"). The PIN is left out (it cannot be
    sent; a password set at the device is the device's). None: the device should not hold the
    person (disabled, or a user id it cannot hold)."""
    if record.disabled:
        return None
    try:
        check_fits(record.user_id, profile)
    except Unfit:
        return None
    fmt = profile.template_format
    return UserRecord(
        user_id=record.user_id,
        name=cut_utf8(record.name or "", NAME_BYTES[profile.record_size]) or None,
        cards=profile.cards.card(profile.cards.number(record)),
        fingerprints=tuple(f for f in record.fingerprints if fmt is not None and f.format == fmt),
    )


def holdable_copy(record: UserRecord, profile: DeviceProfile) -> UserRecord:
    """What a device of this profile would give back of ``record`` once written (``held_view``),
    for the merge to tell the device's limits from an edit; a person it cannot hold at all holds
    nothing but the id."""
    return held_view(record, profile) or UserRecord(user_id=record.user_id)


def check_fits(user_id: str, profile: DeviceProfile) -> None:
    """Raise Unfit when this device cannot hold ``user_id`` as it is (it would cut or change it)."""
    if profile.record_size == 28:
        if not (user_id.isascii() and user_id.isdigit() and str(int(user_id)) == user_id and int(user_id) < 2**32):
            raise Unfit(f"user id {user_id!r} is not a number this device's 28-byte records hold")
    elif len(user_id.encode("utf-8")) > USER_ID_BYTES[72]:
        raise Unfit(f"user id {user_id!r} is over the {USER_ID_BYTES[72]} bytes a ZK device holds")
    if profile.id_width is not None and len(user_id.encode("utf-8")) > profile.id_width:
        raise Unfit(f"user id {user_id!r} is over the {profile.id_width} characters this device holds (~PIN2Width); "
                    "not sent: a device cuts a longer id into another person's")


def to_device(record: UserRecord, uid: int, held: User | None, profile: DeviceProfile,
              hashes: Mapping[tuple[str, str], bytes] = NO_HASHES) -> tuple[User, list[Template]]:
    """The user and templates to write for ``record`` in slot ``uid``. ``held`` is the device's
    current copy: the result is that copy with the mapped fields (user id, name, password, card)
    changed, so its privilege, group, time zones and every byte we do not map stay as the device
    holds them (read-modify-write); a person new to the device gets the SDK's defaults. Raises Unfit.
    ``hashes``: PIN hashes made for this write (``held_pin_hash``)."""
    user_id = record.user_id
    check_fits(user_id, profile)
    password = ""
    if record.pin_hash is not None and held is not None and pin_pair(held) is not None \
            and record.pin_hash == held_pin_hash(user_id, held.password, hashes):
        password = held.password  # the PIN the server has, set at this device: keep it
    if held is None:
        blank, group_id = NEW_PERSON[profile.record_size]
        held = User(uid, user_id, group_id=group_id, record=blank)
    user = replace(held, uid=uid, user_id=user_id, name=cut_utf8(record.name or "", NAME_BYTES[profile.record_size]),
                   password=password, card=profile.cards.number(record))
    fmt = profile.template_format
    templates = [Template(uid, f.index, f.template1, DURESS if f.duress else VALID) for f in record.fingerprints if fmt and f.format == fmt]
    return user, templates


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


def keyable_text(user_id: str) -> bool:
    """A user id the server could store and show as it is: UTF-8 and plain text."""
    return bool(user_id) and is_text(user_id) and is_plain_text(user_id)
