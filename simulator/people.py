"""People: seeded, realistic user records for simulated terminals.

Names come in several scripts, PINs are hashed as terminals do, every card type appears
(smart cards and secure credentials included), fingerprints carry two 384-byte templates and
faces a few kB, as real enrolments do. The same seed gives the same people.
"""

import random
from dataclasses import dataclass

from protocol.records import (
    FINGER_SLOTS,
    FINGER_TEMPLATE_SIZE,
    Card,
    CardType,
    Face,
    Fingerprint,
    UserRecord,
    hash_pin,
)

GIVEN = ["Anna", "Jonas", "Mei", "Olusegun", "Priya", "Mateo", "Élodie", "Søren", "Zoë", "Ahmad"]
FAMILY = ["Novak", "Schmidt", "García", "Okafor", "Ivanova", "Kowalski", "Lindqvist", "Moreau", "Silva", "Tanaka"]
WHOLE_NAMES = ["山田 太郎", "李 小龙", "Иван Петров", "Γιώργος Παπαδόπουλος", "محمد علي", "김 민준", "שרה כהן", "Nguyễn Văn An"]


@dataclass
class Mix:
    """What an enrolment holds; the load test sets these to shape record sizes."""

    fingers: tuple[int, int] = (1, 2)  # fewest and most fingerprints per person
    face_chance: float = 0.3
    face_bytes: int = 2048
    photo_chance: float = 0.1
    photo_bytes: int = 8 * 1024
    cards: tuple[int, int] = (1, 2)
    groups: tuple[int, ...] = (1, 2, 3, 4)


# Named mixes for the fleet's ``--mix``: records of about 1 kB, 2.5 kB (a typical site) and 10 kB.
MIXES = {
    "light": Mix(fingers=(1, 1), face_chance=0.0, photo_chance=0.0, cards=(1, 1)),
    "typical": Mix(),
    "heavy": Mix(fingers=(2, 4), face_chance=1.0, face_bytes=4 * 1024, photo_chance=0.5, cards=(2, 4)),
}


class People:
    def __init__(self, seed: int = 0, mix: Mix | None = None):
        self.rng = random.Random(seed)
        self.mix = mix or Mix()

    def name(self) -> str:
        if self.rng.random() < 0.25:
            return self.rng.choice(WHOLE_NAMES)
        return f"{self.rng.choice(GIVEN)} {self.rng.choice(FAMILY)}"

    def card(self, card_type: CardType | None = None) -> Card:
        card_type = card_type or self.rng.choice(list(CardType))
        size = {CardType.CSN: 4, CardType.WIEGAND: 3, CardType.SMART_CARD: 16, CardType.SECURE_CREDENTIAL: 32}[card_type]
        return Card(card_type, self.rng.randbytes(size))

    def fingerprint(self, index: int) -> Fingerprint:
        return Fingerprint(
            index, self.rng.randbytes(FINGER_TEMPLATE_SIZE), self.rng.randbytes(FINGER_TEMPLATE_SIZE), self.rng.random() < 0.05
        )

    def person(self, user_id: str) -> UserRecord:
        """A complete enrolment, as an operator makes at a terminal."""
        mix, rng = self.mix, self.rng
        fingers = sorted(rng.sample(range(FINGER_SLOTS), rng.randint(*mix.fingers)))
        return UserRecord(
            user_id=user_id,
            name=self.name(),
            pin_hash=hash_pin(user_id, f"{rng.randrange(10_000):04d}"),
            security_level=rng.randint(0, 3),
            auth_mode=rng.randint(0, 7),
            disabled=False,
            access_groups=tuple(sorted(rng.sample(mix.groups, rng.randint(1, min(2, len(mix.groups)))))),
            cards=tuple(self.card() for _ in range(rng.randint(*mix.cards))),
            fingerprints=tuple(self.fingerprint(i) for i in fingers),
            faces=(Face(0, rng.randbytes(mix.face_bytes)),) if rng.random() < mix.face_chance else (),
            photo=rng.randbytes(mix.photo_bytes) if rng.random() < mix.photo_chance else None,
        ).validate()

    def edit(self, record: UserRecord) -> dict:
        """Fields an operator changes when editing someone at a terminal."""
        choice = self.rng.randrange(3)
        if choice == 0:
            return dict(name=self.name())
        if choice == 1 and len(record.cards) < 8:
            return dict(cards=record.cards + (self.card(),))
        free = [i for i in range(FINGER_SLOTS) if i not in {f.index for f in record.fingerprints}]
        if free:
            return dict(fingerprints=tuple(sorted(record.fingerprints + (self.fingerprint(free[0]),), key=lambda f: f.index)))
        return dict(name=self.name())
