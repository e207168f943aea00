"""Console: where keypad commands reach a simulated terminal: standard input and a control socket.

``simulator terminal`` reads commands from standard input when it is a terminal it runs in the
foreground of (or with ``--keypad stdin``) and, with ``--control PORT``, from any number of
connections to that port on 127.0.0.1 (``nc 127.0.0.1 PORT`` by hand, a socket from a script).
Both speak the line language of simulator/keypad.py. ``--state FILE`` keeps the terminal's flash in a file (simulator/state.py).
"""

import os
import sys

from twisted.internet import protocol, stdio
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from simulator.keypad import Keypad
from simulator.state import StateError, open_terminal
from simulator.terminal import Terminal

log = Logger(namespace="simulator")


def add_arguments(parser) -> None:
    parser.add_argument("--keypad", choices=("auto", "stdin", "off"), default="auto",
                        help="read keypad commands on standard input: auto (when it is a terminal and the program runs in "
                             "the foreground, not with &; the default), stdin (always), off")
    parser.add_argument("--control", type=int, metavar="PORT",
                        help="also take keypad commands on this port of 127.0.0.1 (0: any free port, printed at start)")
    parser.add_argument("--state", metavar="FILE",
                        help="keep users, event counter and unacknowledged events in FILE across restarts, as a terminal's flash")


def start(args, reactor) -> Terminal:
    """The terminal the arguments describe, its flash loaded and its keypad open; a state file or
    control port that cannot be used ends the program with a one-line error (status 2)."""
    try:
        terminal = open_terminal(args.state, args.id, args.secret) if args.state else Terminal(args.id, args.secret)
    except StateError as exc:
        _give_up(str(exc))

    def switch_off():
        if reactor.running:
            reactor.stop()

    open_keypad(Keypad(terminal), args, reactor, switch_off, f"terminal {args.id}", lambda text: log.info("{text}", text=text))
    return terminal


def open_keypad(keypad, args, reactor, switch_off, who: str, say) -> None:
    """The ways in to ``keypad`` the arguments ask for: a control port on 127.0.0.1 (its number
    ``say``-ed, for scripts to read) and standard input. A port that cannot be had ends the
    program with one line (status 2)."""
    if args.control is not None:
        try:
            port = reactor.listenTCP(args.control, ControlPort(keypad, switch_off), interface="127.0.0.1")
        except CannotListenError as exc:
            _give_up(f"{who}: cannot take keypad commands on 127.0.0.1:{args.control}: {exc.socketError}")
        say(f"{who}: keypad control socket on 127.0.0.1:{port.getHost().port}")
    if args.keypad == "stdin" or (args.keypad == "auto" and _keyboard_is_ours()):
        stdio.StandardIO(KeypadSession(keypad, switch_off, prompt=sys.stdin.isatty()))


def _keyboard_is_ours() -> bool:
    """Standard input is a terminal and this program has it in the foreground. Started in the
    background (``&``), reading it would get the program stopped by the terminal (SIGTTIN) the
    first time someone typed at the shell, control socket and all."""
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


def _give_up(message: str):
    print(f"simulator: {message}", file=sys.stderr)
    raise SystemExit(2)


@implementer(IHalfCloseableProtocol)
class KeypadSession(LineReceiver):
    """One stream of commands and their replies. ``quit`` (or the end of standard input) switches
    the terminal off once the reply is out; closing a control connection only ends that session."""

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def __init__(self, keypad: Keypad, switch_off, prompt: bool = False, ends_terminal: bool = True):
        self.keypad = keypad
        self.switch_off = switch_off
        self.prompt = prompt
        self.ends_terminal = ends_terminal  # standard input: its end is the operator leaving
        self._quitting = False

    def connectionMade(self):
        if self.prompt:
            self.transport.write(f"terminal {self.keypad.terminal.terminal_id} keypad; type help\n> ".encode())

    def lineReceived(self, line: bytes):
        try:
            reply = self.keypad.run(line.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError:
            self._write("error: commands are UTF-8 text\n")
            return
        if reply.quit:
            self._quitting = True
            self.transport.write(reply.text().encode())
            self.transport.loseConnection()
        else:
            self._write(reply.text())

    def _write(self, text: str) -> None:
        self.transport.write((text + ("> " if self.prompt else "")).encode())

    def readConnectionLost(self):
        # The other side sent its last command (a script's pipe closed): answer it, then close.
        self.transport.loseConnection()

    def writeConnectionLost(self):
        self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self.transport.write(f"error: a command is at most {self.MAX_LENGTH} bytes\n".encode())
        self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        if self._quitting or self.ends_terminal:
            self.switch_off()


class ControlPort(protocol.Factory):
    """The ``--control`` port: each connection is a keypad session of its own."""

    noisy = False

    def __init__(self, keypad: Keypad, switch_off):
        self.keypad = keypad
        self.switch_off = switch_off

    def buildProtocol(self, addr):
        return KeypadSession(self.keypad, self.switch_off, ends_terminal=False)
