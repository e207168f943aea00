"""PushTerminal: an emulated ZKTeco PUSH device, with no I/O, written against docs/zk-push.md.

It holds what a device holds (users as ``key=value`` fields, fingerprint templates, its
attendance log with a stamp per record, operation log lines not uploaded yet) and says what to
send next: ``init_request``, ``next_upload`` (one table's lines at a time, acknowledged by
``uploaded``), ``getrequest``; ``execute`` carries out a command and gives the lines a query
uploads and the result line. People at the keypad are ``enroll``, ``edit``, ``delete``,
``verify``; ``wipe`` empties it as a factory reset does. simulator/push/client.py drives it
over HTTP; ``save``/``load`` keep it in a file (``--state``), as a device keeps its flash.

Like real firmware it uploads OPLOG lines with the USER and FP lines of a keypad change, and
nothing for a change the server made by command.

``version=3`` makes it an access-control device speaking only PUSH 3.x ("Security PUSH",
docs/zk-push.md "PUSH 3"): it registers (``registry_body``) and asks for its configuration at
``/iclock/push``, uploads punches as ``rtlog`` events and a keypad change as ``tabledata`` (``user``
and ``templatev10`` or ``biodata`` records, no operation log), answers ``DATA ... user`` and
``DATA QUERY tablename=..`` (the rows to ``/iclock/querydata``), and refuses 2.x syntax with the
code such firmware gives, ``-629`` (no such table).
"""

import base64
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from protocol.zk.push import commands as cmd
from protocol.zk.push import v3
from protocol.zk.push.commands import CommandResult, PushCommand
from protocol.zk.push.lines import (TIME_FORMAT, FaceLine, FingerLine, OpLog, PhotoLine, Punch, UserLine, field_value, format_fields,
                                   parse_face, parse_fields, parse_finger, parse_photo)

OP_ENROLL_USER, OP_CHANGE_USER, OP_DELETE_USER = 30, 36, 9  # OPLOG codes (docs/zk-push.md)
VERIFY = {"pin": 0, "finger": 1, "card": 2, "face": 15}
UNKNOWN_COMMAND = -1002  # Return of a command the device does not know
TEMPLATE_BYTES = 640
FP_VERSION = "10"
MAX_UPLOAD_LINES = 1000  # per request
NO_USER = -27  # Return of a 3.x template for a PIN the device does not hold (Appendix 1)
# A keypad field (2.x name) -> its 3.x name, for a 3.x device's users.
_V3_NAMES = {"PIN": "pin", "Name": "name", "Passwd": "password", "Card": "cardno", "Pri": "privilege", "Grp": "group"}
# A 3.x DATA UPDATE user field -> the name the device keeps and uploads it under.
_V3_STORED = {"cardno": "cardno", "pin": "pin", "password": "password", "group": "group", "starttime": "starttime", "endtime": "endtime",
              "name": "name", "privilege": "privilege", "disable": "disable", "verify": "verify"}
FACE_TEMPLATES = {2: 12, 9: 1}  # a near-infrared face is 12 templates, a visible-light one 1
FACE_TEMPLATE_BYTES = 1600
ALGORITHM_REFUSED = -30  # Return of a template of another algorithm (ZKTeco: "BIODATA algorithm version mismatch")


@dataclass
class PushTerminal:
    serial: str
    users: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # PIN -> the USER line's fields
    fingers: dict[str, dict[int, FingerLine]] = field(default_factory=dict)
    punches: list[tuple[int, str]] = field(default_factory=list)  # (stamp, ATTLOG line)
    next_stamp: int = 1
    sent_stamp: int = 0  # the server holds punches through this stamp
    oplog: list[str] = field(default_factory=list)  # OPERLOG lines not acknowledged yet
    options: dict[str, str] = field(default_factory=dict)  # from the initialization answer
    biodata: bool = False  # write templates as BIODATA lines (PUSH 2.4+ firmware), else FP
    version: int = 2  # 3: an access-control device speaking only PUSH 3.x
    authorized: dict[str, str] = field(default_factory=dict)  # 3.x: PIN -> the doors it may pass (userauthorize); others are refused
    registered: bool = False  # 3.x: the server named it registered (it registers again at each hello otherwise)
    face: tuple[int, str, str] | None = None  # its face algorithm: (BIODATA Type, MajorVer, MinorVer); None: no camera
    faces: dict[str, dict[int, FaceLine]] = field(default_factory=dict)  # PIN -> templates by Index
    photos: dict[str, PhotoLine] = field(default_factory=dict)  # PIN -> its USERPIC
    options_owed: bool = False  # the server asked for its options (PushOptionsFlag=1): posted before the logs

    # -- what it sends ---------------------------------------------------------------------------------

    def init_query(self) -> dict[str, str]:
        if self.version == 3:  # as the 3.x document's example: no DeviceType unless set at the device
            return {"SN": self.serial, "options": "all", "pushver": v3.PUSH_VERSION}
        return {"SN": self.serial, "options": "all", "pushver": "2.4.1", "language": "69"}

    def registry_body(self) -> bytes:
        """3.x: what it says of itself when it registers (``key=value`` by comma)."""
        return (f"DeviceType=acc,~DeviceName=emulated access device,FirmVer=Ver 8.0.4 emulated,PushVersion={v3.PUSH_VERSION},"
                f"MachineType=101,~MaxUserCount=10000,~ZKFPVersion={FP_VERSION},FingerFunOn=1,FaceFunOn=0,"
                f"BioDataFun={1 if self.biodata else 0}").encode()

    def configure(self, answer: bytes) -> None:
        """The initialization answer (3.x: the hello's, the registry's, the configuration's): options,
        and (2.x) where the server's copy of the logs ends."""
        fresh = {}
        for line in answer.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fresh[key.strip()] = value.strip()
        self.options.update(fresh)
        if self.version == 3:
            self.registered = self.registered or "RegistryCode" in fresh
            return  # no stamps: it uploads what it has not uploaded
        server = _int(self.options.get("ATTLOGStamp"))
        highest = self.punches[-1][0] if self.punches else 0
        # The server says where its copy ends; past our own log it is another log's: send ours whole.
        self.sent_stamp = server if server <= highest else 0
        self.options_owed = self.options.get("PushOptionsFlag") == "1"

    @property
    def delay_s(self) -> float:
        return float(_int(self.options.get("Delay") or self.options.get("RequestDelay")) or 10)

    @property
    def error_delay_s(self) -> float:
        return float(_int(self.options.get("ErrorDelay")) or 30)

    @property
    def realtime(self) -> bool:
        return self.options.get("Realtime", "1") != "0"

    def next_upload(self) -> tuple[dict[str, str], bytes, int] | None:
        """(query, body, token) of the next upload, or None; the token goes to ``uploaded``."""
        if self.options_owed:
            return {"SN": self.serial, "table": "options"}, self.options_body().encode(), 0
        fresh = [(stamp, line) for stamp, line in self.punches if stamp > self.sent_stamp][:MAX_UPLOAD_LINES]
        if fresh and self.version == 3:
            body = "\n".join(v3.rtlog_record(_punch(line), stamp, _int(line.split("\t")[-1])) for stamp, line in fresh) + "\n"
            return {"SN": self.serial, "table": "rtlog"}, body.encode(), fresh[-1][0]
        if fresh:
            body = "\n".join(line for _, line in fresh) + "\n"
            return {"SN": self.serial, "table": "ATTLOG", "Stamp": str(fresh[-1][0])}, body.encode(), fresh[-1][0]
        if self.oplog and self.version == 3:  # one table's records at a time
            table = self.oplog[0].split(" ", 1)[0]
            lines = [line for line in self.oplog[:MAX_UPLOAD_LINES]]
            lines = lines[:next((n for n, line in enumerate(lines) if line.split(" ", 1)[0] != table), len(lines))]
            query = {"SN": self.serial, "table": "tabledata", "tablename": table, "count": str(len(lines))}
            return query, ("\n".join(lines) + "\n").encode(), -len(lines)
        if self.oplog:
            lines = self.oplog[:MAX_UPLOAD_LINES]
            return {"SN": self.serial, "table": "OPERLOG", "OpStamp": str(self.next_stamp)}, ("\n".join(lines) + "\n").encode(), -len(lines)
        return None

    def uploaded(self, token: int) -> None:
        """The server answered OK to the upload of ``token``."""
        if token == 0:
            self.options_owed = False
        elif token > 0:
            self.sent_stamp = max(self.sent_stamp, token)
        else:
            del self.oplog[:-token]

    @staticmethod
    def accepts(query: dict[str, str], answer: bytes) -> bool:
        """Whether the server took an upload: ``OK``, or for a 3.x table ``<tablename>=<count>``."""
        table = query.get("tablename")
        return answer.startswith(f"{table}=".encode() if table else b"OK")

    def query_upload(self, command: PushCommand, lines: list[str]) -> tuple[str, dict[str, str]]:
        """Where a query's rows go: 2.x as OPERLOG, 3.x to querydata named by table and command."""
        if self.version == 3:
            table = lines[0].split(" ", 1)[0]
            return "/iclock/querydata", {"SN": self.serial, "type": "tabledata", "cmdid": str(command.id), "tablename": table,
                                         "count": str(len(lines)), "packcnt": "1", "packidx": "1"}
        return "/iclock/cdata", {"SN": self.serial, "table": "OPERLOG"}

    def options_body(self) -> str:
        """``table=options``: its biometrics by BIODATA Type (position 0-9), each with its algorithm's version."""
        support, versions = ["0"] * 10, ["0"] * 10
        support[1], versions[1] = "1", f"{FP_VERSION}.0"
        if self.face is not None:
            support[self.face[0]], versions[self.face[0]] = "1", f"{self.face[1]}.{self.face[2]}"
        return (f"FingerFunOn=1,FaceFunOn={1 if self.face else 0},MultiBioDataSupport={':'.join(support)},"
                f"MultiBioVersion={':'.join(versions)}")

    def getrequest_query(self) -> dict[str, str]:
        if self.version == 3:
            return {"SN": self.serial}
        fingers = sum(len(f) for f in self.fingers.values())
        info = f"Ver 6.60 emulated,{len(self.users)},{fingers},{len(self.punches)},127.0.0.1,{FP_VERSION},0,0,0"
        return {"SN": self.serial, "INFO": info}

    # -- commands --------------------------------------------------------------------------------------

    def execute(self, command: PushCommand) -> tuple[list[str], CommandResult]:
        """Carry out a command: the lines it uploads (a query's answer, see ``query_upload``) and its result."""
        words = command.text.split(" ", 3)
        verb = words[0]
        if self.version == 3 and verb == "DATA":
            return self._execute_v3(command, words)
        if verb in (cmd.CHECK, cmd.REBOOT):
            return [], CommandResult(command.id, 0, verb)
        if verb == cmd.INFO:
            data = (("DeviceName", "emulated PUSH device"), ("SerialNumber", self.serial), ("FPVersion", FP_VERSION),
                    ("UserCount", str(len(self.users))), ("TransactionCount", str(len(self.punches))))
            return [], CommandResult(command.id, 0, verb, data)
        if verb != "DATA" or len(words) < 3:
            return [], CommandResult(command.id, UNKNOWN_COMMAND, verb)
        action, table = words[1], words[2]
        fields = parse_fields(words[3]) if len(words) > 3 else ()
        pin = field_value(fields, "PIN")
        if action == "UPDATE" and table == "USERINFO" and pin:
            held = dict(self.users.get(pin, ()))
            held.update(fields)
            self.users[pin] = tuple(held.items())
        elif action == "DELETE" and table == "USERINFO" and pin:
            self.users.pop(pin, None)
            self.fingers.pop(pin, None)
            self.faces.pop(pin, None)
            self.photos.pop(pin, None)
        elif action == "UPDATE" and table == "BIODATA" and field_value(fields, "Type") not in ("", "1"):
            try:
                face = parse_face(words[3])
            except ValueError:
                face = None
            if pin not in self.users or face is None:
                return [], CommandResult(command.id, -1, verb)
            if self.face is None or (face.type, face.major) != self.face[:2]:
                return [], CommandResult(command.id, ALGORITHM_REFUSED, verb)
            self.faces.setdefault(pin, {})[face.index] = face
        elif action == "UPDATE" and table == "USERPIC" and pin:
            photo = parse_photo(table, words[3])
            if pin not in self.users or photo is None:
                return [], CommandResult(command.id, -1, verb)
            self.photos[pin] = photo
        elif action == "QUERY" and table == "BIODATA" and field_value(fields, "Type") not in ("", "1"):
            return [f.line() for p in sorted(self.faces) for f in self.faces[p].values()
                    if str(f.type) == field_value(fields, "Type")], CommandResult(command.id, 0, verb)
        elif action == "QUERY" and table == "USERPIC":
            return [self.photos[p].line() for p in sorted(self.photos)], CommandResult(command.id, 0, verb)
        elif action == "UPDATE" and table in ("FINGERTMP", "BIODATA") and pin:
            finger = parse_finger(table, words[3])
            if finger is None or pin not in self.users:
                return [], CommandResult(command.id, -1, verb)
            self.fingers.setdefault(pin, {})[finger.fid] = finger
        elif action == "DELETE" and table in ("FINGERTMP", "BIODATA") and pin:
            self.fingers.get(pin, {}).pop(_int(field_value(fields, "FID") or field_value(fields, "No")), None)
        elif action == "QUERY" and table == "USERINFO":
            chosen = [pin] if pin else sorted(self.users)
            return [UserLine(self.users[p]).line() for p in chosen if p in self.users], CommandResult(command.id, 0, verb)
        elif action == "QUERY" and table in ("FINGERTMP", "BIODATA"):
            chosen = [pin] if pin else sorted(self.fingers)
            return [f.line() for p in chosen for f in self.fingers.get(p, {}).values()], CommandResult(command.id, 0, verb)
        else:
            return [], CommandResult(command.id, UNKNOWN_COMMAND, verb)
        return [], CommandResult(command.id, 0, verb)

    def _execute_v3(self, command: PushCommand, words: list[str]) -> tuple[list[str], CommandResult]:
        """A 3.x DATA command: tables are named as the access-control document names them (``user``,
        ``templatev10``, ``biodata``); any other, 2.x's USERINFO and FINGERTMP among them, is -629."""
        action, table = (words[1], words[2]) if len(words) > 2 else ("", "")
        fields = parse_fields(words[3]) if len(words) > 3 else ()
        pin = field_value(fields, "Pin")
        if action == "QUERY" and table.startswith("tablename="):
            asked = v3.parse_query(table)
            if asked.get("tablename") == v3.USER:
                lines = [v3.user_record(self.users[p]) for p in sorted(self.users)]
            elif asked.get("tablename") == v3.TEMPLATE:
                lines = [v3.template_record(f) for p in sorted(self.fingers) for f in self.fingers[p].values() if f.kind == "FP"]
            elif asked.get("tablename") == v3.BIODATA:
                lines = [v3.template_record(f) for p in sorted(self.fingers) for f in self.fingers[p].values() if f.kind == "BIODATA"]
            else:
                return [], CommandResult(command.id, v3.REFUSED_TABLE, "DATA")
            return lines, CommandResult(command.id, len(lines), "DATA")
        if table == v3.AUTHORIZE and action == "UPDATE" and pin:
            self.authorized[pin] = field_value(fields, "AuthorizeDoorId") or "1"
        elif table == v3.AUTHORIZE and action == "DELETE" and pin:
            self.authorized.pop(pin, None)
        elif table == v3.USER and action == "UPDATE" and pin:
            held = dict(self.users.get(pin, ()) or self._v3_person(pin))
            held.update((_V3_STORED[k.lower()], v) for k, v in fields if k.lower() in _V3_STORED)
            self.users[pin] = tuple(held.items())
        elif table == v3.USER and action == "DELETE" and pin:
            self.users.pop(pin, None)  # its templates and door rights stay: the document has the server delete them first
        elif table in (v3.TEMPLATE, v3.BIODATA) and action == "UPDATE" and pin:
            if table == v3.TEMPLATE:
                rebuilt = (("PIN", pin), ("FID", field_value(fields, "FingerID")), ("Valid", field_value(fields, "Valid") or "1"),
                           ("TMP", field_value(fields, "Template")))
                finger = parse_finger("FP", format_fields(rebuilt))
            else:
                finger = parse_finger("BIODATA", words[3])
            if finger is None:
                return [], CommandResult(command.id, -1, "DATA")
            if pin not in self.users:
                return [], CommandResult(command.id, NO_USER, "DATA")
            self.fingers.setdefault(pin, {})[finger.fid] = finger
        elif table in (v3.TEMPLATE, v3.BIODATA) and action == "DELETE" and pin:
            fid = field_value(fields, "FingerID") or field_value(fields, "No")
            if fid:
                self.fingers.get(pin, {}).pop(_int(fid), None)
            else:
                self.fingers.pop(pin, None)
        else:
            return [], CommandResult(command.id, v3.REFUSED_TABLE, "DATA")
        return [], CommandResult(command.id, 0, "DATA")

    def _v3_person(self, pin: str, name: str = "", password: str = "", card: int = 0) -> tuple[tuple[str, str], ...]:
        """A 3.x user record as the device keeps it: uid (its slot) first, the document's field order."""
        uid = 1 + max((_int(field_value(f, "uid")) for f in self.users.values()), default=0)
        return (("uid", str(uid)), ("cardno", str(card) if card else ""), ("pin", pin), ("password", password), ("group", "1"),
                ("starttime", "0"), ("endtime", "0"), ("name", name), ("privilege", "0"), ("disable", "0"), ("verify", "0"))

    # -- the keypad ------------------------------------------------------------------------------------

    def enroll(self, pin: str, name: str = "", password: str = "", card: int = 0, fingers: tuple[int, ...] = (), now: datetime | None = None,
               face: bool = False, photo: int = 0) -> None:
        """``face``: look into its camera (its algorithm's templates); ``photo``: take a picture of that many bytes."""
        if pin in self.users:
            raise ValueError(f"user {pin} is enrolled already: use edit")
        self._pictures(pin, face, photo)  # first: a device without a camera refuses before anything changed
        if self.version == 3:
            self.users[pin] = self._v3_person(pin, name, password, card)
            self.authorized[pin] = "1"  # enrolled here: door 1, as the device's own menu grants
        else:
            self.users[pin] = (("PIN", pin), ("Name", name), ("Pri", "0"), ("Passwd", password), ("Card", str(card) if card else ""),
                               ("Grp", "1"), ("TZ", "0000000100000000"), ("Verify", "0"))
        for fid in fingers:
            self._scan(pin, fid)
        self._log_change(OP_ENROLL_USER, pin, now)

    def edit(self, pin: str, now: datetime | None = None, add_fingers: tuple[int, ...] = (), remove_fingers: tuple[int, ...] = (),
             face: bool = False, photo: int = 0, **changes: str) -> None:
        """``face``: enrol the face again (its algorithm's templates); ``photo``: take a new picture of that many bytes."""
        if pin not in self.users:
            raise ValueError(f"no user {pin} on this device")
        self._pictures(pin, face, photo)
        held = dict(self.users[pin])
        held.update({_V3_NAMES.get(k, k): v for k, v in changes.items()} if self.version == 3 else changes)
        self.users[pin] = tuple(held.items())
        for fid in add_fingers:
            self._scan(pin, fid)
        for fid in remove_fingers:
            self.fingers.get(pin, {}).pop(fid, None)
        self._log_change(OP_CHANGE_USER, pin, now)

    def delete(self, pin: str, now: datetime | None = None) -> None:
        if pin not in self.users:
            raise ValueError(f"no user {pin} on this device")
        del self.users[pin]
        self.fingers.pop(pin, None)
        self.authorized.pop(pin, None)
        self.faces.pop(pin, None)
        self.photos.pop(pin, None)
        if self.version == 2:  # 3.x has no operation log: the server learns of it only by listing the device
            self.oplog.append(OpLog(OP_DELETE_USER, "0", self._time(now), (pin,)).line())

    def verify(self, pin: str, how: str = "finger", now: datetime | None = None) -> None:
        """Someone verifies. A 3.x device lets through only a person with door rights; anyone else is
        logged as event 22 (not in a valid time period), which the server is told but is no punch."""
        line = Punch(pin, self._time(now), 0, VERIFY[how]).line()
        if self.version == 3:
            line += f"\t{0 if pin in self.authorized else 22}"
        self.punches.append((self.next_stamp, line))
        self.next_stamp += 1

    def wipe(self) -> None:
        """A factory reset: users, templates, logs and stamps gone; the serial stays."""
        self.users.clear()
        self.fingers.clear()
        self.authorized.clear()
        self.faces.clear()
        self.photos.clear()
        self.punches.clear()
        self.oplog.clear()
        self.next_stamp, self.sent_stamp = 1, 0

    def _scan(self, pin: str, fid: int) -> None:
        template = random.Random(f"{self.serial}/{pin}/{fid}").randbytes(TEMPLATE_BYTES)
        self.fingers.setdefault(pin, {})[fid] = FingerLine(pin, fid, 1, template, "BIODATA" if self.biodata else "FP")

    def _pictures(self, pin: str, face: bool, photo: int) -> None:
        if face:
            if self.face is None:
                raise ValueError("this device has no face algorithm (--face TYPE:VERSION)")
            type_, major, minor = self.face
            rng = random.Random(f"{self.serial}/{pin}/face")
            self.faces[pin] = {i: FaceLine(pin, type_, i, rng.randbytes(FACE_TEMPLATE_BYTES), major, minor) for i in range(FACE_TEMPLATES.get(type_, 1))}
        if photo:
            self.photos[pin] = PhotoLine(pin, random.Random(f"{self.serial}/{pin}/photo/{photo}").randbytes(photo))

    def _log_change(self, code: int, pin: str, now: datetime | None) -> None:
        if self.version == 3:  # tabledata: the user record, then its templates
            self.oplog.append(v3.user_record(self.users[pin]))
            self.oplog.extend(v3.template_record(f) for f in self.fingers.get(pin, {}).values())
            return
        lines = [OpLog(code, "0", self._time(now), (pin,)).line(), UserLine(self.users[pin]).line()]
        lines += [f.line() for f in self.fingers.get(pin, {}).values()]
        lines += [f.line() for f in self.faces.get(pin, {}).values()]
        lines += [self.photos[pin].line()] if pin in self.photos else []
        self.oplog.extend(lines)

    def _time(self, now: datetime | None) -> str:
        """The device's clock: UTC shifted by the TimeZone the server gave."""
        now = now or datetime.now(timezone.utc)
        return (now + timedelta(hours=_int(self.options.get("TimeZone")))).strftime(TIME_FORMAT)

    # -- flash ---------------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write the device to ``path`` atomically (a crash leaves the old file or the new one)."""
        state = dict(serial=self.serial, users={p: list(map(list, f)) for p, f in self.users.items()},
                     fingers={p: {str(fid): [f.valid, base64.b64encode(f.template).decode(), f.kind] for fid, f in fs.items()}
                              for p, fs in self.fingers.items()},
                     punches=self.punches, next_stamp=self.next_stamp, sent_stamp=self.sent_stamp, oplog=self.oplog, biodata=self.biodata,
                     version=self.version, authorized=self.authorized,
                     face=self.face, faces={p: [f.line() for f in fs.values()] for p, fs in self.faces.items()},
                     photos={p: photo.line() for p, photo in self.photos.items()})
        folder = os.path.dirname(os.path.abspath(path))
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)

    @classmethod
    def load(cls, path: str, serial: str) -> "PushTerminal":
        if not os.path.exists(path):
            return cls(serial)
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state["serial"] != serial:
            raise ValueError(f"{path} holds device {state['serial']}, not {serial}")
        device = cls(serial, biodata=state.get("biodata", False), version=state.get("version", 2), authorized=state.get("authorized", {}))
        device.users = {p: tuple(tuple(kv) for kv in f) for p, f in state["users"].items()}
        device.fingers = {p: {int(fid): FingerLine(p, int(fid), v, base64.b64decode(t), k) for fid, (v, t, k) in fs.items()}
                          for p, fs in state["fingers"].items()}
        if state.get("face"):
            type_, major, minor = state["face"]
            device.face = (int(type_), str(major), str(minor))
        device.faces = {p: {f.index: f for line in lines if (f := parse_face(line.split(" ", 1)[1])) is not None}
                        for p, lines in state.get("faces", {}).items()}
        device.photos = {p: photo for p, line in state.get("photos", {}).items() if (photo := parse_photo("USERPIC", line.split(" ", 1)[1]))}
        device.punches = [tuple(p) for p in state["punches"]]
        device.next_stamp, device.sent_stamp, device.oplog = state["next_stamp"], state["sent_stamp"], state["oplog"]
        return device


def _punch(line: str) -> Punch:
    """A punch as the device logged it (its ATTLOG form), to report it in another form."""
    pin, time, status, verify, *_ = line.split("\t") + ["0", "0"]
    return Punch(pin, time, _int(status), _int(verify))


def _int(text) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return 0
