"""Faces and photos of PUSH devices as the server holds them, both ways (docs/zk-push.md, "Faces and photos").

A face template works only with the algorithm that made it: a ZKTeco face is a BIODATA line of a
Type (2 near-infrared, 9 visible light) and a MajorVer, and the server keeps it as a ``Face`` of
format ``zkface<Type>v<MajorVer>`` (protocol.zk.push.lines.face_algorithm). A device gets the faces
of its own algorithms only; faces of another algorithm are never sent to it, and what it holds is
never deleted for them (nor for a face the server has not: the server cannot tell a face removed on
purpose from one too large to take). The photo is the person's USERPIC, else the BIOPHOTO of a
visible-light enrolment; it is sent as USERPIC.

A device's copy of a person carries its faces and photo beside its fingerprints (in the same
per-person dict, keyed by ``FaceLine.key`` and ``PhotoLine.key``, where fingers are keyed by
number), and its digest covers them: ``copy_digest``, which is the fingerprint-only digest for a
person with neither (so the digests kept before faces were synced stay valid).
"""

import hashlib
from dataclasses import dataclass

from protocol.records import FOREIGN_FACE_SLOTS, MAX_FACE_TEMPLATE, MAX_FOREIGN_FACE_BYTES, MAX_FOREIGN_FACES, MAX_PHOTO, Face, UserRecord
from protocol.zk.push.lines import FACE_TYPES, FaceLine, PhotoLine, face_algorithm


@dataclass(frozen=True)
class FaceAlgorithm:
    """One face algorithm of a device: what its BIODATA lines say (Type, MajorVer, MinorVer)."""

    type: int
    major: str
    minor: str = "0"

    @property
    def name(self) -> str:
        return face_algorithm(self.type, self.major)


def algorithms_in_options(options: dict[str, str]) -> list[FaceAlgorithm]:
    """The face algorithms a device's ``table=options`` names: ``MultiBioDataSupport`` says which
    BIODATA Types it has (a flag per Type, ``:``-separated, Type 0 first) and ``MultiBioVersion``
    their versions (``0:10.0:7.0:0:0:0:0:0:0:58.1``)."""
    support = options.get("MultiBioDataSupport", "").split(":")
    versions = options.get("MultiBioVersion", "").split(":")
    found = []
    for type_ in sorted(FACE_TYPES):
        if type_ < min(len(support), len(versions)) and support[type_].strip() == "1":
            major, _, minor = versions[type_].strip().partition(".")
            if major.isascii() and major.isdigit() and major != "0":
                found.append(FaceAlgorithm(type_, major, minor if minor.isdigit() else "0"))
    return found


def pictures(pieces: dict) -> dict:
    """The faces and photos among a person's pieces (fingers are keyed by number)."""
    return {key: piece for key, piece in pieces.items() if isinstance(piece, (FaceLine, PhotoLine))}


def copy_digest(base: bytes, pieces: dict) -> bytes:
    """The digest of a device's copy of a person: ``base`` (its user and fingers) and its faces and
    USERPIC; ``base`` itself when it holds neither. A BIOPHOTO is left out: a listing does not ask
    for it (the USERPIC the gateway writes is the photo it compares)."""
    held = {k: p for k, p in pictures(pieces).items() if not (isinstance(p, PhotoLine) and p.kind == "BIOPHOTO")}
    if not held:
        return base
    h = hashlib.sha256(base)
    for key in sorted(held, key=repr):
        piece = held[key]
        data = piece.template if isinstance(piece, FaceLine) else piece.content
        h.update(repr(key).encode() + repr(getattr(piece, "algorithm", "")).encode() + len(data).to_bytes(4, "little") + data)
    return h.digest()[:8]


def server_faces(pieces: dict) -> tuple[tuple[Face, ...], bytes | None, list[str]]:
    """The faces and photo a pull takes from a device's copy, and why any was left (too large, too
    many): those are refused for this device, never cut."""
    faces, refused, total = [], [], 0
    lines = sorted((p for p in pieces.values() if isinstance(p, FaceLine) and p.valid), key=lambda f: (f.algorithm, f.index))
    for face in lines:
        if len(face.template) > MAX_FACE_TEMPLATE:
            refused.append(f"face {face.algorithm} {face.index} of {len(face.template)} bytes (at most {MAX_FACE_TEMPLATE})")
        elif face.index >= FOREIGN_FACE_SLOTS:
            refused.append(f"face {face.algorithm} {face.index} (templates 0 to {FOREIGN_FACE_SLOTS - 1} are kept)")
        elif len(faces) >= MAX_FOREIGN_FACES or total + len(face.template) > MAX_FOREIGN_FACE_BYTES:
            refused.append(f"face {face.algorithm} {face.index} (a record holds {MAX_FOREIGN_FACES} faces, {MAX_FOREIGN_FACE_BYTES} bytes)")
        else:
            faces.append(Face(face.index, face.template, face.algorithm))
            total += len(face.template)
    photo = next((p.content for kind in ("USERPIC", "BIOPHOTO") for p in pieces.values() if isinstance(p, PhotoLine) and p.kind == kind), None)
    if photo is not None and len(photo) > MAX_PHOTO:
        refused.append(f"photo of {len(photo)} bytes (at most {MAX_PHOTO})")
        photo = None
    return tuple(faces), photo, refused


def planned_pictures(record: UserRecord, held: dict, algorithms: list[FaceAlgorithm]) -> tuple[dict, list]:
    """What a device holds of ``record``'s faces and photo once written, and the lines to send for
    it: its held pictures, with the server's faces of its own algorithms and the server's photo
    written over them (those that differ)."""
    after = pictures(held)
    sent: list = []
    mine = {a.name: a for a in algorithms}
    for face in record.faces:
        algorithm = mine.get(face.format or "")
        if algorithm is not None:
            line = FaceLine(record.user_id, algorithm.type, face.index, face.template, algorithm.major, algorithm.minor)
            if getattr(after.get(line.key), "template", None) != face.template:
                after[line.key] = line
                sent.append(line)
    if record.photo is not None:
        photo = PhotoLine(record.user_id, record.photo)
        if getattr(after.get(photo.key), "content", None) != record.photo:
            after[photo.key] = photo
            sent.append(photo)
    return after, sent


def holdable_pictures(record: UserRecord, algorithms: list[FaceAlgorithm]) -> dict:
    """The faces and photo of ``record`` a device of these algorithms holds once written."""
    names = {a.name for a in algorithms}
    return dict(faces=tuple(f for f in record.faces if f.format in names), photo=record.photo)
