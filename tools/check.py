"""gateway-check: play the gateway's part against one terminal and check it keeps the protocol.

``--zk HOST[:PORT]`` checks a ZKTeco device instead (tools/check_zk.py); ``--push PORT`` plays the
PUSH server to a ZKTeco device that calls in (tools/check_push.py).

It connects to a terminal that listens (``--terminal HOST:PORT``) or waits for one to dial in
(``--listen PORT``), does the handshake, and runs each check in turn, printing PASS or FAIL with
what was seen. By default it only reads; ``--write`` also puts, reads back and deletes a test
user. Exit status: 0 every check passed, 1 some failed, 2 usage or connection problems.
"""

import argparse
import socket
import sys
import time
from collections import deque

from protocol.address import AddressError, parse_host_port
from protocol.connection import Connection, Role
from protocol.connection_events import Answer, Corrupt, Established, HelloAnswered, Rejected, Replied, Request
from protocol.errors import ErrorCode, MessageError, RemoteProtocolError
from protocol.frame import Frame, encode_frame
from protocol.messages import Command, UserStatus, build_body, parse_body
from protocol.records import UserRecord, hash_pin
from tools import check_push, check_zk

CHECK_USER = "__gateway_check__"


class CheckFailed(Exception):
    pass


class Peer:
    """The terminal at the other end of a blocking socket, through the gateway's side of a
    ``protocol.connection.Connection``: the rules the gateway keeps are the ones checked by."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.connection = Connection(Role.GATEWAY, request_timeout_s=timeout, now=time.monotonic())
        self.events: deque = deque()

    def send(self, frame: Frame) -> None:
        self.sock.sendall(encode_frame(frame))

    def ask(self, command: int, payload: bytes) -> Frame:
        """Send a request and return the terminal's answer to it (a response or an error reply)."""
        frame, pending = self.connection.request(command, payload=payload, now=time.monotonic())
        self.send(frame)
        return self.wait_for(lambda event: type(event) is Answer and event.request == pending, pending.deadline).frame

    def wait_for(self, wanted, deadline: float):
        """The first event ``wanted`` says is it, answering the terminal's own requests politely
        meanwhile; the deadline holds however chatty the terminal is."""
        while True:
            event = self._next_event(deadline)
            if wanted(event):
                return event
            kind = type(event)
            if kind is Request:  # EVENTS: stored nothing, so the terminal keeps its log
                self.send(self.connection.reply(event.frame, dict(ack_through=0), now=time.monotonic()))
            elif (kind is Replied or kind is Rejected) and event.reply is not None:
                self.send(event.reply)
            elif kind is Corrupt:
                raise CheckFailed(f"corrupt frame from the terminal: {event.error}")

    def _next_event(self, deadline: float):
        while not self.events:
            if time.monotonic() >= deadline:
                raise CheckFailed(f"no answer within {self.connection.request_timeout_s:g} s")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise CheckFailed("the terminal closed the connection")
            try:
                self.events.extend(self.connection.receive_data(data, now=time.monotonic()))
            except RemoteProtocolError as exc:
                raise CheckFailed(str(exc)) from None
        return self.events.popleft()


def expect_answer(frame: Frame) -> object:
    if frame.is_error:
        err = parse_body(frame)
        raise CheckFailed(f"error reply (code {err.code}): {err.text}")
    return parse_body(frame)


def check_handshake(peer: Peer, args) -> str:
    connection = peer.connection
    peer.send(connection.start(now=time.monotonic()))
    deadline = time.monotonic() + connection.request_timeout_s
    try:
        answered = peer.wait_for(lambda event: type(event) is HelloAnswered, deadline)
    except CheckFailed as exc:
        raise CheckFailed(f"HELLO: {exc}") from None
    terminal_id, hello = answered.frame.terminal_id, answered.hello
    if args.id is not None and terminal_id != args.id:
        raise CheckFailed(f"terminal says it is {terminal_id}, expected {args.id}")
    refusal = connection.authenticate(args.secret.encode())
    if refusal is not None:
        code, text = refusal
        raise CheckFailed("the terminal's proof does not match the secret given" if code == ErrorCode.AUTH_FAILED else text)
    peer.send(connection.welcome(ack_through=0, server_time_ms=int(time.time() * 1000), now=time.monotonic()))
    peer.wait_for(lambda event: type(event) is Established, time.monotonic() + connection.request_timeout_s)
    return f"terminal {terminal_id}, {hello.model} firmware {hello.firmware}, protocol {hello.protocol_version}, room for {hello.max_users} users"


def check_keepalive(peer: Peer, args) -> str:
    expect_answer(peer.ask(Command.KEEPALIVE, b""))
    return "answered"


def check_time_sync(peer: Peer, args) -> str:
    now = int(time.time() * 1000)
    body = expect_answer(peer.ask(Command.TIME_SYNC, build_body(Command.TIME_SYNC, False, dict(server_time_ms=now))))
    return f"terminal clock was {(body.terminal_time_ms - now) / 1000:+.1f} s off"


def list_all_users(peer: Peer) -> list[str]:
    ids, after = [], ""
    while True:
        body = expect_answer(peer.ask(Command.LIST_USERS, build_body(Command.LIST_USERS, False, dict(after_user_id=after, limit=100))))
        page = [e.user_id for e in body.entries]
        if page != sorted(page) or (page and page[0] <= after):
            raise CheckFailed(f"LIST_USERS page after {after!r} is not in ascending order")
        ids += page
        if not body.more:
            return ids
        if not page:
            raise CheckFailed("LIST_USERS says there is more but returned nothing")
        after = page[-1]


def check_list_users(peer: Peer, args) -> str:
    return f"{len(list_all_users(peer))} users, pages in ascending order"


def check_missing_user(peer: Peer, args) -> str:
    body = expect_answer(peer.ask(Command.GET_USERS, build_body(Command.GET_USERS, False, dict(user_ids=[CHECK_USER + "?"]))))
    if list(body.missing) != [CHECK_USER + "?"] or body.users:
        raise CheckFailed("an unknown user id was not reported as missing")
    return "an unknown user is reported missing"


def check_errors(peer: Peer, args) -> str:
    unknown = peer.ask(0x7F, b"")
    if not unknown.is_error or parse_body(unknown).code != ErrorCode.UNKNOWN_COMMAND:
        raise CheckFailed("an unknown command was not answered with UNKNOWN_COMMAND")
    bad = peer.ask(Command.GET_USERS, b"\x05")
    if not bad.is_error or parse_body(bad).code != ErrorCode.BAD_MESSAGE:
        raise CheckFailed("a malformed GET_USERS was not answered with BAD_MESSAGE")
    return "unknown command and malformed payload get error replies"


def check_put_get_delete(peer: Peer, args) -> str:
    record = UserRecord(CHECK_USER, name="Gateway Check", pin_hash=hash_pin(CHECK_USER, "0000"), access_groups=(1,))
    put = expect_answer(peer.ask(Command.PUT_USERS, build_body(Command.PUT_USERS, False, dict(keep_local_changes=False, users=[record]))))
    if [(r.user_id, r.status) for r in put.results] != [(CHECK_USER, UserStatus.OK)]:
        raise CheckFailed(f"PUT_USERS results: {list(put.results)}")
    got = expect_answer(peer.ask(Command.GET_USERS, build_body(Command.GET_USERS, False, dict(user_ids=[CHECK_USER]))))
    if list(got.users) != [record]:
        raise CheckFailed("the user read back differs from the user put")
    gone = expect_answer(peer.ask(Command.DELETE_USERS, build_body(Command.DELETE_USERS, False, dict(user_ids=[CHECK_USER]))))
    if [r.status for r in gone.results] != [UserStatus.OK]:
        raise CheckFailed(f"DELETE_USERS results: {list(gone.results)}")
    return "a test user was put, read back identical, and deleted"


READ_CHECKS = [check_handshake, check_keepalive, check_time_sync, check_list_users, check_missing_user, check_errors]


def connect(args) -> socket.socket:
    if args.terminal:
        return socket.create_connection(parse_host_port(args.terminal), timeout=args.timeout)
    with socket.create_server(("0.0.0.0", args.listen)) as server:
        server.settimeout(args.wait)
        print(f"waiting up to {args.wait:g} s for a terminal to dial in on port {args.listen}", flush=True)
        sock, _ = server.accept()
        return sock


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway-check", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--terminal", metavar="HOST:PORT", help="connect to a terminal listening here")
    where.add_argument("--listen", type=int, metavar="PORT", help="wait for a terminal to dial in on this port")
    where.add_argument("--zk", metavar="HOST[:PORT]", help=f"check a ZKTeco device here instead (port {check_zk.DEFAULT_PORT} unless given)")
    where.add_argument("--replay", metavar="FILE", help="run the ZK read checks against a capture made with --zk ... --record (docs/zk.md)")
    where.add_argument("--push", type=int, metavar="PORT", help="play the PUSH server on this port to a ZKTeco device pointed at it (docs/zk-push.md)")
    parser.add_argument("--push-host", default="0.0.0.0", metavar="ADDRESS", help="with --push: the address to listen on (default all)")
    parser.add_argument("--secret", help="the terminal's secret (required but for --zk)")
    parser.add_argument("--comm-key", type=int, default=0, metavar="K", help="with --zk: the device's comm key (default 0: none)")
    parser.add_argument("--udp", action="store_true", help="with --zk: over UDP, as old devices need (default TCP)")
    parser.add_argument("--record", metavar="FILE", help="with --zk: write every chunk of the session both ways, with times, to FILE")
    parser.add_argument("--test-user-id", default=check_zk.CHECK_USER_ID, metavar="ID",
                        help="with --zk --write: the reserved user id of the test user (default %(default)s)")
    parser.add_argument("--id", type=int, help="the terminal id expected (default: whatever it says)")
    parser.add_argument("--write", action="store_true",
                        help=f"also put, read back and delete a test user ({CHECK_USER!r}; with --zk, --test-user-id)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer (default 5)")
    parser.add_argument("--wait", type=float, default=60.0, help="with --listen: seconds to wait for the terminal (default 60)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.zk or args.replay:
        return check_zk.run(args)
    if args.push is not None:
        return check_push.run(args)
    if args.secret is None:
        parser.error("--secret is required with --terminal or --listen")
    try:
        sock = connect(args)
    except AddressError as exc:
        print(f"gateway-check: --terminal: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway-check: cannot reach the terminal: {exc}", file=sys.stderr)
        return 2
    peer, failed = Peer(sock, args.timeout), 0
    with sock:
        for check in READ_CHECKS + ([check_put_get_delete] if args.write else []):
            name = check.__name__.removeprefix("check_").replace("_", " ")
            try:
                print(f"PASS {name}: {check(peer, args)}", flush=True)
            except (CheckFailed, MessageError, OSError) as exc:
                failed += 1
                print(f"FAIL {name}: {exc or type(exc).__name__}", flush=True)
                if check is check_handshake or isinstance(exc, OSError):
                    break  # nothing else can be checked without a session
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
