"""gateway-check --zk: check a ZKTeco device (real or emulated) through protocol.zk's ZkClient.

Read-only by default: connect (with the comm key), firmware version, serial number and
fingerprint algorithm, the counts, then the users, templates and attendance log, each checked
against the counts. ``--write`` also stores a test user with a reserved user id and a template,
reads both back and removes them, and checks the device holds what it held before; it refuses to
touch a device that already holds that user id. Exit status as the native check: 0 every check
passed, 1 some failed, 2 usage or connection problems.

``--udp`` talks to the device over UDP, as old devices need. ``--record FILE`` writes every chunk
of the session both ways, with times (protocol/zk/capture.py, docs/zk.md section "Captures"):
what a person with a device sends us. ``--replay FILE`` runs the read checks against such a
capture instead of a device, so the device's answers are met again, byte for byte.
"""

import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from protocol.zk.bodies import Sizes, option_request, parse_option_assignment, parse_sizes, parse_version, uid_body, uid_finger
from protocol.zk.capture import Capture, CaptureError, CaptureWriter, read_capture
from protocol.zk.client import Framing, State, ZkClient
from protocol.zk.commands import Command, ReplyCode, name_of
from protocol.zk.commkey import MAX_COMM_KEY
from protocol.zk.errors import BodyError, LocalProtocolError
from protocol.zk.events import Connected, DeviceQuirk, OverLimit, ProtocolViolation, RealtimeEvent, Reply, RequestFailed, TimedOut
from protocol.zk.records import Template, User, encode_user

DEFAULT_PORT = 4370
# The reserved test user: numeric, so a 28-byte firmware (numeric user ids, 8-byte names) holds it too.
CHECK_USER_ID = "999999999"
CHECK_USER_NAME = "gw-check"
CHECK_FINGER = 9  # the little finger of the left hand: the slot people enrol least
CHECK_TEMPLATE = bytes(range(256)) * 2  # made up: a device may refuse it, and that is reported


class CheckFailed(Exception):
    pass


class Refused(CheckFailed):
    """The device answered a request with a refusal: ``code`` is its reply code."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.code = code


def parse_address(text: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (default port 4370); ValueError with the reason otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST or HOST:PORT, got {text!r}")
    return host, int(port)


class SocketWire:
    """A blocking socket to the device: TCP, or a connected UDP socket (a datagram a packet),
    each chunk recorded to ``recorder`` when one is given."""

    def __init__(self, sock: socket.socket, datagrams: bool, recorder: CaptureWriter | None = None):
        self.sock, self.datagrams, self.recorder = sock, datagrams, recorder

    def send(self, packets: list[bytes]) -> None:
        for chunk in packets if self.datagrams else [b"".join(packets)]:
            if chunk:
                self._record("out", chunk)
                self.sock.send(chunk) if self.datagrams else self.sock.sendall(chunk)

    def recv(self, timeout_s: float) -> bytes:
        """The next chunk; b"" when the device closed the connection; socket.timeout after ``timeout_s``."""
        self.sock.settimeout(timeout_s)
        data = self.sock.recv(65536)
        self._record("in", data)
        return data

    def _record(self, direction: str, data: bytes) -> None:
        if self.recorder is not None:
            self.recorder.record(direction, data, time.monotonic())


class ReplayWire:
    """A capture in place of the device: each ``recv`` gives the next chunk the device sent then,
    whatever was sent to it (the checks ask what they asked when it was recorded)."""

    def __init__(self, capture: Capture):
        self.datagrams = capture.transport == "udp"
        self._chunks = iter(capture.sent_by("in"))

    def send(self, packets: list[bytes]) -> None:
        pass

    def recv(self, timeout_s: float) -> bytes:
        chunk = next(self._chunks, None)
        return b"" if chunk is None else chunk.data  # the capture ends where the connection did


class Device:
    """One ZkClient conversation over a wire (a socket, or a capture): each operation runs to its one event."""

    def __init__(self, wire, comm_key: int, timeout_s: float):
        self.wire = wire
        self.client = ZkClient(comm_key, framing=Framing.UDP if wire.datagrams else Framing.TCP, timeout_s=timeout_s)
        self.violations: list[str] = []  # what the device sent that the protocol does not allow
        self.quirks: list[str] = []  # what it sent other than it announced, read as far as it goes

    def run(self, start: Callable[..., int]):
        """Start an operation (``start(now=...)`` returns its token) and return its result event;
        a refusal, a time-out or a closed connection is ``CheckFailed`` with the reason."""
        try:
            token = start(now=time.monotonic())
        except LocalProtocolError as exc:  # an earlier time-out or refusal ended the conversation
            raise CheckFailed(f"nothing more can be asked in this session: {exc}") from None
        while True:
            self.wire.send(self.client.data_to_send())
            for event in self._next_events():
                if isinstance(event, ProtocolViolation):
                    self.violations.append(event.reason)
                elif isinstance(event, DeviceQuirk):
                    self.quirks.append(event.detail)  # a count that disagrees with its table (pyzk #88), say
                elif isinstance(event, RealtimeEvent) or getattr(event, "token", None) != token:
                    continue  # an event nobody registered for, or an operation that was queued behind
                elif isinstance(event, RequestFailed):
                    if event.code is None:
                        raise CheckFailed(f"{event.reason}{self._noted()}")
                    raise Refused(f"{event.reason} ({name_of(event.code)})", event.code)
                elif isinstance(event, (TimedOut, OverLimit)):
                    raise CheckFailed(f"{event.reason}{self._noted()}")
                else:
                    self.wire.send(self.client.data_to_send())  # an acknowledgement of an event, say
                    return event

    def ok(self, command: int, data: bytes = b"") -> Reply:
        reply = self.run(lambda now: self.client.request(command, data, now=now))
        if not reply.ok:
            raise CheckFailed(f"{name_of(command)} answered {name_of(reply.code)}")
        return reply

    def _next_events(self) -> list:
        deadline = self.client.next_deadline()
        if deadline is None:
            raise CheckFailed("nothing awaited from the device")  # every operation sends first: a bug here
        wait = deadline - time.monotonic()
        if wait <= 0:
            return self.client.check_deadline(now=time.monotonic())
        try:
            data = self.wire.recv(wait)
        except socket.timeout:
            return self.client.check_deadline(now=time.monotonic())
        if not data:
            raise CheckFailed(f"the device closed the connection{self._noted()}")
        return self.client.receive(data, now=time.monotonic())

    def _noted(self) -> str:
        return f"; the device also sent: {self.violations[-1]}" if self.violations else ""


class Checks:
    """The checks, in order; each returns what it saw or raises ``CheckFailed``."""

    def __init__(self, device: Device, test_user_id: str):
        self.device = device
        self.test_user_id = test_user_id
        self.sizes: Sizes | None = None
        self.users: tuple[User, ...] = ()
        self.record_size = 72
        self.templates: tuple[Template, ...] = ()

    # -- read-only ------------------------------------------------------------------------

    def connect(self) -> str:
        d = self.device
        try:
            connected: Connected = d.run(d.client.connect)
        except Refused as exc:
            if exc.code != ReplyCode.ACK_UNAUTH:
                raise
            if d.client.comm_key:
                raise CheckFailed("the device refused the comm key given (ACK_UNAUTH)") from None
            raise CheckFailed("the device has a comm key (ACK_UNAUTH): give it with --comm-key K") from None
        key = "comm key accepted" if d.client.comm_key else "no comm key needed"
        return f"session {connected.session_id:#06x}, {key}"

    def version(self) -> str:
        reply = self.device.ok(Command.GET_VERSION)
        text = parse_version(reply.data)
        if not text:
            raise CheckFailed("GET_VERSION answered no text")
        return text

    def options(self) -> str:
        serial = self._option("~SerialNumber")
        if not serial:
            raise CheckFailed("the device does not report ~SerialNumber")
        algorithm = self._option("~ZKFPVersion")
        extra = ", ".join(f"{name} {value}" for name in ("~Platform", "~DeviceName") if (value := self._option(name)))
        fp = f"fingerprint algorithm {algorithm}" if algorithm else "no ~ZKFPVersion (old firmware: templates go to no other device)"
        return f"serial {serial}, {fp}" + (f", {extra}" if extra else "")

    def _option(self, name: str) -> str | None:
        reply = self.device.run(lambda now: self.device.client.request(Command.OPTIONS_RRQ, option_request(name), now=now))
        if reply.code in (ReplyCode.ACK_ERROR, ReplyCode.ACK_UNKNOWN):
            return None  # the device lacks the option
        if not reply.ok:
            raise CheckFailed(f"OPTIONS_RRQ {name} answered {name_of(reply.code)}")
        try:
            answered, value = parse_option_assignment(reply.data)
        except BodyError as exc:
            raise CheckFailed(f"OPTIONS_RRQ {name}: {exc}") from None
        if answered != name:
            raise CheckFailed(f"asked for option {name}, the device answered {answered}")
        return value

    def sizes_(self) -> str:
        d = self.device
        reply = d.ok(Command.GET_FREE_SIZES)
        try:
            s = self.sizes = parse_sizes(reply.data)
        except BodyError as exc:
            raise CheckFailed(str(exc)) from None
        for what, count, capacity in (("users", s.users, s.users_capacity), ("fingers", s.fingers, s.fingers_capacity),
                                      ("records", s.records, s.records_capacity)):
            if count < 0 or (capacity and count > capacity):
                raise CheckFailed(f"{count} {what} do not fit a capacity of {capacity}")
        return (f"{s.users}/{s.users_capacity} users, {s.fingers}/{s.fingers_capacity} fingers, "
                f"{s.records}/{s.records_capacity} attendance records")

    def users_(self) -> str:
        read = self._read_disabled(self.device.client.read_users)
        self.users, self.record_size = read.users, read.record_size
        ids = [u.user_id for u in read.users]
        if len(set(ids)) != len(ids):
            raise CheckFailed("the user table holds a user id twice")
        return f"{len(read.users)} users in {read.record_size}-byte records"

    def templates_(self) -> str:
        read = self._read_disabled(self.device.client.read_templates)
        self.templates = read.templates
        uids = {u.uid for u in self.users}
        strays = [t for t in read.templates if t.uid not in uids]
        if len(read.templates) != read.sizes.fingers:
            self.device.quirks.append(f"the template table holds {len(read.templates)} templates, the counts say {read.sizes.fingers}")
        if strays:
            raise CheckFailed(f"{len(strays)} templates belong to no user (uid {strays[0].uid})")
        return f"{len(read.templates)} templates, every one of a user read"

    def attendance(self) -> str:
        read = self._read_disabled(self.device.client.read_attendance)
        latest = max((r.timestamp for r in read.records), default=None)
        return f"{len(read.records)} records of {read.record_size} bytes" + (f", the latest at {latest}" if latest else "")

    def _read_disabled(self, read):
        """A table read inside DISABLEDEVICE / ENABLEDEVICE, so nobody enrols between count and table."""
        d = self.device
        d.ok(Command.DISABLEDEVICE)
        try:
            return d.run(read)
        finally:
            d.ok(Command.ENABLEDEVICE)

    # -- --write ----------------------------------------------------------------------------

    def write(self) -> str:
        """Store the test user and a template, read both back, remove them, and compare the device
        with what it held before."""
        if any(u.user_id == self.test_user_id for u in self.users):
            raise CheckFailed(f"user id {self.test_user_id} is already on the device: left alone (another: --test-user-id)")
        taken = {u.uid for u in self.users}
        uid = next((n for n in range(1, 0x10000) if n not in taken), None)
        if uid is None:
            raise CheckFailed("no free uid on the device")
        user = User(uid, self.test_user_id, CHECK_USER_NAME, group_id="1")
        template = Template(uid, CHECK_FINGER, CHECK_TEMPLATE)
        try:
            encoded = encode_user(user, self.record_size)
        except BodyError as exc:
            raise CheckFailed(f"the test user does not fit this device's records: {exc}") from None
        before = (self.users, self.templates)
        seen = []
        try:
            self.device.ok(Command.USER_WRQ, encoded)
            self.device.ok(Command.REFRESHDATA)
            self.users_()
            held = next((u for u in self.users if u.uid == uid), None)
            if held is None or _identity(held) != _identity(user):
                raise CheckFailed(f"USER_WRQ was acknowledged, the user read back at uid {uid} is {held}")
            seen.append(f"user {self.test_user_id} written at uid {uid} and read back")
            d = self.device
            d.run(lambda now: d.client.save_users([user], [template], record_size=self.record_size, now=now))
            self.templates_()
            if template not in self.templates:
                raise CheckFailed("the template uploaded (SAVE_USERTEMPS) is not read back as sent")
            seen.append(f"a {len(CHECK_TEMPLATE)}-byte template for finger {CHECK_FINGER} uploaded and read back")
        except CheckFailed as exc:
            try:
                self._remove(uid, before)
            except CheckFailed as cleanup:
                raise CheckFailed(f"{exc}; then removing the test user failed: {cleanup}") from None
            raise CheckFailed(f"{exc}; the test user was removed again") from None
        seen.append(self._remove(uid, before))
        return "; ".join(seen)

    def _remove(self, uid: int, before: tuple) -> str:
        """Remove what ``write`` stored and check the device holds again what it held before; the
        deletes' answers do not matter (ACK_ERROR when there was nothing), the comparison does."""
        d = self.device
        d.run(lambda now: d.client.request(Command.DELETE_USERTEMP, uid_finger(uid, CHECK_FINGER), now=now))
        d.run(lambda now: d.client.request(Command.DELETE_USER, uid_body(uid), now=now))
        d.ok(Command.REFRESHDATA)
        self.users_()
        self.templates_()
        if (self.users, self.templates) != before:
            raise CheckFailed(f"after removing the test user the device does not hold what it held before "
                              f"({len(before[0])} users and {len(before[1])} templates then, "
                              f"{len(self.users)} and {len(self.templates)} now)")
        return "removed: the device holds what it held before"


def _identity(user: User) -> tuple:
    """What a device must give back as written; the group is left out, as firmwares normalise it."""
    return user.uid, user.user_id, user.name, user.privilege, user.password, user.card



READ_CHECKS = ("connect", "version", "options", "sizes_", "users_", "templates_", "attendance")


def run(args) -> int:
    """``gateway-check --zk`` or ``--replay``; ``args`` from tools/check.py's parser."""
    if not 0 <= args.comm_key <= MAX_COMM_KEY:
        print(f"gateway-check: --comm-key must be 0 to {MAX_COMM_KEY}", file=sys.stderr)
        return 2
    if args.replay:
        try:
            with open(args.replay, encoding="utf-8") as lines:
                capture = read_capture(lines)
        except (OSError, CaptureError) as exc:
            print(f"gateway-check: --replay {args.replay}: {exc}", file=sys.stderr)
            return 2
        print(f"replaying {len(capture.chunks)} chunks recorded from {capture.device or 'a device'} over {capture.transport.upper()}"
              f" at {capture.started or 'an unknown time'}", flush=True)
        return _check(ReplayWire(capture), args, write=False)
    try:
        host, port = parse_address(args.zk)
    except ValueError as exc:
        print(f"gateway-check: --zk: {exc}", file=sys.stderr)
        return 2
    try:
        if args.udp:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((host, port))
        else:
            sock = socket.create_connection((host, port), timeout=args.timeout)
    except OSError as exc:
        print(f"gateway-check: cannot reach the ZK device at {host}:{port}: {exc}", file=sys.stderr)
        return 2
    with sock:
        if not args.record:
            return _check(SocketWire(sock, args.udp), args, args.write)
        try:
            out = open(args.record, "w", encoding="utf-8")
        except OSError as exc:
            print(f"gateway-check: --record {args.record}: {exc}", file=sys.stderr)
            return 2
        with out:
            started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            recorder = CaptureWriter(out, transport="udp" if args.udp else "tcp", device=f"{host}:{port}", started=started)
            status = _check(SocketWire(sock, args.udp, recorder), args, args.write)
        print(f"session recorded to {args.record}")
        return status


def _check(wire, args, write: bool) -> int:
    checks, failed = Checks(Device(wire, args.comm_key, args.timeout), args.test_user_id), 0
    for name in READ_CHECKS + (("write",) if write else ()):
        if name == "write" and failed:
            print("SKIP write: a device that did not pass every read check is not written to", flush=True)
            continue
        label = name.rstrip("_")
        try:
            print(f"PASS {label}: {getattr(checks, name)()}", flush=True)
        except (CheckFailed, OSError) as exc:
            failed += 1
            print(f"FAIL {label}: {exc or type(exc).__name__}", flush=True)
            if checks.device.client.state is not State.CONNECTED or isinstance(exc, OSError):
                break  # refused, timed out or cut off: nothing else can be checked in this session
    else:
        _say_goodbye(checks.device)
    for quirk in dict.fromkeys(checks.device.quirks):
        print(f"NOTE the device sent other than it announced, read as far as it goes: {quirk}")
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


def _say_goodbye(device: Device) -> None:
    """EXIT, so a real device frees its session at once instead of after its own time-out."""
    try:
        device.run(device.client.disconnect)
    except (CheckFailed, OSError):
        pass
