"""PUSH 3.x, the access-control ("Security PUSH") dialect: its records, commands and answers
(docs/zk-push.md, "PUSH 3 (access-control devices)").

An access device speaks the same HTTP endpoints as a 2.x attendance device but other text in them:
records are ``key=value`` lines named by a lower-case table (``user uid=..\\tpin=..``,
``templatev10 pin=..\\tfingerid=..``, ``biodata pin=..\\tno=..``), punches are ``rtlog`` events
(``time=..\\tpin=..\\tevent=..\\tverifytype=..``), commands name their table the same way
(``DATA UPDATE user Pin=..``) and a query's answer comes back on ``/iclock/querydata``.

The gateway keeps a device's copy of a person in the 2.x field names (``UserLine``: ``PIN``,
``Name``, ``Pri``, ``Passwd``, ``Card``, ``Grp``), which the ZK field mapping reads; a 3.x user is
read into those names (``read_user``) and written back from them (``update_user``), and the
fields only 3.x has (validity ``starttime``/``endtime``, ``disable``, ``verify``) ride along under
their own names, so what the device owns goes back as it came.
"""

import base64

from protocol.zk.push.lines import (BadLine, FingerLine, OtherLine, Punch, UserLine, decode_lines, field_value, format_fields,
                                    local_seconds, or_other, parse_fields, parse_finger, read_records)

PUSH_VERSION = "3.1.2"  # the Security PUSH document this side follows
USER, TEMPLATE, BIODATA, AUTHORIZE = "user", "templatev10", "biodata", "userauthorize"
RECORD_TABLES = frozenset({USER, TEMPLATE, BIODATA})  # the tables whose records are a person's copy
# A 3.x user field -> the 2.x name the ZK mapping reads; the rest keep their own names.
_TO_V2 = {"pin": "PIN", "name": "Name", "privilege": "Pri", "password": "Passwd", "cardno": "Card", "group": "Grp"}
# What ``DATA UPDATE user`` is written with (the document's eight fields, in its order), then the
# 3.x fields a device uploads beside them, sent back only when the device holds them.
_COMMAND_FIELDS = (("Card", "CardNo"), ("PIN", "Pin"), ("Passwd", "Password"), ("Grp", "Group"), ("starttime", "StartTime"),
                   ("endtime", "EndTime"), ("Name", "Name"), ("Pri", "Privilege"))
_HELD_ONLY = (("disable", "Disable"), ("verify", "Verify"))
_NEW_PERSON = {"Grp": "1", "starttime": "0", "endtime": "0", "Pri": "0"}  # the document's defaults: group 1, no validity limit
DURESS_OFFSET = 16  # a duress finger is uploaded as fingerid + 16 (and valid 1)
# rtlog events that are a person let through (Appendix 2): normal, normally-open, first-person and
# multi-person openings by card, finger or both, password and superuser openings, verified passes.
# Failures (20-99), alarms (100-199) and door states (200, 201, 202, 206...) are not punches.
PASS_EVENTS = frozenset({0, 1, 2, 3, 14, 15, 16, 17, 18, 19, 203, 207, 208, 215, 216, 222, 232})
# rtlog verifytype (Appendix 3, the verify mode used) -> the 2.x ATTLOG verify code.
_VERIFY_MODES = {1: 1, 3: 0, 4: 2, 15: 15}
# The 16-character form (NewVFStyles, bit 0 on the right): face, finger, password, card.
_VERIFY_BITS = ((1, 15), (4, 1), (9, 0), (11, 2))
REFUSED_TABLE = -629  # Return of a command naming a table the device has not (a 2.x table at a 3.x device)


# -- reading ------------------------------------------------------------------------------------------


def parse_rtlog(body: bytes, charset: str | None = None) -> tuple[list[Punch], list[BadLine]]:
    """An rtlog upload: the events that are a person let through, as punches. Other events (doors,
    alarms, refusals, ``pin=0``) are the device's and are skipped without complaint."""
    punches, bad = [], []
    for item in decode_lines(body, charset):
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        number, text = item
        fields = {k.lower(): v.strip() for k, v in parse_fields(text)}
        try:
            event = int(fields.get("event", ""))
            time = fields.get("time", "")
            seconds = local_seconds(time)
        except ValueError as exc:
            bad.append(BadLine(number, text[:200], str(exc) if "time" in str(exc) else "an rtlog line needs a numeric event and a time"))
            continue
        pin = fields.get("pin", "")
        if event not in PASS_EVENTS or pin in ("", "0"):
            continue
        status = _int(fields.get("inoutstatus")) or 0
        punches.append(Punch(pin, time, status, verify_code(fields.get("verifytype", "")), "0", seconds))
    return punches, bad


def verify_code(verifytype: str) -> int:
    """The 2.x verify code (0 password, 1 finger, 2 card, 15 face) of an rtlog ``verifytype``; 200
    (other) for a mode that is none of those or a combination."""
    text = verifytype.strip()
    if len(text) == 16 and set(text) <= {"0", "1"}:
        for bit, code in _VERIFY_BITS:
            if text[15 - bit] == "1":
                return code
        return 200
    return _VERIFY_MODES.get(_int(text), 200)


def parse_table(tablename: str, body: bytes, charset: str | None = None) -> tuple[list, list[BadLine]]:
    """A ``tabledata`` upload or a ``querydata`` answer: users as ``UserLine`` (2.x names), fingers
    as ``FingerLine`` (``FP`` from templatev10, ``BIODATA`` from biodata), other records as
    ``OtherLine``. A line that starts with its first field, without the table's name, is read as
    the table's (some firmware leaves the name out)."""

    def record(number: int, head: str, rest: str, text: str):
        if "=" in head:
            head, rest = tablename, text
        table = head.strip().lower()
        if table == USER:
            return read_user(rest)
        if table == TEMPLATE:
            return read_template(rest)
        if table == BIODATA:
            return or_other(parse_finger("BIODATA", rest), BIODATA, number)
        return OtherLine(table, number)

    return read_records(body, charset, record)


def read_user(rest: str) -> UserLine:
    """``uid=..\\tcardno=..\\tpin=..\\t...`` as a ``UserLine`` in 2.x names (others kept as they came)."""
    fields = tuple((_TO_V2.get(key.lower(), key.lower()), value) for key, value in parse_fields(rest))
    if not field_value(fields, "PIN"):
        raise ValueError("a user line without pin")
    return UserLine(fields)


def read_template(rest: str) -> FingerLine:
    """``size=..\\tuid=..\\tpin=..\\tfingerid=..\\tvalid=..\\ttemplate=..``; a duress finger comes as fingerid + 16."""
    fields = parse_fields(rest)
    pin = field_value(fields, "pin")
    if not pin:
        raise ValueError("a templatev10 line without pin")
    fid, valid = _int(field_value(fields, "fingerid")), _int(field_value(fields, "valid") or "1")
    if fid is None or valid is None:
        raise ValueError("fingerid and valid must be numbers")
    if fid >= DURESS_OFFSET:
        fid, valid = fid - DURESS_OFFSET, 3
    rebuilt = (("PIN", pin), ("FID", str(fid)), ("Valid", str(valid)), ("TMP", field_value(fields, "template")))
    finger = parse_finger("FP", format_fields(rebuilt))
    assert finger is not None  # an FP line is always a finger
    return finger


# -- writing: the records a device uploads (the emulated device) ----------------------------------------


def user_record(fields) -> str:
    """``user uid=..\\tcardno=..\\t...`` from 3.x-named fields."""
    return "user " + format_fields(fields)


def template_record(finger: FingerLine, uid: int = 0) -> str:
    """A finger as its device uploads it: ``templatev10`` (duress as fingerid + 16), or ``biodata`` Type 1."""
    tmp = base64.b64encode(finger.template).decode("ascii")
    if finger.kind == "BIODATA":
        return _biodata_record(finger, tmp)
    fid, valid = (finger.fid + DURESS_OFFSET, 1) if finger.valid == 3 else (finger.fid, finger.valid)
    return "templatev10 " + format_fields((("size", len(tmp)), ("uid", uid), ("pin", finger.pin), ("fingerid", fid), ("valid", valid),
                                           ("template", tmp), ("resverd", ""), ("endtag", "")))


def _biodata_record(finger: FingerLine, tmp: str) -> str:
    return "biodata " + format_fields((("pin", finger.pin), ("no", finger.fid), ("index", 0), ("valid", 1 if finger.valid else 0),
                                       ("duress", 1 if finger.valid == 3 else 0), ("type", 1), ("majorver", 10), ("minorver", 0),
                                       ("format", 0), ("tmp", tmp)))


def rtlog_record(punch: Punch, index: int, event: int = 0) -> str:
    """A verification as an access device reports it at door 1: event 0 a normal verified opening
    (22: refused, not in a valid time period)."""
    mode = {v: k for k, v in _VERIFY_MODES.items()}.get(punch.verify, 0)
    return format_fields((("time", punch.time), ("pin", punch.pin), ("cardno", 0), ("sitecode", 0), ("linkid", 0), ("eventaddr", 1),
                          ("event", event), ("inoutstatus", punch.status), ("verifytype", mode), ("index", index)))


# -- commands ----------------------------------------------------------------------------------------------


def update_user(fields) -> str:
    """``DATA UPDATE user CardNo=..\\tPin=..\\tPassword=..\\tGroup=..\\tStartTime=..\\tEndTime=..\\tName=..\\tPrivilege=..``
    from a ``UserLine``'s fields (2.x names, as the gateway keeps a device's copy): what the device
    holds and we do not map (group, validity, privilege, and disable and verify when it has them)
    goes back as it came; a field it never had gets the document's default. The device's ``uid``
    (its slot) is not written."""
    held = {key.lower(): value for key, value in fields}
    out = [(name, held.get(key.lower()) or _NEW_PERSON.get(key, "")) for key, name in _COMMAND_FIELDS]
    out += [(name, held[key]) for key, name in _HELD_ONLY if key in held]
    return "DATA UPDATE user " + format_fields(out)


def delete_user(pin: str) -> str:
    return "DATA DELETE user " + format_fields((("Pin", pin),))


def authorize(pin: str, doors: int = 1) -> str:
    """``DATA UPDATE userauthorize Pin=..\tAuthorizeTimezoneId=1\tAuthorizeDoorId=..``: the person may
    pass every door of the device (a bit each) in its time rule 1 (all day, as devices come). An
    access device holds a person without this but refuses them at the door ("invalid time period")."""
    return "DATA UPDATE userauthorize " + format_fields((("Pin", pin), ("AuthorizeTimezoneId", 1), ("AuthorizeDoorId", (1 << max(doors, 1)) - 1)))


def deletion(pin: str, kind: str = "FP") -> list[str]:
    """A person's deletion as the document orders it: their door rights and templates, then the user
    (the device does not delete them with the user)."""
    templates = BIODATA if kind == "BIODATA" else TEMPLATE
    return [f"DATA DELETE {AUTHORIZE} Pin={pin}", f"DATA DELETE {templates} Pin={pin}", delete_user(pin)]


def update_finger(finger: FingerLine) -> str:
    """``DATA UPDATE templatev10 Pin=..\\tFingerID=..\\tValid=..\\tTemplate=..`` (valid 3: duress), or
    ``DATA UPDATE biodata ...\\tType=1\\t...`` for a device that uploads biodata."""
    tmp = base64.b64encode(finger.template).decode("ascii")
    if finger.kind == "BIODATA":
        return "DATA UPDATE biodata " + format_fields((("Pin", finger.pin), ("No", finger.fid), ("Index", 0), ("Valid", 1 if finger.valid else 0),
                                                       ("Duress", 1 if finger.valid == 3 else 0), ("Type", 1), ("MajorVer", 10),
                                                       ("MinorVer", 0), ("Format", 0), ("Tmp", tmp)))
    return "DATA UPDATE templatev10 " + format_fields((("Pin", finger.pin), ("FingerID", finger.fid), ("Valid", finger.valid), ("Template", tmp)))


def delete_finger(pin: str, fid: int, kind: str = "FP") -> str:
    if kind == "BIODATA":
        return "DATA DELETE biodata " + format_fields((("Pin", pin), ("Type", 1), ("No", fid)))
    return "DATA DELETE templatev10 " + format_fields((("Pin", pin), ("FingerID", fid)))


def query(table: str, condition: str = "*") -> str:
    """``DATA QUERY tablename=user,fielddesc=*,filter=*``: the device posts the rows to querydata, then the result."""
    return f"DATA QUERY tablename={table},fielddesc=*,filter={condition}"


def parse_query(text: str) -> dict[str, str]:
    """``tablename=user,fielddesc=*,filter=*`` -> its three parts (the filter may hold ``=`` itself)."""
    parts: dict[str, str] = {}
    for chunk in text.split(","):
        key, _, value = chunk.partition("=")
        parts[key.strip().lower()] = value.strip()
    return parts


# -- answers -------------------------------------------------------------------------------------------------


def table_answer(tablename: str, count: int) -> bytes:
    """What a tabledata or querydata upload is answered once it is taken: ``user=3`` (not ``OK``: a
    device that does not see its table named sends the upload again)."""
    return f"{tablename}={count}".encode()


def _int(text) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None
