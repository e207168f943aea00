"""Commands a PUSH server queues for a device, and the results the device reports
(docs/zk-push.md, "Commands").

A device fetches commands with ``GET /iclock/getrequest``: the answer is one ``C:<id>:<command>``
per line. It carries each out and posts ``ID=<id>&Return=<code>&CMD=<verb>`` per command to
``/iclock/devicecmd``; ``Return=0`` is success, a negative code a failure.
"""

from dataclasses import dataclass, field

from protocol.zk.push.lines import BadLine, FaceLine, FingerLine, PhotoLine, format_fields

CHECK, INFO, REBOOT = "CHECK", "INFO", "REBOOT"


@dataclass(frozen=True)
class PushCommand:
    """One command: its id (a positive number the server chooses, unique per device) and text."""

    id: int
    text: str

    @property
    def verb(self) -> str:
        """What ``CMD=`` names in the result: the first word (``DATA``, ``CHECK``, ``INFO``, ...)."""
        return self.text.split(" ", 1)[0]

    def line(self) -> str:
        return f"C:{self.id}:{self.text}"


@dataclass(frozen=True)
class CommandResult:
    """``ID=..&Return=..&CMD=..`` and any ``key=value`` lines after it (INFO's answer)."""

    id: int
    code: int
    cmd: str = ""
    data: tuple[tuple[str, str], ...] = field(default=())

    def line(self) -> str:
        head = f"ID={self.id}&Return={self.code}&CMD={self.cmd}"
        return "\n".join([head, *(f"{k}={v}" for k, v in self.data)])


def update_user(fields) -> str:
    return "DATA UPDATE USERINFO " + format_fields(fields)


def delete_user(pin: str) -> str:
    return "DATA DELETE USERINFO " + format_fields((("PIN", pin),))


def update_finger(finger: FingerLine) -> str:
    """``DATA UPDATE FINGERTMP`` (PUSH 2.x) or ``DATA UPDATE BIODATA``, as the finger's kind says."""
    line = finger.line()
    table = "BIODATA" if finger.kind == "BIODATA" else "FINGERTMP"
    return f"DATA UPDATE {table} " + line.split(" ", 1)[1]


def delete_finger(pin: str, fid: int) -> str:
    return "DATA DELETE FINGERTMP " + format_fields((("PIN", pin), ("FID", str(fid))))


def query_users(pin: str | None = None) -> str:
    """Ask for users (all, or one): the device uploads USER lines as OPERLOG, then reports the result."""
    return "DATA QUERY USERINFO" + (" " + format_fields((("PIN", pin),)) if pin is not None else "")


def query_fingers(pin: str | None = None) -> str:
    return "DATA QUERY FINGERTMP" + (" " + format_fields((("PIN", pin),)) if pin is not None else "")


def update_face(face: FaceLine) -> str:
    """``DATA UPDATE BIODATA Pin=..\tNo=..\tIndex=..\t...\tType=9\tMajorVer=..\tMinorVer=..\tFormat=..\tTmp=..``."""
    return "DATA UPDATE BIODATA " + face.line().split(" ", 1)[1]


def update_photo(photo: PhotoLine) -> str:
    """``DATA UPDATE USERPIC PIN=..\tSize=..\tContent=..``: ``Size`` the length of the base64 text."""
    _, _, rest = photo.line().partition(" ")
    fields = [f for f in rest.split("\t") if f.split("=", 1)[0] in ("PIN", "Size", "Content")]
    return "DATA UPDATE USERPIC " + "\t".join(fields)


def query_faces(face_type: int) -> str:
    """Ask for every face template of one BIODATA Type: the device uploads them, then reports the result."""
    return "DATA QUERY BIODATA " + format_fields((("Type", str(face_type)),))


def query_photos() -> str:
    return "DATA QUERY USERPIC"


def render_commands(commands: list[PushCommand]) -> bytes:
    """A getrequest answer: the commands, or ``OK`` when there are none."""
    if not commands:
        return b"OK"
    return ("\n".join(c.line() for c in commands) + "\n").encode("utf-8")


def parse_commands(body: bytes) -> list[PushCommand]:
    """A getrequest answer as the device reads it (the emulated device uses it); ``OK`` is none."""
    commands = []
    for raw in body.decode("utf-8").splitlines():
        head, sep, rest = raw.partition(":")
        number, sep2, text = rest.partition(":")
        if head == "C" and sep and sep2 and number.strip().isdigit():
            commands.append(PushCommand(int(number), text))
    return commands


def parse_results(body: bytes) -> tuple[list[CommandResult], list[BadLine]]:
    """A devicecmd body: results, each an ``ID=..&Return=..&CMD=..`` line and the ``key=value``
    lines that follow it until the next result."""
    results: list[CommandResult] = []
    bad: list[BadLine] = []
    current: dict | None = None

    def close():
        if current is not None:
            results.append(CommandResult(current["id"], current["code"], current["cmd"], tuple(current["data"])))

    for number, raw in enumerate(body.decode("utf-8", "replace").splitlines(), start=1):
        line = raw.strip("\r\x00 ")
        if not line:
            continue
        if line.upper().startswith("ID="):
            close()
            current = None
            pairs = {k.strip().upper(): v.strip() for k, _, v in (p.partition("=") for p in line.split("&"))}
            try:
                current = dict(id=int(pairs["ID"]), code=int(pairs.get("RETURN", "")), cmd=pairs.get("CMD", ""), data=[])
            except (KeyError, ValueError):
                bad.append(BadLine(number, line[:200], "a result needs a numeric ID and Return"))
            continue
        key, sep, value = line.lstrip("~").partition("=")
        if current is not None and sep:
            current["data"].append((key.strip(), value.strip()))
        else:
            bad.append(BadLine(number, line[:200], "neither a result nor a key=value line after one"))
    close()
    return results, bad
