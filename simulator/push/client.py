"""``simulator push-terminal``: an emulated PUSH device calling a server over HTTP, with a keypad.

``PushCaller`` drives a ``PushTerminal`` as firmware does: the initialization request, then
forever its uploads (each resent until the server answers OK; ErrorDelay after a failure), a
getrequest, the commands it brought (a query's lines uploaded before its result) and their
results, then Delay seconds of rest, cut short by a keypad change when the server asked for
Realtime. Written against docs/zk-push.md; it talks to any PUSH server, the gateway or not.
"""

import argparse
import hashlib
import shlex
import sys
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.internet import ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, HTTPConnectionPool, PartialDownloadError, readBody
from twisted.web.http_headers import Headers

from protocol.zk.push import commands as cmd
from protocol.zk.push.lines import field_value
from simulator.console import open_keypad
from simulator.keypad import Reply
from simulator.logs import start_logging
from simulator.push.device import VERIFY, PushTerminal

log = Logger(namespace="simulator.push")
REQUEST_S = 30.0  # a request without an answer by then has failed


class PushCaller:
    def __init__(self, device: PushTerminal, server_url: str, reactor, state: str | None = None, ca_pem: bytes | None = None,
                 source: str | None = None):
        self.device = device
        self.base = server_url.rstrip("/")
        self.reactor = reactor
        self.state = state
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        # https: the server's certificate is checked against the system's CAs, or the one given (--ca).
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(ca_pem)) if ca_pem else BrowserLikePolicyForHTTPS()
        # source: the address it calls from, as a NAT in front of it would show it (any 127/8 address on loopback)
        self.agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=10, bindAddress=(source, 0) if source else None)
        self.running = False
        self.answers = 0  # requests the server answered
        self._wake: defer.Deferred | None = None

    def start(self) -> defer.Deferred:
        self.running = True
        return self._run()

    def stop(self) -> None:
        self.running = False
        self.wake()

    def wake(self) -> None:
        """A keypad change: with Realtime, call in now rather than after Delay."""
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    def saved(self) -> None:
        if self.state:
            self.device.save(self.state)

    @defer.inlineCallbacks
    def _run(self):
        device = self.device
        configured = False
        while self.running:
            try:
                if not configured:
                    status, body = yield self._call(b"GET", "/iclock/cdata", device.init_query())
                    if status != 200:
                        raise IOError(f"initialization answered {status}: {body[:80]!r}")
                    device.configure(body)
                    if device.version == 3:
                        yield self._register()
                    configured = True
                    log.info("PUSH device {sn}: server {url} answered the initialization (Delay={d}, Realtime={r})",
                             sn=device.serial, url=self.base, d=device.delay_s, r=int(device.realtime))
                yield self._uploads()
                status, body = yield self._call(b"GET", "/iclock/getrequest", device.getrequest_query())
                if status != 200:
                    raise IOError(f"getrequest answered {status}")
                commands = cmd.parse_commands(body)
                if commands:
                    yield self._carry_out(commands)
                pause, failed = device.delay_s, False
            except Exception as exc:
                log.info("PUSH device {sn}: {e}; again in {s:g} s", sn=device.serial, e=exc, s=device.error_delay_s)
                pause, failed = device.error_delay_s, True
                configured = False  # as firmware does after a failed request: hello again, and hear the server's stamps
            if not self.running:
                break
            if device.realtime and device.next_upload() is not None and not failed:
                continue  # an upload waits: with Realtime it goes now; after a failure, ErrorDelay first
            self._wake = defer.Deferred()
            timer = self.reactor.callLater(pause, self.wake)
            yield self._wake
            if timer.active():
                timer.cancel()

    @defer.inlineCallbacks
    def _register(self):
        """3.x: register unless the hello said it is, then fetch the configuration."""
        device = self.device
        if not device.registered:
            status, body = yield self._call(b"POST", "/iclock/registry", {"SN": device.serial}, device.registry_body())
            if status != 200 or b"RegistryCode=" not in body:
                raise IOError(f"registration answered {status}: {body[:80]!r}")
            device.configure(body)
        status, body = yield self._call(b"GET", "/iclock/push", {"SN": device.serial})
        if status != 200:
            raise IOError(f"configuration answered {status}: {body[:80]!r}")
        device.configure(body)

    @defer.inlineCallbacks
    def _uploads(self):
        while True:
            upload = self.device.next_upload()
            if upload is None:
                return
            query, body, token = upload
            status, answer = yield self._call(b"POST", "/iclock/cdata", query, body)
            if status != 200 or not self.device.accepts(query, answer):
                raise IOError(f"upload of {query['table']} answered {status}: {answer[:80]!r}")
            self.device.uploaded(token)
            self.saved()

    @defer.inlineCallbacks
    def _carry_out(self, commands):
        results = []
        for command in commands:
            lines, result = self.device.execute(command)
            if lines:  # a query's answer goes up before its result
                path, query = self.device.query_upload(command, lines)
                status, answer = yield self._call(b"POST", path, query, ("\n".join(lines) + "\n").encode("utf-8"))
                if status != 200 or not self.device.accepts(query, answer):
                    raise IOError(f"query answer refused: {status}")
            results.append(result)
        self.saved()
        body = "\n".join(r.line() for r in results) + "\n"
        status, _ = yield self._call(b"POST", "/iclock/devicecmd", {"SN": self.device.serial}, body.encode("utf-8"))
        if status != 200:
            raise IOError(f"devicecmd answered {status}")

    @defer.inlineCallbacks
    def _call(self, method: bytes, path: str, query: dict[str, str], body: bytes | None = None):
        url = f"{self.base}{path}?{urlencode(query)}".encode("ascii")
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        d = self.agent.request(method, url, Headers({b"User-Agent": [b"iClock Proxy/1.09"], b"Content-Type": [b"text/plain"]}), producer)
        timeout = self.reactor.callLater(REQUEST_S, d.cancel)
        try:
            response = yield d
            try:
                answer = yield readBody(response)
            except PartialDownloadError as exc:
                # A server that closes the connection instead of saying the body's length (Django's
                # development server does): the body is what came before the close, as firmware reads it.
                answer = exc.response
        finally:
            if timeout.active():
                timeout.cancel()
        self.answers += 1
        return response.code, answer


class PushKeypad:
    """Keypad commands for a PUSH device (README, "PUSH devices"): one line, one reply."""

    USAGE = ["enrol PIN [name=TEXT] [password=DIGITS] [card=NUMBER] [finger=SLOT]... [face=yes] [photo=BYTES]",
             "edit PIN [name=TEXT] [password=DIGITS] [card=NUMBER] [add-finger=SLOT]... [remove-finger=SLOT]... [face=yes] [photo=BYTES]",
             "delete PIN", "verify PIN [finger|card|pin|face]", "list", "show PIN   (its faces and photo, as digests)", "wipe   (a factory reset: users, logs, stamps)",
             "status", "quit"]

    def __init__(self, caller: PushCaller):
        self.caller = caller
        self.device = caller.device
        self.terminal = self  # what the shared keypad session names in its prompt
        self.terminal_id = caller.device.serial

    def run(self, line: str) -> Reply:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return Reply(f"error: {exc}")
        if not words:
            return Reply("ok")
        name, args = words[0].lower(), words[1:]
        options = {}
        for arg in args[1:] if name in ("enrol", "enroll", "edit") else ():
            key, sep, value = arg.partition("=")
            if not sep:
                return Reply(f"error: {arg!r} is not key=value")
            options.setdefault(key, []).append(value)
        try:
            reply = self._command(name, args, options)
        except (ValueError, KeyError, IndexError) as exc:
            return Reply(f"error: {exc}")
        if name in ("enrol", "enroll", "edit", "delete", "verify", "wipe"):
            self.caller.saved()
            self.caller.wake()
        return reply

    def _command(self, name, args, options) -> Reply:
        device = self.device
        if name in ("enrol", "enroll"):
            device.enroll(args[0], name=options.get("name", [""])[-1], password=options.get("password", [""])[-1],
                          card=int(options.get("card", ["0"])[-1]), fingers=tuple(int(f) for f in options.get("finger", [])),
                          face=options.get("face", ["no"])[-1] == "yes", photo=int(options.get("photo", ["0"])[-1]))
            return Reply(f"ok enrolled {args[0]}")
        if name == "edit":
            changes = {"Name": options["name"][-1]} if "name" in options else {}
            if "password" in options:
                changes["Passwd"] = options["password"][-1]
            if "card" in options:
                changes["Card"] = options["card"][-1]
            device.edit(args[0], add_fingers=tuple(int(f) for f in options.get("add-finger", [])),
                        remove_fingers=tuple(int(f) for f in options.get("remove-finger", [])),
                        face=options.get("face", ["no"])[-1] == "yes", photo=int(options.get("photo", ["0"])[-1]), **changes)
            return Reply(f"ok edited {args[0]}")
        if name == "delete":
            device.delete(args[0])
            return Reply(f"ok deleted {args[0]}")
        if name == "verify":
            how = args[1] if len(args) > 1 else "finger"
            if how not in VERIFY:
                raise ValueError(f"credential must be one of {', '.join(VERIFY)}")
            device.verify(args[0], how)
            return Reply(f"ok verified {args[0]} {how}")
        if name == "list":
            lines = [f"{pin}  {field_value(fields, 'Name')}  fingers {sorted(device.fingers.get(pin, {}))}".rstrip()
                     for pin, fields in sorted(device.users.items())]
            return Reply(f"ok {len(lines)} users", lines)
        if name == "show":
            if args[0] not in device.users:
                raise ValueError(f"no user {args[0]} on this device")
            lines = [f"face {f.algorithm} {f.index} {_short_digest(f.template)}" for f in device.faces.get(args[0], {}).values()]
            photo = device.photos.get(args[0])
            lines += [f"photo {_short_digest(photo.content)}"] if photo is not None else []
            return Reply(f"ok {args[0]}", lines)
        if name == "wipe":
            device.wipe()
            return Reply("ok wiped")
        if name == "status":
            waiting = sum(1 for s, _ in device.punches if s > device.sent_stamp) + len(device.oplog)
            return Reply(f"ok device {device.serial}, {len(device.users)} users, {len(device.punches)} punches, "
                         f"{waiting} lines not uploaded, {self.caller.answers} answers from the server")
        if name == "quit":
            return Reply("ok switching off", quit=True)
        if name == "help":
            return Reply("ok", self.USAGE)
        raise ValueError(f"unknown command {name!r}; type help")


def add_parser(sub) -> None:
    p = sub.add_parser("push-terminal", help="one emulated ZKTeco PUSH (ADMS) device calling a server over HTTP")
    p.add_argument("--server", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8081 (the device adds /iclock/...)")
    p.add_argument("--sn", required=True, help="the device's serial number")
    p.add_argument("--state", metavar="FILE", help="keep users, logs and stamps in FILE across restarts, as the device's flash")
    p.add_argument("--control", type=int, metavar="PORT", help="take keypad commands on this port of 127.0.0.1 (0: any free port, printed)")
    p.add_argument("--keypad", choices=("stdin", "off"), default="off", help="read keypad commands on standard input (default off)")
    p.add_argument("--biodata", action="store_true", help="send templates as BIODATA lines (PUSH 2.4+ firmware) rather than FP")
    p.add_argument("--push-version", type=int, choices=(2, 3), default=None,
                   help="3: an access-control device that speaks only PUSH 3.x (registers, rtlog, tabledata, DATA ... user); default 2")
    p.add_argument("--face", metavar="TYPE:VERSION", help="its face algorithm, e.g. 9:58.1 (visible light, 58.1) or 2:7.0 (near-infrared); "
                   "default: no camera")
    p.add_argument("--source", metavar="ADDRESS", help="call from this local address (a NAT's view of the device; default: any)")
    p.add_argument("--ca", metavar="PEM", help="with an https:// server: the CA its certificate must be signed by (default: the system's)")


def run(args: argparse.Namespace) -> int:
    if not args.server.startswith(("http://", "https://")):
        print("simulator push-terminal: --server must be an http:// or https:// URL", file=sys.stderr)
        return 2
    try:
        device = PushTerminal.load(args.state, args.sn) if args.state else PushTerminal(args.sn)
    except (OSError, ValueError, KeyError) as exc:
        print(f"simulator push-terminal: cannot use --state {args.state}: {exc}", file=sys.stderr)
        return 2
    device.biodata = device.biodata or args.biodata
    if args.push_version is not None:
        device.version = args.push_version
    if args.face:
        try:
            device.face = face_algorithm(args.face)
        except ValueError as exc:
            print(f"simulator push-terminal: --face {args.face}: {exc}", file=sys.stderr)
            return 2
    try:
        ca_pem = open(args.ca, "rb").read() if args.ca else None
    except OSError as exc:
        print(f"simulator push-terminal: cannot read --ca {args.ca}: {exc.strerror}", file=sys.stderr)
        return 2
    task.react(_serve, [device, args, ca_pem])


def face_algorithm(text: str) -> tuple[int, str, str]:
    """``9:58.1`` -> (9, "58", "1"): BIODATA Type, MajorVer, MinorVer."""
    kind, _, version = text.partition(":")
    major, _, minor = version.partition(".")
    if kind.strip() not in ("2", "9") or not major.isdigit() or not (minor or "0").isdigit():
        raise ValueError("give TYPE:MAJOR[.MINOR], TYPE 2 (near-infrared) or 9 (visible light)")
    return int(kind), major, minor or "0"


def _short_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _serve(reactor, device: PushTerminal, args, ca_pem: bytes | None) -> defer.Deferred:
    start_logging()
    caller = PushCaller(device, args.server, reactor, args.state, ca_pem, args.source)
    keypad = PushKeypad(caller)

    def switch_off():
        caller.stop()
        if reactor.running:
            reactor.stop()

    open_keypad(keypad, args, reactor, switch_off, f"PUSH device {device.serial}", lambda text: print(text, flush=True))
    print(f"PUSH device {device.serial} calling {args.server}: {len(device.users)} users", flush=True)
    caller.start()
    return defer.Deferred()  # runs until stopped
