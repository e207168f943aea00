"""PushServer: the server's side of the conversation with one PUSH device, with no I/O.

A device calls in; the server never calls it. Requests and ``now`` go in, events come out, and
the answers are built from what the caller decided, as in h11::

    server = PushServer("A1B2C3", timing)
    event = server.receive(Request("POST", "/iclock/cdata", {"SN": "A1B2C3", "table": "ATTLOG"}, body), now=clock())
    ...                                      # AttendanceUploaded: store it, then answer
    answer = server.ok(len(event.punches))   # "OK: 3", only once stored
    commands = server.commands_to_send(now=clock())   # on a CommandsWanted (getrequest)
    for expired in server.expired(now=clock()): ...   # commands the device never answered

What the server owes the device (commands) is queued here, bounded, each sent again after
``command_s`` without a result and given up after ``command_attempts`` sends. A result is
matched to its command by id once: a second result for it, or one for an id never sent, is a
``StrayResult`` (a command ``take`` resumed counts as sent: an earlier run may have sent it).
``RequestError`` is the remote's fault and carries the HTTP status to answer. docs/zk-push.md is
the spec.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

from protocol.errors import ProtocolError
from protocol.zk.push import commands as cmd
from protocol.zk.push.commands import CommandResult, PushCommand
from protocol.zk.push import v3
from protocol.zk.push.lines import BadLine, Punch, parse_attlog, parse_operlog

MAX_BODY_BYTES = 8 * 1024 * 1024  # a device posts at most its MaxPostSize; 10,000 ATTLOG lines are about 400 kB
OPERATION_TABLES = frozenset({"OPERLOG", "USERINFO", "FINGERTMP", "BIODATA", "USERPIC", "BIOPHOTO"})
ACKNOWLEDGED_TABLES = frozenset({"ATTPHOTO", "ERRORLOG", "FACE", "RTSTATE"})
# What a device is asked to post as ``table=options`` after its hello: which biometrics it has, and their algorithms.
PUSH_OPTIONS = ("FaceFunOn", "MultiBioDataSupport", "MultiBioVersion")
# The INFO parameter of a getrequest, by position (PUSH 2.x firmware; later positions vary).
INFO_FIELDS = ("firmware", "users", "fingers", "punches", "ip", "fp_version", "face_version", "face_enroll", "faces")


class RequestError(ProtocolError):
    """A request the device got wrong: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class QueueFull(ProtocolError):
    """The device's command queue is at its bound: try again once it fetched what waits."""


@dataclass(frozen=True)
class Request:
    method: str  # "GET" or "POST"
    path: str  # "/iclock/cdata"; a ".aspx" suffix (older firmware) is the same endpoint
    query: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class PushTiming:
    """What the initialization answer tells the device, and how long the server waits for results."""

    delay_s: int = 10  # Delay: seconds between two getrequests
    error_delay_s: int = 30  # ErrorDelay: seconds before retrying after a failed request
    realtime: bool = True  # Realtime: upload each record at once (else at TransTimes / TransInterval)
    trans_interval_min: int = 1  # TransInterval: minutes between uploads when not real-time
    trans_times: str = "00:00;14:05"  # TransTimes: times of day to upload when not real-time
    timezone_h: int = 0  # TimeZone: the offset of the device's clock from UTC, hours
    command_s: float = 60.0  # a command without a result by then is sent again
    command_attempts: int = 3  # sends before it is given up
    max_commands: int = 4096  # commands waiting per device
    per_request: int = 64  # commands per getrequest answer
    # ... and bytes: ZKTeco's attendance PUSH document (V5.8) caps one download at 900 KB, which 64
    # photo commands (22 kB each) would pass; the first command goes whatever its size
    per_request_bytes: int = 900 * 1000


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitRequested:
    """``GET /iclock/cdata?SN=..&options=all``, or 3.x ``/iclock/push`` (``endpoint``): answer
    ``init_answer``, or for a 3.x device ``v3_answer``."""

    push_version: str
    language: str
    endpoint: str = "cdata"


@dataclass(frozen=True)
class Registered:
    """v3 ``POST /iclock/registry``: the device's description, ``key=value`` by comma."""

    info: dict[str, str]


@dataclass(frozen=True)
class AttendanceUploaded:
    stamp: str | None
    punches: list[Punch]
    bad: list[BadLine]
    table: str = "ATTLOG"  # or 3.x "rtlog", answered a plain OK


@dataclass(frozen=True)
class OperationsUploaded:
    """OPERLOG (or USERINFO, FINGERTMP, BIODATA, v3 querydata): OPLOG, USER and finger lines in order."""

    table: str
    stamp: str | None
    items: list
    bad: list[BadLine]


@dataclass(frozen=True)
class TableUploaded(OperationsUploaded):
    """3.x ``tabledata`` upload or ``querydata`` answer of a person's records (``table`` is user,
    templatev10 or biodata): taken as OPERLOG lines are, answered ``v3.table_answer``."""


@dataclass(frozen=True)
class TableAcknowledged:
    """3.x ``tabledata`` of a table the gateway does not use (photos, error logs): ``<table>=<count>``."""

    table: str
    count: int


@dataclass(frozen=True)
class OtherUpload:
    """A table the gateway does not use (punch photos, error logs, FACE): acknowledged and left."""

    table: str
    size: int


@dataclass(frozen=True)
class OptionsUploaded:
    """``POST cdata?table=options``: ``key=value`` by comma (``MultiBioVersion=0:10.0:0:...:58.0``)."""

    options: dict[str, str]


@dataclass(frozen=True)
class CommandsWanted:
    """``GET /iclock/getrequest``: answer ``render_commands(commands_to_send(now))``."""

    info: dict[str, str]


@dataclass(frozen=True)
class Done:
    command: PushCommand
    result: CommandResult


@dataclass(frozen=True)
class StrayResult:
    """A result for no command waiting: answered twice, for a command given up, or never sent."""

    result: CommandResult


@dataclass(frozen=True)
class ResultsReported:
    outcomes: list  # Done and StrayResult, in the order reported
    bad: list[BadLine]


@dataclass(frozen=True)
class Pinged:
    """``GET /iclock/ping``: the device is busy uploading and says it is alive."""


@dataclass
class _Waiting:
    command: PushCommand
    sent_at: float | None = None
    sends: int = 0
    sent_before: bool = False  # resumed: an earlier run or online period may have sent it, so its result counts


@dataclass
class PushServer:
    serial: str
    timing: PushTiming = PushTiming()
    charset: str | None = None  # for lines that are not UTF-8 (docs/zk-push.md, "Character sets")
    first_id: int = 1  # command ids count from here: let it differ per gateway start
    _waiting: "OrderedDict[int, _Waiting]" = field(default_factory=OrderedDict)
    _next_id: int = 0

    def __post_init__(self):
        self._next_id = self.first_id

    # -- requests in --------------------------------------------------------------------------------

    def receive(self, request: Request, now: float):
        """The event a request stands for; RequestError when it is not one the protocol has."""
        if len(request.body) > MAX_BODY_BYTES:
            raise RequestError(413, f"a body over {MAX_BODY_BYTES} bytes")
        endpoint = endpoint_of(request.path)
        query = {k.lower(): v for k, v in request.query.items()}
        if endpoint == "cdata" and request.method == "GET":
            return InitRequested(query.get("pushver", ""), query.get("language", ""))
        if endpoint == "push":
            return InitRequested(query.get("pushver", v3.PUSH_VERSION), query.get("language", ""), "push")
        if endpoint == "registry" and request.method == "POST":
            return Registered(_comma_pairs(request.body))
        if endpoint == "ping":
            return Pinged()
        if endpoint == "getrequest":
            values = query.get("info", "").split(",")
            return CommandsWanted({name: v.strip() for name, v in zip(INFO_FIELDS, values) if v.strip()})
        if endpoint == "devicecmd" and request.method == "POST":
            results, bad = cmd.parse_results(request.body)
            return ResultsReported([self._settle(r) for r in results], bad)
        if endpoint == "querydata" and request.method == "POST":
            if query.get("tablename"):
                return self._table(query["tablename"], request.body)
            if query.get("type", "").lower() == "options":
                return OtherUpload("OPTIONS", len(request.body))
            items, bad = parse_operlog(request.body, self.charset)
            return OperationsUploaded("QUERYDATA", None, items, bad)
        if endpoint == "cdata" and request.method == "POST":
            table = query.get("table", "")
            if table.lower().startswith("tablename="):  # the 3.x document's own notation of table=tabledata&tablename=..
                return self._table(table.partition("=")[2], request.body)
            table = table.upper()
            stamp = query.get("stamp") or query.get("opstamp")
            if table == "TABLEDATA":
                return self._table(query.get("tablename", ""), request.body)
            if table == "RTLOG":
                punches, bad = v3.parse_rtlog(request.body, self.charset)
                return AttendanceUploaded(None, punches, bad, "rtlog")
            if table == "ATTLOG":
                punches, bad = parse_attlog(request.body, self.charset)
                return AttendanceUploaded(stamp, punches, bad)
            if table == "OPTIONS":
                return OptionsUploaded(_comma_pairs(request.body))
            if table in OPERATION_TABLES:
                items, bad = parse_operlog(request.body, self.charset)
                return OperationsUploaded(table, stamp, items, bad)
            if table in ACKNOWLEDGED_TABLES:
                return OtherUpload(table, len(request.body))
            raise RequestError(400, f"unknown table {table[:40]!r}")
        raise RequestError(404, f"no endpoint {request.method} {request.path[:80]}")

    def _table(self, tablename: str, body: bytes):
        name = tablename.strip().lower()
        if not name:
            raise RequestError(400, "a tabledata upload without tablename")
        if name in v3.RECORD_TABLES:
            items, bad = v3.parse_table(name, body, self.charset)
            return TableUploaded(name, None, items, bad)
        return TableAcknowledged(tablename.strip()[:40], sum(1 for line in body.split(b"\n") if line.strip()))

    # -- answers out ---------------------------------------------------------------------------------

    def init_answer(self, stamps: dict[str, str], push_version: str = "") -> bytes:
        """The initialization answer: where the server's copy of each log ends, and how to talk."""
        t = self.timing
        lines = [
            f"GET OPTION FROM: {self.serial}",
            f"ATTLOGStamp={stamps.get('ATTLOG') or 'None'}",
            f"OPERLOGStamp={stamps.get('OPERLOG') or 'None'}",
            "ATTPHOTOStamp=None",
            f"ErrorDelay={t.error_delay_s}",
            f"Delay={t.delay_s}",
            f"TransTimes={t.trans_times}",
            f"TransInterval={t.trans_interval_min}",
            "TransFlag=TransData AttLog\tOpLog\tEnrollUser\tChgUser\tEnrollFP\tChgFP\tFACE\tUserPic\tBioPhoto",
            f"TimeZone={t.timezone_h}",
            f"Realtime={1 if t.realtime else 0}",
            "Encrypt=0",
        ]
        if push_version:
            lines.append("ServerVer=2.4.1")
            lines.append("PushProtVer=2.4.1")
            lines.append("PushOptionsFlag=1")
            lines.append("PushOptions=" + ",".join(PUSH_OPTIONS))
        return ("\n".join(lines) + "\n").encode("utf-8")

    @staticmethod
    def ok(count: int | None = None) -> bytes:
        return b"OK" if count is None else f"OK: {count}".encode()

    def v3_answer(self, hello: bool = False, registered: bool = True) -> bytes:
        """A 3.x device's configuration (``/iclock/push``), or its hello's answer (``GET cdata``,
        ``hello``): the configuration after ``registry=ok`` and its RegistryCode once it registered,
        just ``OK`` before (which makes it register). ``RequestDelay`` is 2.x's ``Delay``; there is
        no stamp: an access device uploads what it has not uploaded, and each punch is stored once anyway."""
        if hello and not registered:
            return b"OK"
        t = self.timing
        lines = ["registry=ok", f"RegistryCode={self.serial}"] if hello else []
        lines += [f"ServerVersion={v3.PUSH_VERSION}", "ServerName=gateway", f"PushProtVer={v3.PUSH_VERSION}", f"ErrorDelay={t.error_delay_s}",
                  f"RequestDelay={t.delay_s}", f"TransTimes={t.trans_times}", f"TransInterval={t.trans_interval_min}",
                  "TransTables=User Transaction templatev10", f"Realtime={1 if t.realtime else 0}", f"SessionID={self.serial}",
                  "TimeoutSec=10"]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def registry_answer(self) -> bytes:
        """v3: a RegistryCode names the device's registration; PUSH has no secret (docs), so it is its serial."""
        return f"RegistryCode={self.serial}".encode()

    # -- commands ------------------------------------------------------------------------------------

    def queue(self, text: str) -> PushCommand:
        """Queue a command; QueueFull at the bound."""
        if len(self._waiting) >= self.timing.max_commands:
            raise QueueFull(f"{len(self._waiting)} commands wait for device {self.serial}")
        command = PushCommand(self.new_ids(1)[0], text)
        self._waiting[command.id] = _Waiting(command)
        return command

    def new_ids(self, count: int) -> list[int]:
        """Ids for commands the caller stores before it hands them to ``take`` (none in use)."""
        ids = []
        while len(ids) < count:
            if self._next_id not in self._waiting:
                ids.append(self._next_id)
            self._next_id += 1
        return ids

    def take(self, commands: list[PushCommand], sent_before: bool = False) -> None:
        """Queue commands with ids of their own (stored ones; ``sent_before``: resumed, and the device
        may answer them before they are sent again); one waiting already stays as it is. The caller
        bounds them (it refused what would not fit before storing it)."""
        for command in commands:
            if command.id not in self._waiting:
                self._waiting[command.id] = _Waiting(command, sent_before=sent_before)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def commands_to_send(self, now: float) -> list[PushCommand]:
        """The commands for a getrequest answer: never sent, or sent ``command_s`` ago without a result."""
        t = self.timing
        chosen, size = [], 0
        for entry in self._waiting.values():
            if len(chosen) >= t.per_request:
                break
            if entry.sends >= t.command_attempts:
                continue
            if entry.sent_at is None or now - entry.sent_at >= t.command_s:
                line_bytes = len(entry.command.line().encode("utf-8")) + 1
                if chosen and size + line_bytes > t.per_request_bytes:
                    break
                entry.sent_at, entry.sends, size = now, entry.sends + 1, size + line_bytes
                chosen.append(entry.command)
        return chosen

    def expired(self, now: float) -> list[PushCommand]:
        """Commands sent ``command_attempts`` times with no result in time: given up, removed."""
        t = self.timing
        gone = [e.command for e in self._waiting.values() if e.sends >= t.command_attempts and now - e.sent_at >= t.command_s]
        for command in gone:
            del self._waiting[command.id]
        return gone

    def discard(self, command_ids) -> None:
        """Forget these commands (a listing in the wrong dialect): a late result for one is a StrayResult."""
        for command_id in command_ids:
            self._waiting.pop(command_id, None)

    def drop_all(self) -> list[PushCommand]:
        """Forget every command (the device went away for good): the caller fails what waited on them."""
        gone = [e.command for e in self._waiting.values()]
        self._waiting.clear()
        return gone

    def next_deadline(self) -> float | None:
        sent = [e.sent_at + self.timing.command_s for e in self._waiting.values() if e.sent_at is not None]
        return min(sent) if sent else None

    def _settle(self, result: CommandResult):
        entry = self._waiting.pop(result.id, None)
        if entry is None or (entry.sent_at is None and not entry.sent_before):
            if entry is not None:  # a result for a command never sent: keep waiting for its own
                self._waiting[result.id] = entry
                self._waiting.move_to_end(result.id, last=False)
            return StrayResult(result)
        return Done(entry.command, result)


def endpoint_of(path: str) -> str:
    """``/iclock/cdata.aspx`` -> ``cdata``."""
    return path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".aspx").lower()


def _comma_pairs(body: bytes) -> dict[str, str]:
    pairs = {}
    for chunk in body.decode("utf-8", "replace").replace("\n", ",").replace("\t", ",").split(","):
        key, sep, value = chunk.strip().partition("=")
        if sep and key:
            pairs[key.lstrip("~")] = value
    return pairs
