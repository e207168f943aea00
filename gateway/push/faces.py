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


@dataclass(frozen=True)
class Listed:
    """What of faces and photos a device's listing returns: only that is sent to it and compared (its
    copy's digest covers only that), so a listing never finds missing what the gateway just wrote,
    which would be taken for an edit at the device and written again at every listing. Faces of its
    algorithms (one per BIODATA Type); the USERPIC when it has a face algorithm (a listing asks
    ``DATA QUERY USERPIC`` of face devices only) and did not refuse that query."""

    algorithms: tuple[FaceAlgorithm, ...] = ()
    photos: bool = False


@dataclass(frozen=True)
class Summary:
    """A face or photo beyond what a record holds (a template over MAX_FACE_TEMPLATE, an index past
    FOREIGN_FACE_SLOTS, a photo over MAX_PHOTO), as memory keeps it: never taken, so not its bytes
    (a device's people would cost up to ~190 kB each) but enough to compare copies and to say why."""

    key: tuple
    label: str  # "face zkface9v58 0", "photo"
    size: int
    sha256: bytes
    valid: bool = True

    @property
    def kind(self) -> str:
        return "face" if self.key[0] == "face" else self.key[1]


def held_piece(piece: FaceLine | PhotoLine) -> FaceLine | PhotoLine | Summary:
    """``piece`` as memory keeps it: whole when a record can hold it, else as a ``Summary``."""
    if isinstance(piece, FaceLine):
        if len(piece.template) <= MAX_FACE_TEMPLATE and piece.index < FOREIGN_FACE_SLOTS:
            return piece
        return Summary(piece.key, f"face {piece.algorithm} {piece.index}", len(piece.template), hashlib.sha256(piece.template).digest(),
                       piece.valid)
    if len(piece.content) <= MAX_PHOTO:
        return piece
    return Summary(piece.key, "photo", len(piece.content), hashlib.sha256(piece.content).digest())


def pictures(pieces: dict) -> dict:
    """The faces and photos among a person's pieces (fingers are keyed by number)."""
    return {key: piece for key, piece in pieces.items() if isinstance(piece, (FaceLine, PhotoLine, Summary))}


def _kind(piece) -> str:
    """"face", "USERPIC" or "BIOPHOTO"."""
    return "face" if isinstance(piece, FaceLine) else piece.kind


def copy_digest(base: bytes, pieces: dict, listed: Listed) -> bytes:
    """The digest of a device's copy of a person: ``base`` (its user and fingers) and what of its
    faces and photo its listing returns (``listed``); ``base`` itself when it holds none of those.
    A BIOPHOTO is left out: a listing does not ask for it (the USERPIC the gateway writes is the
    photo it compares)."""
    held = {k: p for k, p in pictures(pieces).items() if _kind(p) == "face" or (listed.photos and _kind(p) == "USERPIC")}
    if not held:
        return base
    h = hashlib.sha256(base)
    for key in sorted(held, key=repr):
        piece = held[key]
        data = piece.sha256 if isinstance(piece, Summary) else piece.template if isinstance(piece, FaceLine) else piece.content
        size = piece.size if isinstance(piece, Summary) else len(data)
        h.update(repr(key).encode() + size.to_bytes(4, "little") + data)
    return h.digest()[:8]


def server_faces(pieces: dict) -> tuple[tuple[Face, ...], bytes | None, list[str]]:
    """The faces and photo a pull takes from a device's copy, and why any was left: those are
    refused for this device, never cut. A format (an algorithm) is one unit: a near-infrared face is
    twelve templates that work only together, so all of a format is taken or none."""
    faces, refused, total = [], [], 0
    units: dict[str, list] = {}
    for piece in pictures(pieces).values():
        if _kind(piece) == "face" and piece.valid:
            units.setdefault(face_algorithm(*piece.key[1:4]), []).append(piece)
    for algorithm in sorted(units):
        unit = sorted(units[algorithm], key=lambda p: p.key)
        size = sum(p.size if isinstance(p, Summary) else len(p.template) for p in unit)
        what = f"face {algorithm} ({len(unit)} templates, {size} bytes)"
        beyond = next((p for p in unit if isinstance(p, Summary)), None)
        if beyond is not None:
            refused.append(f"{what}: {beyond.label} of {beyond.size} bytes (at most {MAX_FACE_TEMPLATE} bytes, templates 0 to "
                           f"{FOREIGN_FACE_SLOTS - 1})")
        elif len(faces) + len(unit) > MAX_FOREIGN_FACES or total + size > MAX_FOREIGN_FACE_BYTES:
            refused.append(f"{what}: a record holds {MAX_FOREIGN_FACES} faces, {MAX_FOREIGN_FACE_BYTES} bytes")
        else:
            faces += [Face(p.index, p.template, algorithm) for p in unit]
            total += size
    photo = next((p for kind in ("USERPIC", "BIOPHOTO") for p in pictures(pieces).values() if _kind(p) == kind), None)
    if isinstance(photo, Summary):
        refused.append(f"photo of {photo.size} bytes (at most {MAX_PHOTO})")
    return tuple(faces), photo.content if isinstance(photo, PhotoLine) else None, refused


def planned_pictures(record: UserRecord, held: dict, listed: Listed) -> tuple[dict, list]:
    """What a device holds of ``record``'s faces and photo once written, and the lines to send for
    it: its held pictures, with the server's faces of its own algorithms and the server's photo (if
    its listing returns photos) written over them (those that differ). A face Type of which the
    device holds a face of another algorithm gets none: it would overwrite that face."""
    after = pictures(held)
    sent: list = []
    mine = {a.name: a for a in listed.algorithms}
    others = {key[1] for key, piece in after.items() if key[0] == "face" and face_algorithm(*key[1:4]) not in mine}
    for face in record.faces:
        algorithm = mine.get(face.format or "")
        if algorithm is not None and algorithm.type not in others:
            line = FaceLine(record.user_id, algorithm.type, face.index, face.template, algorithm.major, algorithm.minor)
            if getattr(after.get(line.key), "template", None) != face.template:
                after[line.key] = line
                sent.append(line)
    if record.photo is not None and listed.photos:
        photo = PhotoLine(record.user_id, record.photo)
        if getattr(after.get(photo.key), "content", None) != record.photo:
            after[photo.key] = photo
            sent.append(photo)
    return after, sent


def holdable_pictures(record: UserRecord, listed: Listed) -> dict:
    """The faces and photo of ``record`` a device holds once written (and its listing shows)."""
    names = {a.name for a in listed.algorithms}
    return dict(faces=tuple(f for f in record.faces if f.format in names), photo=record.photo if listed.photos else None)
