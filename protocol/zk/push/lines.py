"""The PUSH protocol's text records: upload lines, and the tab-separated ``key=value`` fields that
users, fingerprints and commands are written in (docs/zk-push.md, "Upload lines").

Read tolerantly, as the field's servers do: a line that does not parse is a ``BadLine`` (kept,
with its number and the reason) and the rest of the body still counts; kinds of lines we do not
use (FACE, palm BIODATA, ...) are ``OtherLine``s, acknowledged and left. Text is UTF-8; a device
configured with another character set has its lines that are not UTF-8 decoded with it, and a
line in neither is a ``BadLine`` (never a name with replacement characters stored as if right).
"""

import base64
import binascii
import functools
from dataclasses import dataclass, field
from datetime import date

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
EPOCH_DAY = date(1970, 1, 1)
MAX_LINE_BYTES = 256 * 1024  # a BIODATA face template is tens of kB; a longer line is not a record


@dataclass(frozen=True)
class BadLine:
    """A line that does not parse: its number in the body (from 1), its text, and why."""

    number: int
    text: str
    reason: str


@dataclass(frozen=True)
class Punch:
    """One ATTLOG line: who (PIN), when (the device's local time, as sent), status (check in,
    out, ...), how they verified, and the work code."""

    pin: str
    time: str
    status: int = 0
    verify: int = 0
    workcode: str = "0"
    # ``time`` as read by the parser, which reads it anyway to check the line: an upload's ten
    # thousand times are then read once, not again to key each punch.
    seconds: int | None = field(default=None, compare=False, repr=False)

    def local_seconds(self) -> int:
        """When, in seconds since 1970 on the device's clock (its TimeZone away from UTC)."""
        return self.seconds if self.seconds is not None else local_seconds(self.time)

    def line(self) -> str:
        return "\t".join((self.pin, self.time, str(self.status), str(self.verify), self.workcode))


@dataclass(frozen=True)
class OpLog:
    """``OPLOG code\\tadmin\\ttime\\tobject1\\tobject2\\t...``: an operation at the device."""

    code: int
    admin: str
    time: str
    objects: tuple[str, ...] = ()

    def line(self) -> str:
        return "OPLOG " + "\t".join((str(self.code), self.admin, self.time, *self.objects))


@dataclass(frozen=True)
class UserLine:
    """``USER PIN=..\\tName=..\\tPri=..\\tPasswd=..\\tCard=..\\tGrp=..\\tTZ=..\\tVerify=..``: a user
    as the device holds it, every field kept in its order (those we do not map go back as they came)."""

    fields: tuple[tuple[str, str], ...]

    @property
    def pin(self) -> str:
        return field_value(self.fields, "PIN")

    def get(self, name: str, default: str = "") -> str:
        value = field_value(self.fields, name)
        return value if value else default

    def line(self) -> str:
        return "USER " + format_fields(self.fields)


@dataclass(frozen=True)
class FingerLine:
    """A fingerprint template: ``FP PIN=..\\tFID=..\\tSize=..\\tValid=..\\tTMP=<base64>`` (PUSH 2.x)
    or ``BIODATA Pin=..\\tNo=..\\tIndex=..\\tValid=..\\tDuress=..\\tType=1\\t...\\tTmp=<base64>``."""

    pin: str
    fid: int
    valid: int  # 1 normal, 3 duress (the ZK template flags), 0 invalid
    template: bytes
    kind: str = "FP"  # or "BIODATA"

    def line(self) -> str:
        tmp = base64.b64encode(self.template).decode("ascii")
        if self.kind == "BIODATA":
            duress = "1" if self.valid == 3 else "0"
            return "BIODATA " + format_fields((("Pin", self.pin), ("No", str(self.fid)), ("Index", "0"), ("Valid", "1" if self.valid else "0"),
                                               ("Duress", duress), ("Type", "1"), ("MajorVer", "10"), ("MinorVer", "0"), ("Format", "0"), ("Tmp", tmp)))
        return "FP " + format_fields((("PIN", self.pin), ("FID", str(self.fid)), ("Size", str(len(tmp))), ("Valid", str(self.valid)), ("TMP", tmp)))


FACE_TYPES = frozenset({2, 9})  # BIODATA Type: 2 near-infrared face, 9 visible-light face


@dataclass(frozen=True)
class FaceLine:
    """A face template: ``BIODATA Pin=..\tNo=0\tIndex=..\tValid=..\tDuress=..\tType=9\tMajorVer=..
    \tMinorVer=..\tFormat=0\tTmp=<base64>`` (Type 2: near-infrared, Index 0-11; Type 9: visible
    light, one template). Only a device of the same Type and MajorVer can use it."""

    pin: str
    type: int
    index: int
    template: bytes
    major: str
    minor: str = "0"
    valid: bool = True
    duress: bool = False
    format: str = "0"  # Format: 0 is ZKTeco's own

    @property
    def algorithm(self) -> str:
        """The server's name for the algorithm that made it (``Face.format``): ``zkface9v58``."""
        return face_algorithm(self.type, self.major, self.format)

    @property
    def key(self) -> tuple:
        """Its place among a person's pieces: two algorithms of one Type are two places (a server face
        must never be taken for a device face of another algorithm)."""
        return ("face", self.type, self.major, self.format, self.index)

    def line(self) -> str:
        return "BIODATA " + format_fields((
            ("Pin", self.pin), ("No", "0"), ("Index", str(self.index)), ("Valid", "1" if self.valid else "0"),
            ("Duress", "1" if self.duress else "0"), ("Type", str(self.type)), ("MajorVer", self.major), ("MinorVer", self.minor),
            ("Format", self.format), ("Tmp", base64.b64encode(self.template).decode("ascii"))))


def face_algorithm(type_: int, major: str, fmt: str = "0") -> str:
    """``zkface<Type>v<MajorVer>`` (``f<Format>`` after it when Format is not ZKTeco's own 0)."""
    return f"zkface{type_}v{major}" + (f"f{fmt}" if fmt not in ("", "0") else "")


@dataclass(frozen=True)
class PhotoLine:
    """A person's photo: ``USERPIC PIN=..\tFileName=..\tSize=..\tContent=<base64>``, or the comparison
    photo a visible-light device took at enrolment, ``BIOPHOTO PIN=..\tFileName=..\tType=9\tNo=0
    \tIndex=0\tSize=..\tContent=<base64>``. ``Size`` is read and not trusted (the length of the
    base64 text in ZKTeco's documents, of the JPEG in some servers'): the content says."""

    pin: str
    content: bytes
    kind: str = "USERPIC"  # or "BIOPHOTO"

    @property
    def key(self) -> tuple:
        return ("photo", self.kind)

    def line(self) -> str:
        content = base64.b64encode(self.content).decode("ascii")
        if self.kind == "BIOPHOTO":
            return "BIOPHOTO " + format_fields((("PIN", self.pin), ("FileName", f"{self.pin}.jpg"), ("Type", "9"), ("No", "0"),
                                                ("Index", "0"), ("Size", str(len(content))), ("Content", content)))
        return "USERPIC " + format_fields((("PIN", self.pin), ("FileName", f"{self.pin}.jpg"), ("Size", str(len(content))), ("Content", content)))


@dataclass(frozen=True)
class OtherLine:
    """A line of a kind we do not use (FACE, palm or vein BIODATA, ...): acknowledged, not stored."""

    kind: str
    number: int


def field_value(fields: tuple[tuple[str, str], ...], name: str) -> str:
    """The value of ``name`` (case-insensitive: firmwares write ``PIN``, ``Pin`` and ``pin``)."""
    lowered = name.lower()
    for key, value in fields:
        if key.lower() == lowered:
            return value
    return ""


def parse_fields(text: str) -> tuple[tuple[str, str], ...]:
    """``PIN=1\\tName=Ann`` -> (("PIN", "1"), ("Name", "Ann")). A part without ``=`` is skipped."""
    pairs = []
    for part in text.split("\t"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs.append((key.strip(), value))
    return tuple(pairs)


def clean_value(value: str) -> str:
    """A value as a field may carry it: tabs and line ends would split the record, so they become spaces."""
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def format_fields(fields) -> str:
    return "\t".join(f"{key}={clean_value(str(value))}" for key, value in fields)


def decode_lines(body: bytes, charset: str | None = None):
    """The body's non-empty lines as (number, text), or ``BadLine`` for one that is not text."""
    for number, raw in enumerate(body.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r").strip(b"\x00")
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield BadLine(number, raw[:80].decode("utf-8", "replace"), f"longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            if charset is not None:
                try:
                    yield number, raw.decode(charset)
                    continue
                except (UnicodeDecodeError, LookupError):
                    pass
            yield BadLine(number, raw.decode("utf-8", "replace"), f"not UTF-8{' nor ' + charset if charset else ''}")


def parse_attlog(body: bytes, charset: str | None = None) -> tuple[list[Punch], list[BadLine]]:
    """An ATTLOG upload: ``PIN\\tYYYY-MM-DD HH:MM:SS\\tstatus\\tverify\\tworkcode\\t...`` per line."""
    punches, bad = [], []
    try:
        whole = body.decode("utf-8")
    except UnicodeDecodeError:
        lines = decode_lines(body, charset)  # line by line: the others still count
    else:  # the common case, in one decode: ten thousand lines are one upload
        lines = ((n, line.rstrip("\r")) for n, line in enumerate(whole.split("\n"), start=1) if line.strip())
    for item in lines:
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        number, text = item
        try:
            punches.append(parse_punch(text))
        except ValueError as exc:
            bad.append(BadLine(number, text, str(exc)))
    return punches, bad


def parse_punch(text: str) -> Punch:
    fields = text.split("\t")
    count = len(fields)
    if count < 2:
        raise ValueError("an ATTLOG line has at least a PIN and a time, tab-separated")
    pin, time = fields[0].strip(), fields[1].strip()
    if not pin:
        raise ValueError("empty PIN")
    seconds = local_seconds(time)  # ValueError names what is wrong
    status = _number(fields[2]) if count > 2 else 0
    verify = _number(fields[3]) if count > 3 else 0
    workcode = (fields[4].strip() or "0") if count > 4 else "0"
    return Punch(pin, time, status, verify, workcode, seconds)


def read_records(body: bytes, charset: str | None, read) -> tuple[list, list[BadLine]]:
    """Each line of a record upload as ``read(number, head, rest, text)`` makes it (``head``: the
    line's first word, ``rest`` what follows); a line that does not decode, or that ``read``
    refuses (ValueError), is a ``BadLine``, and the others still count."""
    items, bad = [], []
    for item in decode_lines(body, charset):
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        number, text = item
        head, _, rest = text.partition(" ")
        try:
            items.append(read(number, head, rest, text))
        except ValueError as exc:
            bad.append(BadLine(number, text[:200], str(exc)))
    return items, bad


def or_other(item, kind: str, number: int):
    """``item``, or an ``OtherLine`` where the parser found it is not a record of ours (None)."""
    return item if item is not None else OtherLine(kind, number)


def parse_operlog(body: bytes, charset: str | None = None) -> tuple[list, list[BadLine]]:
    """An OPERLOG upload (also what a device sends to answer ``DATA QUERY``): OPLOG, USER, FP and
    BIODATA lines in the order they came; other kinds as ``OtherLine``."""
    return read_records(body, charset, _operlog_record)


def _operlog_record(number: int, head: str, rest: str, _text: str):
    kind = head.strip().upper()
    if kind == "OPLOG":
        return parse_oplog(rest)
    if kind in ("USER", "USERINFO"):
        fields = parse_fields(rest)
        if not field_value(fields, "PIN"):
            raise ValueError("a USER line without PIN")
        return UserLine(fields)
    if kind == "BIODATA" and _biodata_type(rest) in FACE_TYPES:
        return or_other(parse_face(rest), kind, number)
    if kind in ("USERPIC", "BIOPHOTO"):
        return or_other(parse_photo(kind, rest), kind, number)
    if kind in ("FP", "FINGERTMP", "BIODATA"):
        return or_other(parse_finger(kind, rest), kind, number)
    return OtherLine(kind, number)


def parse_oplog(rest: str) -> OpLog:
    fields = rest.split("\t")
    code = _number(fields[0])
    admin = fields[1].strip() if len(fields) > 1 else ""
    time = fields[2].strip() if len(fields) > 2 else ""
    if time:
        local_seconds(time)
    return OpLog(code, admin, time, tuple(f.strip() for f in fields[3:]))


def parse_finger(kind: str, rest: str) -> FingerLine | None:
    """A fingerprint line; None for BIODATA of another biometric (face, palm: Type other than 1)."""
    fields = parse_fields(rest)
    pin = field_value(fields, "PIN")
    if not pin:
        raise ValueError(f"a {kind} line without PIN")
    if kind == "BIODATA":
        if (field_value(fields, "Type") or "1") != "1":
            return None
        fid = _number(field_value(fields, "No"))
        valid = 0 if field_value(fields, "Valid") == "0" else 3 if field_value(fields, "Duress") == "1" else 1
        tmp = field_value(fields, "Tmp")
    else:
        fid = _number(field_value(fields, "FID"))
        valid = _number(field_value(fields, "Valid") or "1")
        tmp = field_value(fields, "TMP")
    if not 0 <= fid <= 9:
        raise ValueError(f"finger index {fid} is not 0 to 9")
    template = _base64(tmp)
    return FingerLine(pin, fid, valid, template, "BIODATA" if kind == "BIODATA" else "FP")


def _biodata_type(rest: str) -> int | None:
    try:
        return int(field_value(parse_fields(rest), "Type") or "1")
    except ValueError:
        return None


def parse_face(rest: str) -> FaceLine | None:
    """A BIODATA line of Type 2 or 9; None when it does not say its algorithm (no MajorVer: no device
    could use it); ValueError says what is wrong."""
    fields = parse_fields(rest)
    pin = field_value(fields, "Pin")
    if not pin:
        raise ValueError("a BIODATA line without Pin")
    major = field_value(fields, "MajorVer").strip()
    if not major:
        return None
    if not (major.isascii() and major.isdigit()):
        raise ValueError(f"a face's MajorVer {major[:20]!r} is not a number")
    index = _number(field_value(fields, "Index") or "0")
    if not 0 <= index <= 255:
        raise ValueError(f"face template index {index} is not 0 to 255")
    number = _number(field_value(fields, "No") or "0")
    if number != 0:  # a face is body part 0: any other number would be one more copy of it to keep
        raise ValueError(f"a face's No is {number}, not 0")
    return FaceLine(pin, _number(field_value(fields, "Type")), index, _base64(field_value(fields, "Tmp")), major,
                    field_value(fields, "MinorVer").strip() or "0",
                    field_value(fields, "Valid") != "0", field_value(fields, "Duress") == "1", field_value(fields, "Format").strip() or "0")


def parse_photo(kind: str, rest: str) -> PhotoLine | None:
    """A USERPIC line, or a BIOPHOTO of a visible-light face (None: a photo of another biometric)."""
    fields = parse_fields(rest)
    pin = field_value(fields, "PIN")
    if not pin:
        raise ValueError(f"a {kind} line without PIN")
    if kind == "BIOPHOTO" and (field_value(fields, "Type") or "9").strip() != "9":
        return None
    return PhotoLine(pin, _base64(field_value(fields, "Content")), kind)


def _base64(text: str) -> bytes:
    text = text.strip()
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("the content is not base64") from None
    if not data:
        raise ValueError("an empty template or photo")
    return data


def local_seconds(text: str) -> int:
    """``YYYY-MM-DD HH:MM:SS`` (TIME_FORMAT) as seconds since 1970-01-01 00:00:00 of the same clock.
    Read by position, the minute through a cache (the punches of an upload share their minutes,
    and strptime, then reading each field, took most of an upload's parse)."""
    if len(text) != 19 or text[16] != ":":
        raise ValueError(f"time {text[:30]!r} is not YYYY-MM-DD HH:MM:SS")
    try:
        second = int(text[17:19])
    except ValueError:
        raise ValueError(f"time {text!r} is not YYYY-MM-DD HH:MM:SS") from None
    if not 0 <= second <= 59:
        raise ValueError(f"time {text!r} is not a valid time of day")
    return _minute_seconds(text[:16]) + second


@functools.lru_cache(maxsize=4096)
def _minute_seconds(text: str) -> int:
    """``YYYY-MM-DD HH:MM`` as seconds since 1970; a ValueError says what is wrong in it."""
    if text[10] != " " or text[13] != ":":
        raise ValueError(f"time {text!r}... is not YYYY-MM-DD HH:MM:SS")
    try:
        hour, minute = int(text[11:13]), int(text[14:16])
    except ValueError:
        raise ValueError(f"time {text!r}... is not YYYY-MM-DD HH:MM:SS") from None
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ValueError(f"time {text!r}... is not a valid time of day")
    return _day_seconds(text[:10]) + hour * 3600 + minute * 60


@functools.lru_cache(maxsize=4096)
def _day_seconds(text: str) -> int:
    try:
        if text[4] != "-" or text[7] != "-":
            raise ValueError
        day = date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        raise ValueError(f"date {text!r} is not a valid YYYY-MM-DD") from None
    return (day - EPOCH_DAY).days * 86400


def _number(text: str) -> int:
    try:
        return int(text)  # int() takes surrounding blanks itself
    except ValueError:
        raise ValueError(f"{text.strip()[:20]!r} is not a number") from None
