"""The user record as terminals hold it, and its wire declaration.

Every field can be vacant (``None``, an empty tuple, or a missing slot), because the server's
merge fills exactly the vacant fields; see docs/protocol.md section "User record".
"""

import hashlib
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from construct import (
    Array,
    Bytes,
    Flag,
    FlagsEnum,
    GreedyBytes,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    Struct,
    this,
)

from protocol.compiling import CompilableAdapter, LengthChecked
from protocol.errors import MessageError

MAX_USER_ID_BYTES = 32
MAX_NAME_CHARS = 48
PIN_HASH_SIZE = 32
MAX_ACCESS_GROUPS = 16
MAX_CARDS = 8
MAX_CARD_DATA = 32
FINGER_SLOTS = 10
FINGER_TEMPLATE_SIZE = 384
MAX_FORMAT_BYTES = 16
MAX_FOREIGN_TEMPLATE = 2048  # a ZKFinger 10 template is at most about 1.6 kB
MAX_FOREIGN_FINGERPRINTS = 20  # two other algorithms' ten slots
FACE_SLOTS = 5
MAX_FACE_TEMPLATE = 8 * 1024
FOREIGN_FACE_SLOTS = 16  # a ZKTeco near-infrared face is 12 templates (BIODATA Index 0-11)
MAX_FOREIGN_FACES = 24  # two algorithms' twelve
MAX_FOREIGN_FACE_BYTES = 96 * 1024  # all foreign face templates of a record together: a record stays under a frame
MAX_PHOTO = 16 * 1024
PIN_HASH_ITERATIONS = 4096
MAX_PIN_DIGITS = 16
PIN_PATTERN = "^[0-9]*$"  # a clear PIN, as a person types it: digits
_PIN = re.compile(PIN_PATTERN)


def is_clear_pin(text: str) -> bool:
    """A clear PIN the API would take: 1 to 16 digits."""
    return 0 < len(text) <= MAX_PIN_DIGITS and _PIN.match(text) is not None


class CardType(IntEnum):
    CSN = 1
    WIEGAND = 2
    SMART_CARD = 3
    SECURE_CREDENTIAL = 4


@dataclass(frozen=True, slots=True)
class Card:
    type: CardType
    data: bytes

    @property
    def card_id(self) -> tuple[int, bytes]:
        """What identifies a card for the merge: its type and its data."""
        return (int(self.type), self.data)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One finger. ``format`` None: this protocol's two 384-byte templates. Otherwise the
    algorithm of another terminal family (``"zk10"``: ZKTeco, ``~ZKFPVersion`` 10), whose one
    template is ``template1`` (``template2`` empty): only terminals of that algorithm can use it,
    so a slot is a finger *and* a format."""

    index: int
    template1: bytes
    template2: bytes
    duress: bool = False
    format: str | None = None

    @property
    def slot(self) -> tuple[str, int]:
        return (self.format or "", self.index)


@dataclass(frozen=True, slots=True)
class Face:
    """One face template. ``format`` None: this protocol's own (slots 0-4). Otherwise another
    family's algorithm (``"zkface9v58"``: ZKTeco BIODATA Type 9, MajorVer 58), usable only by
    terminals of that algorithm; as for fingerprints, a slot is an index *and* a format."""

    index: int
    template: bytes
    format: str | None = None

    @property
    def slot(self) -> tuple[str, int]:
        return (self.format or "", self.index)


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    name: str | None = None
    pin_hash: bytes | None = None
    validity: tuple[int, int] | None = None  # (start, end), seconds since the epoch
    security_level: int | None = None
    auth_mode: int | None = None
    disabled: bool | None = None
    access_groups: tuple[int, ...] = ()
    cards: tuple[Card, ...] = ()
    fingerprints: tuple[Fingerprint, ...] = ()
    faces: tuple[Face, ...] = ()
    photo: bytes | None = None

    def __post_init__(self) -> None:
        # The canonical order (docs/protocol.md, "Canonical order"): the digest is over the
        # encoding, so two holders of one record must list its parts alike, whatever order
        # they were given or received in.
        object.__setattr__(self, "access_groups", tuple(sorted(self.access_groups)))
        object.__setattr__(self, "cards", tuple(sorted(self.cards, key=_card_order)))
        object.__setattr__(self, "fingerprints", tuple(sorted(self.fingerprints, key=_slot_order)))
        object.__setattr__(self, "faces", tuple(sorted(self.faces, key=_slot_order)))

    def validate(self) -> "UserRecord":
        """Raise ``MessageError`` naming the first limit this record breaks; return it otherwise."""
        problems = []
        uid = self.user_id.encode("utf-8")
        if not uid or len(uid) > MAX_USER_ID_BYTES:
            problems.append(f"user id must be 1 to {MAX_USER_ID_BYTES} bytes, got {len(uid)}")
        if self.name is not None and len(self.name) > MAX_NAME_CHARS:
            problems.append(f"name longer than {MAX_NAME_CHARS} characters")
        if self.pin_hash is not None and len(self.pin_hash) != PIN_HASH_SIZE:
            problems.append(f"PIN hash must be {PIN_HASH_SIZE} bytes")
        if self.validity is not None and self.validity[0] > self.validity[1]:
            problems.append("validity period ends before it starts")
        if len(self.access_groups) > MAX_ACCESS_GROUPS:
            problems.append(f"more than {MAX_ACCESS_GROUPS} access groups")
        if len(set(self.access_groups)) != len(self.access_groups):
            problems.append("access group listed twice")
        if len(self.cards) > MAX_CARDS:
            problems.append(f"more than {MAX_CARDS} cards")
        if len({card.card_id for card in self.cards}) != len(self.cards):
            problems.append("card listed twice")
        for card in self.cards:
            if not 0 < len(card.data) <= MAX_CARD_DATA:
                problems.append(f"card data must be 1 to {MAX_CARD_DATA} bytes")
        for fmt in sorted({f.format or "" for f in self.fingerprints}):
            problems += _slot_problems("finger", [f.index for f in self.fingerprints if (f.format or "") == fmt], FINGER_SLOTS)
        foreign = [f for f in self.fingerprints if f.format is not None]
        if len(foreign) > MAX_FOREIGN_FINGERPRINTS:
            problems.append(f"more than {MAX_FOREIGN_FINGERPRINTS} fingerprints of other formats")
        for finger in self.fingerprints:
            if finger.format is None:
                if len(finger.template1) != FINGER_TEMPLATE_SIZE or len(finger.template2) != FINGER_TEMPLATE_SIZE:
                    problems.append(f"fingerprint templates must be {FINGER_TEMPLATE_SIZE} bytes each")
            elif not 0 < len(finger.format.encode("utf-8")) <= MAX_FORMAT_BYTES:
                problems.append(f"fingerprint format must be 1 to {MAX_FORMAT_BYTES} bytes")
            elif not 0 < len(finger.template1) <= MAX_FOREIGN_TEMPLATE or finger.template2:
                problems.append(f"a {finger.format} fingerprint is one template of 1 to {MAX_FOREIGN_TEMPLATE} bytes")
        for fmt in sorted({f.format or "" for f in self.faces}):
            problems += _slot_problems("face", [f.index for f in self.faces if (f.format or "") == fmt],
                                       FOREIGN_FACE_SLOTS if fmt else FACE_SLOTS)
        foreign_faces = [f for f in self.faces if f.format is not None]
        if len(foreign_faces) > MAX_FOREIGN_FACES:
            problems.append(f"more than {MAX_FOREIGN_FACES} faces of other formats")
        if sum(len(f.template) for f in foreign_faces) > MAX_FOREIGN_FACE_BYTES:
            problems.append(f"faces of other formats over {MAX_FOREIGN_FACE_BYTES} bytes together")
        for face in self.faces:
            if face.format is not None and not 0 < len(face.format.encode("utf-8")) <= MAX_FORMAT_BYTES:
                problems.append(f"face format must be 1 to {MAX_FORMAT_BYTES} bytes")
            if not 0 < len(face.template) <= MAX_FACE_TEMPLATE:
                problems.append(f"face template must be 1 to {MAX_FACE_TEMPLATE} bytes")
        if self.photo is not None and len(self.photo) > MAX_PHOTO:
            problems.append(f"photo larger than {MAX_PHOTO} bytes")
        if problems:
            raise MessageError(f"user {self.user_id!r}: " + "; ".join(problems))
        return self

    def digest(self) -> bytes:
        """8 bytes that change whenever any field changes: what LIST_USERS reports."""
        return record_digest(UserRecordWire.build(self))


def _card_order(card: Card) -> tuple[int, bytes]:
    return card.card_id


def _slot_order(item: "Fingerprint | Face") -> Any:
    return item.slot  # a fingerprint's format, then its finger: the order the encoding reads back


def _slot_problems(kind: str, indexes: list[int], slots: int) -> list[str]:
    problems = []
    if any(not 0 <= i < slots for i in indexes):
        problems.append(f"{kind} slot index must be 0 to {slots - 1}")
    if len(set(indexes)) != len(indexes):
        problems.append(f"{kind} slot used twice")
    return problems


def hash_pin(user_id: str, pin: str) -> bytes:
    """The 32-byte PIN hash terminals store and send; the clear PIN never leaves the keypad."""
    return hashlib.pbkdf2_hmac("sha256", pin.encode(), b"terminal-pin:" + user_id.encode(), PIN_HASH_ITERATIONS)


UserId = LengthChecked(PascalString(Int8ub, "utf8"))

CardWire = Struct("type" / Int8ub, "data" / LengthChecked(Prefixed(Int8ub, GreedyBytes)))
FingerprintWire = Struct(
    "index" / Int8ub,
    "duress" / Flag,
    "template1" / LengthChecked(Bytes(FINGER_TEMPLATE_SIZE)),
    "template2" / LengthChecked(Bytes(FINGER_TEMPLATE_SIZE)),
)
FaceWire = Struct("index" / Int8ub, "template" / LengthChecked(Prefixed(Int16ub, GreedyBytes)))
# Fingerprints of another family's algorithm, after the photo (presence bit 7), so records
# without them are the same bytes as before the format existed.
ForeignFingerprintWire = Struct(
    "index" / Int8ub,
    "duress" / Flag,
    "format" / LengthChecked(PascalString(Int8ub, "utf8")),
    "template" / LengthChecked(Prefixed(Int16ub, GreedyBytes)),
)

ForeignFaceWire = Struct(
    "index" / Int8ub,
    "format" / LengthChecked(PascalString(Int8ub, "utf8")),
    "template" / LengthChecked(Prefixed(Int16ub, GreedyBytes)),
)
# After the photo, when presence bit 7 is set: the foreign fingerprints' count byte, whose top bit
# says that an extension byte follows them (bit 0: foreign faces). A record without foreign faces
# is the same bytes as before they existed; an old decoder reads a record with them as more than
# 127 foreign fingerprints and refuses it (docs/protocol.md, "User record").
MORE = 0x80
FOREIGN_FACES = 0x01
ForeignWire = Struct(
    "head" / Int8ub,
    "fingerprints" / Array(this.head & 0x7F, ForeignFingerprintWire),
    "extension" / If(this.head >= MORE, Struct(
        "flags" / Int8ub,
        "faces" / If(this.flags & FOREIGN_FACES, PrefixedArray(Int8ub, ForeignFaceWire)),
    )),
)

_Present = FlagsEnum(Int8ub, name=1, pin=2, validity=4, security_level=8, auth_mode=16, disabled=32, photo=64, foreign_fingerprints=128)

UserRecordStruct = Struct(
    "user_id" / UserId,
    "present" / _Present,
    "name" / If(this.present.name, LengthChecked(PascalString(Int8ub, "utf8"))),
    "pin_hash" / If(this.present.pin, LengthChecked(Bytes(PIN_HASH_SIZE))),
    "valid_from" / If(this.present.validity, Int32ub),
    "valid_to" / If(this.present.validity, Int32ub),
    "security_level" / If(this.present.security_level, Int8ub),
    "auth_mode" / If(this.present.auth_mode, Int8ub),
    "disabled" / If(this.present.disabled, Flag),
    "access_groups" / PrefixedArray(Int8ub, Int32ub),
    "cards" / PrefixedArray(Int8ub, CardWire),
    "fingerprints" / PrefixedArray(Int8ub, FingerprintWire),
    "faces" / PrefixedArray(Int8ub, FaceWire),
    "photo" / If(this.present.photo, LengthChecked(Prefixed(Int16ub, GreedyBytes))),
    "foreign" / If(this.present.foreign_fingerprints, ForeignWire),
)


class _UserRecordAdapter(CompilableAdapter):
    # Item access, not attribute access: Container.__getattr__ costs ten times as much.
    def _decode(self, obj: Any, context: Any, path: str) -> UserRecord:
        try:
            cards = tuple(Card(CardType(c["type"]), c["data"]) for c in obj["cards"])
        except ValueError as exc:
            raise MessageError(f"user {obj['user_id']!r}: unknown card type ({exc})") from None
        foreign = obj["foreign"] or _NO_FOREIGN
        extension = foreign["extension"] or _NO_EXTENSION
        if extension["flags"] & ~FOREIGN_FACES:
            raise MessageError(f"user {obj['user_id']!r}: unknown record extension bits {extension['flags']:#04x}")
        if foreign["extension"] is not None and not extension["faces"]:
            # One encoding per record: no foreign faces is no extension, never an empty one (a digest is of the bytes).
            raise MessageError(f"user {obj['user_id']!r}: a record extension that extends nothing (no flags, or no foreign faces)")
        return UserRecord(
            user_id=obj["user_id"],
            name=obj["name"],
            pin_hash=obj["pin_hash"],
            validity=(obj["valid_from"], obj["valid_to"]) if obj["present"]["validity"] else None,
            security_level=obj["security_level"],
            auth_mode=obj["auth_mode"],
            disabled=obj["disabled"],
            access_groups=tuple(obj["access_groups"]),
            cards=cards,
            fingerprints=tuple(
                Fingerprint(f["index"], f["template1"], f["template2"], f["duress"]) for f in obj["fingerprints"]
            ) + tuple(
                Fingerprint(f["index"], f["template"], b"", f["duress"], f["format"]) for f in foreign["fingerprints"]
            ),
            faces=tuple(Face(f["index"], f["template"]) for f in obj["faces"])
            + tuple(Face(f["index"], f["template"], f["format"]) for f in extension["faces"] or ()),
            photo=obj["photo"],
        ).validate()

    def _encode(self, rec: UserRecord, context: Any, path: str) -> dict[str, Any]:
        rec.validate()
        foreign = [f for f in rec.fingerprints if f.format is not None]
        foreign_faces = [f for f in rec.faces if f.format is not None]
        return dict(
            user_id=rec.user_id,
            present=dict(
                name=rec.name is not None,
                pin=rec.pin_hash is not None,
                validity=rec.validity is not None,
                security_level=rec.security_level is not None,
                auth_mode=rec.auth_mode is not None,
                disabled=rec.disabled is not None,
                photo=rec.photo is not None,
                foreign_fingerprints=bool(foreign or foreign_faces),
            ),
            name=rec.name,
            pin_hash=rec.pin_hash,
            valid_from=rec.validity[0] if rec.validity else None,
            valid_to=rec.validity[1] if rec.validity else None,
            security_level=rec.security_level,
            auth_mode=rec.auth_mode,
            disabled=rec.disabled,
            access_groups=list(rec.access_groups),
            cards=[dict(type=int(c.type), data=c.data) for c in rec.cards],
            fingerprints=[
                dict(index=f.index, duress=f.duress, template1=f.template1, template2=f.template2)
                for f in rec.fingerprints if f.format is None
            ],
            faces=[dict(index=f.index, template=f.template) for f in rec.faces if f.format is None],
            photo=rec.photo,
            foreign=dict(
                head=len(foreign) | (MORE if foreign_faces else 0),
                fingerprints=[dict(index=f.index, duress=f.duress, format=f.format, template=f.template1) for f in foreign],
                extension=dict(flags=FOREIGN_FACES, faces=[dict(index=f.index, format=f.format, template=f.template) for f in foreign_faces]),
            ),
        )


_NO_FOREIGN: dict[str, Any] = dict(fingerprints=(), extension=None)
_NO_EXTENSION: dict[str, Any] = dict(flags=0, faces=None)
UserRecordWire = _UserRecordAdapter(UserRecordStruct).compile()


def record_digest(wire: bytes) -> bytes:
    """The digest of a record in its wire encoding (docs/protocol.md, "Digest"): the first 8
    bytes of its SHA-256. The gateway keeps records encoded, so it digests them without decoding."""
    return hashlib.sha256(wire).digest()[:8]
