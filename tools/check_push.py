"""gateway-check --push PORT: play the PUSH server to a ZKTeco device (real or emulated) pointed at
this machine, and say what it sent and whether it takes commands.

It listens on PORT (all addresses: a device calls from the site network) with protocol.zk.push's
``PushServer`` and a plain blocking HTTP server, then checks in turn: the device says hello (the
initialization request), asks for commands (``getrequest``, with its INFO), carries out ``INFO``
and reports the result, and lists its users (``DATA QUERY USERINFO``). ``--write`` also stores a
test user with a reserved PIN, finds it in a listing, deletes it and finds it gone. Uploads are
counted and acknowledged as a server does; the gateway's own initialization answer later tells
the device where *its* copy ends, so nothing is lost to the check. The initialization answer
asks for a getrequest every 2 s. A PUSH 3.x access device is spoken to in 3.x once it shows itself
(protocol/zk/push/dialect.py): registered, listed with ``DATA QUERY tablename=user``, written
with ``DATA UPDATE user``; it has no INFO command, so its registration stands for INFO. Exit status as the other checks: 0 every check passed, 1 some
failed, 2 usage or listening problems.
"""

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from gateway.push.faces import algorithms_in_options
from protocol.zk.push import commands as cmd
from protocol.zk.push import v3
from protocol.zk.push.dialect import PUSH2, PUSH3, evidence
from protocol.zk.push.lines import FaceLine, PhotoLine, UserLine
from protocol.zk.push.server import (AttendanceUploaded, CommandsWanted, Done, InitRequested, OperationsUploaded, OptionsUploaded, PushServer,
                                     PushTiming, Registered, Request, RequestError, ResultsReported, TableAcknowledged, TableUploaded,
                                     endpoint_of)

CHECK_PIN = "999999999"  # the reserved test user, as gateway-check --zk uses
TIMING = PushTiming(delay_s=2, error_delay_s=5, command_s=30)


class Observed:
    """What the device did, shared between the HTTP threads and the checks."""

    def __init__(self):
        self.lock = threading.Condition()
        self.server: PushServer | None = None
        self.serial = ""
        self.push_version = ""
        self.info: dict[str, str] = {}
        self.asked = 0  # getrequests
        self.results: dict[int, object] = {}  # command id -> CommandResult
        self.users: dict[str, UserLine] = {}
        self.punches = 0
        self.lines = 0
        self.bad = 0
        self.dialect = PUSH2  # until the device shows 3.x
        self.registered: dict[str, str] = {}  # 3.x: what it said when it registered
        self.options: dict[str, str] = {}  # what it posted as table=options
        self.faces = 0
        self.photos = 0

    def answer(self, method: str, url: str, body: bytes, address: str) -> tuple[int, bytes]:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        serial = next((v for k, v in query.items() if k.lower() == "sn"), "")
        with self.lock:
            if self.server is None and serial:
                self.server, self.serial = PushServer(serial, TIMING, first_id=int(time.time()) % 100_000 * 10), serial
                print(f"device {serial} calling from {address}", flush=True)
            if self.server is None or serial != self.serial:
                return 403, b"one device at a time"
            self.dialect = evidence(method, endpoint_of(parts.path), {k.lower(): v for k, v in query.items()}) or self.dialect
            try:
                event = self.server.receive(Request(method, parts.path, query, body), time.monotonic())
            except RequestError as exc:
                return exc.status, exc.reason.encode()
            try:
                return self._take(event)
            finally:
                self.lock.notify_all()

    def _take(self, event) -> tuple[int, bytes]:
        server = self.server
        if isinstance(event, InitRequested):
            self.push_version = self.push_version or event.push_version or "not given"
            if self.dialect is PUSH3:
                return 200, server.v3_answer(hello=event.endpoint == "cdata", registered=bool(self.registered))
            return 200, server.init_answer({}, event.push_version)
        if isinstance(event, Registered):
            self.registered = event.info or {"DeviceType": "not given"}
            return 200, server.registry_answer()
        if isinstance(event, TableAcknowledged):
            return 200, v3.table_answer(event.table, event.count)
        if isinstance(event, CommandsWanted):
            self.asked += 1
            self.info = self.info or event.info
            return 200, cmd.render_commands(server.commands_to_send(time.monotonic()))
        if isinstance(event, ResultsReported):
            for outcome in event.outcomes:
                if isinstance(outcome, Done):
                    self.results[outcome.command.id] = outcome.result
            return 200, b"OK"
        if isinstance(event, AttendanceUploaded):
            self.punches += len(event.punches)
            self.bad += len(event.bad)
            return 200, server.ok(len(event.punches) + len(event.bad))
        if isinstance(event, OperationsUploaded):
            for item in event.items:
                if isinstance(item, UserLine):
                    self.users[item.pin] = item
            self.faces += sum(isinstance(item, FaceLine) for item in event.items)
            self.photos += sum(isinstance(item, PhotoLine) for item in event.items)
            self.lines += len(event.items)
            self.bad += len(event.bad)
            count = len(event.items) + len(event.bad)
            return 200, v3.table_answer(event.table, count) if isinstance(event, TableUploaded) else server.ok(count)
        if isinstance(event, OptionsUploaded):
            self.options.update(event.options)
        return 200, b"OK"

    def wait(self, what: str, ready, timeout_s: float):
        """``ready()`` once it is true (under the lock); CheckFailed after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not (found := ready()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"no {what} within {timeout_s:g} s")
                self.lock.wait(left)
            return found

    def run_command(self, text: str, timeout_s: float):
        """Queue ``text``; its result once the device reported it."""
        with self.lock:
            command = self.server.queue(text)
        result = self.wait(f"result for {text[:40]!r}", lambda: self.results.get(command.id), timeout_s)
        if result.code < 0:  # 3.x answers a query with its row count
            raise CheckFailed(f"{text[:40]!r} answered Return={result.code}")
        return result


class CheckFailed(Exception):
    pass


def _handler(observed: Observed):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer = observed.answer(method, self.path, body, self.client_address[0])
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(answer) + 1))
            self.end_headers()
            self.wfile.write(answer + b"\n")

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def log_message(self, *args):
            pass  # the checks say what happened

    return Handler


def run(args) -> int:
    try:
        httpd = ThreadingHTTPServer((args.push_host, args.push), _handler(observed := Observed()))
    except OSError as exc:
        print(f"gateway-check: cannot listen on {args.push_host}:{args.push}: {exc.strerror}", file=sys.stderr)
        return 2
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"waiting up to {args.wait:g} s for a PUSH device on port {httpd.server_address[1]} "
          f"(its Cloud Server Setting: this machine's address, port {httpd.server_address[1]})", flush=True)
    step_s = max(args.timeout, 3 * TIMING.delay_s + 5)
    o = observed
    checks = [
        ("hello", lambda: (o.wait("initialization request", lambda: o.push_version, args.wait),
                           f"serial {o.serial}, push version {o.push_version}")[1]),
        ("commands", lambda: (o.wait("getrequest", lambda: o.asked, step_s),
                              ", ".join(f"{k} {v}" for k, v in o.info.items()) or "no INFO given")[1]),
        ("INFO", lambda: _info(o, step_s)),
        ("user list", lambda: (o.run_command(o.dialect.list_users, step_s), f"{len(o.users)} users listed")[1]),
    ]
    if args.write:
        checks += [
            ("write test user", lambda: _write(o, step_s)),
            ("delete test user", lambda: _delete(o, step_s)),
        ]
    failed = 0
    for label, check in checks:
        try:
            print(f"PASS {label}: {check()}", flush=True)
        except CheckFailed as exc:
            failed += 1
            print(f"FAIL {label}: {exc}", flush=True)
            if label == "hello":
                break
    print(f"uploads seen: {o.punches} punches, {o.lines} operation lines ({o.faces} face templates, {o.photos} photos), "
          f"{o.bad} lines that did not parse", flush=True)
    faces = ", ".join(a.name for a in algorithms_in_options(o.options))
    print(f"face algorithms (its options): {faces or 'none said'}", flush=True)
    httpd.shutdown()
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


def _info(o: Observed, timeout_s: float) -> str:
    if o.dialect is PUSH3:
        said = ", ".join(f"{k}={o.registered[k]}" for k in ("DeviceType", "DeviceName", "FirmVer", "PushVersion", "ZKFPVersion") if k in o.registered)
        return f"PUSH 3.x (no INFO command); it registered: {said or 'nothing we read'}"
    return ", ".join(f"{k}={v}" for k, v in o.run_command(cmd.INFO, timeout_s).data) or "no data"


def _write(o: Observed, timeout_s: float) -> str:
    if CHECK_PIN in o.users:
        raise CheckFailed(f"the device holds user {CHECK_PIN} already: not touched")
    o.run_command(o.dialect.update_user((("PIN", CHECK_PIN), ("Name", "gw-check"), ("Pri", "0"))), timeout_s)
    with o.lock:
        o.users.pop(CHECK_PIN, None)
    o.run_command(v3.query(v3.USER, f"Pin={CHECK_PIN}") if o.dialect is PUSH3 else cmd.query_users(CHECK_PIN), timeout_s)
    held = o.users.get(CHECK_PIN)
    if held is None or held.get("Name") != "gw-check":
        raise CheckFailed(f"stored, but the device lists {held.line() if held else 'nothing'} for it")
    return f"user {CHECK_PIN} stored and listed back"


def _delete(o: Observed, timeout_s: float) -> str:
    o.run_command(o.dialect.delete_user(CHECK_PIN), timeout_s)
    with o.lock:
        o.users.clear()
    o.run_command(o.dialect.list_users, timeout_s)
    if CHECK_PIN in o.users:
        raise CheckFailed("deleted, but the device still lists it")
    return f"user {CHECK_PIN} deleted; {len(o.users)} users as before"
