"""An RS-485 multi-drop bus in software: simulated terminals at addresses on one paced line.

The gateway opens the bus like a serial device (``PtyPort``, a pty). Every byte takes its time on
the line at the baud rate. Terminals are the same ``simulator.terminal.Terminal`` as on TCP; each
hears every byte and answers only requests addressed to it. What real lines do wrong is modelled:
two talkers at once garble each other (a collision), a terminal can answer late, fall silent or
be talked over by another device, and noise flips bits at a rate you set. ``EmulatedBus`` runs
on any clock, so unit tests drive it with ``task.Clock``. ``ConverterPort`` puts the bus behind a
serial-over-IP converter instead, which the gateway reaches with a ``socket://`` URL.
"""

import math
import os
import random
import sys
import tty
from dataclasses import dataclass

import tomli_w
from twisted.internet import abstract, defer, fdesc, protocol, task
from twisted.internet.error import CannotListenError

from protocol import Frame, StreamDecoder
from protocol.frame import OVERHEAD
from simulator.logs import start_logging
from simulator.people import People
from simulator.terminal import Terminal

BITS_PER_CHAR = 10  # 8N1, as the gateway's serial port is set
MASTER = "master"
PHANTOM = "phantom"  # another device answering at the same moment: a duplicate address


@dataclass
class LineStats:
    """What a bus analyser clipped onto the line counts."""

    bytes: int = 0  # every byte on the line, good or bad
    frames: int = 0  # intact frames
    frame_bytes: int = 0  # bytes of intact frames, header and CRC included
    payload_bytes: int = 0
    errors: int = 0  # corrupt frames and garbage
    collisions: int = 0
    flipped_bits: int = 0


@dataclass(eq=False)
class _Talk:
    talker: object  # MASTER, PHANTOM or a BusTerminal
    data: bytearray
    start: float
    sent: int = 0  # bytes already handed to the listeners


class BusTerminal:
    """A terminal wired to the bus. Its faults are plain attributes a test or scenario sets."""

    def __init__(self, bus: "EmulatedBus", terminal: Terminal):
        self.bus = bus
        self.terminal = terminal
        self.address = terminal.address
        self.decoder = StreamDecoder()
        self.silent = False  # unplugged: hears nothing, says nothing
        self.late_answers = 0  # the next N answers start ``late_by_s`` late
        self.late_by_s = 0.0
        self.talked_over = 0  # the next N answers collide with another device's

    def hear(self, data: bytes) -> None:
        if self.silent:
            return
        for item in self.decoder.feed(data):
            if isinstance(item, Frame) and not item.is_response and item.address == self.address:
                reply = self.terminal.answer(item)
                delay = self.bus.answer_delay_s
                if self.late_answers:
                    self.late_answers -= 1
                    delay += self.late_by_s
                self.bus.later(delay, self._say, reply)

    def _say(self, reply: bytes) -> None:
        if self.silent:
            return
        if self.talked_over:
            self.talked_over -= 1
            self.bus.talk(PHANTOM, self.bus.rng.randbytes(len(reply)))
        self.bus.talk(self, reply)


class EmulatedBus:
    """The line: who talks when, what every listener hears, and what an analyser counts."""

    step_s = 0.002  # bytes on the line reach the listeners in slices this long

    def __init__(self, clock, baud: int, *, noise: float = 0.0, echo: bool = False,
                 answer_delay_s: float = 0.001, seed: int = 0):
        self.clock = clock
        self.char_s = BITS_PER_CHAR / baud
        self.noise = noise  # bit error rate: each bit on the line flips with this probability
        self._byte_error = 1 - (1 - noise) ** 8
        self.echo = echo  # the master hears its own bytes, as through an adapter whose receiver stays on
        self.answer_delay_s = answer_delay_s
        self.rng = random.Random(seed)
        self.terminals: dict[int, BusTerminal] = {}
        self.to_master = lambda data: None  # set by the port the gateway opens
        self.stats = LineStats()
        self._analyser = StreamDecoder()
        self._talks: list[_Talk] = []
        self._tick = None
        self._calls: list = []

    def attach(self, terminal: Terminal) -> BusTerminal:
        if terminal.address in self.terminals:
            raise ValueError(f"address {terminal.address} is taken on this bus")
        drop = BusTerminal(self, terminal)
        self.terminals[terminal.address] = drop
        return drop

    def from_master(self, data: bytes) -> None:
        """Bytes the gateway wrote: its UART sends them straight after whatever it is still sending."""
        sending = next((t for t in self._talks if t.talker is MASTER), None)
        if sending is None:
            self.talk(MASTER, data)
            return
        was_to_end = self._end(sending)
        sending.data += data
        self._collide(sending, was_to_end)
        self._schedule_tick()

    def talk(self, talker, data: bytes) -> None:
        """``talker`` starts sending now; whoever else is mid-sentence garbles it, and it them."""
        talk = _Talk(talker, bytearray(data), self.clock.seconds())
        self._collide(talk, talk.start)
        self._talks.append(talk)
        self._schedule_tick()

    def later(self, delay: float, f, *args) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self.clock.callLater(max(0.0, delay), f, *args))

    def stop(self) -> None:
        for call in [*self._calls, self._tick]:
            if call is not None and call.active():
                call.cancel()
        self._talks.clear()

    # -- the line ----------------------------------------------------------------------------

    def _end(self, talk: _Talk) -> float:
        return talk.start + len(talk.data) * self.char_s

    def _collide(self, talk: _Talk, since: float) -> None:
        """Garble what ``talk`` sends from ``since`` on wherever another talker overlaps it."""
        for other in self._talks:
            if other is talk or other.talker is talk.talker:
                continue
            t0 = max(since, other.start, talk.start)
            t1 = min(self._end(other), self._end(talk))
            if t1 - t0 > self.char_s / 2:
                self.stats.collisions += 1
                self._garble(other, t0, t1)
                self._garble(talk, t0, t1)

    def _garble(self, talk: _Talk, t0: float, t1: float) -> None:
        first = max(talk.sent, int((t0 - talk.start) / self.char_s))
        last = min(len(talk.data), math.ceil((t1 - talk.start) / self.char_s))
        for i in range(first, last):
            talk.data[i] = self.rng.randrange(256)

    def _schedule_tick(self) -> None:
        if self._tick is not None and self._tick.active() or not self._talks:
            return
        now = self.clock.seconds()
        due = min(now + self.step_s, min(self._end(t) for t in self._talks))
        self._tick = self.clock.callLater(max(0.0, due - now), self._deliver)

    def _deliver(self) -> None:
        self._tick = None
        now = self.clock.seconds()
        for talk in list(self._talks):
            done = len(talk.data) if now >= self._end(talk) else int((now - talk.start) / self.char_s)
            if done > talk.sent:
                chunk = self._noisy(bytes(talk.data[talk.sent:done]))
                talk.sent = done
                self._spread(talk.talker, chunk)
            if talk.sent == len(talk.data):
                self._talks.remove(talk)
        self._schedule_tick()

    def _noisy(self, chunk: bytes) -> bytes:
        if not self.noise:
            return chunk
        out = bytearray(chunk)
        for i in range(len(out)):
            if self.rng.random() < self._byte_error:
                out[i] ^= 1 << self.rng.randrange(8)
                self.stats.flipped_bits += 1
        return bytes(out)

    def _spread(self, talker, chunk: bytes) -> None:
        self.stats.bytes += len(chunk)
        for item in self._analyser.feed(chunk):
            if isinstance(item, Frame):
                self.stats.frames += 1
                self.stats.frame_bytes += OVERHEAD + len(item.payload)
                self.stats.payload_bytes += len(item.payload)
            else:
                self.stats.errors += 1
        if talker is not MASTER or self.echo:
            self.to_master(chunk)
        for drop in list(self.terminals.values()):
            if drop is not talker:
                drop.hear(chunk)


class PtyPort(abstract.FileDescriptor):
    """The master's side of the bus on a pty: the gateway opens ``path`` as its serial device."""

    def __init__(self, bus: EmulatedBus, reactor):
        super().__init__(reactor)
        self._fd, self._gateway_fd = os.openpty()
        tty.setraw(self._gateway_fd)  # no echo, no line editing: a serial line carries bytes
        fdesc.setNonBlocking(self._fd)
        # Holding the gateway's end open too means the gateway may close and reopen it at will.
        self.path = os.ttyname(self._gateway_fd)
        self.bus = bus
        bus.to_master = self.write
        self.connected = 1
        self.startReading()

    def fileno(self):
        return self._fd

    def doRead(self):
        return fdesc.readFromFD(self._fd, self.bus.from_master)

    def writeSomeData(self, data):
        return fdesc.writeToFD(self._fd, data)

    def close(self) -> None:
        """Unplug at once: no flushing, nothing left on the reactor."""
        self.stopReading()
        self.stopWriting()
        self.connected = 0
        for fd in (self._fd, self._gateway_fd):
            os.close(fd)


class ConverterPort(protocol.Factory):
    """The master's side of the bus behind a serial-over-IP converter: the gateway opens ``path``,
    a ``socket://`` URL, and the converter passes bytes both ways unchanged."""

    def __init__(self, bus: EmulatedBus, reactor, port: int = 0, interface: str = "127.0.0.1"):
        self.bus = bus
        self.connection = None
        self.listening = reactor.listenTCP(port, self, interface=interface)
        host = self.listening.getHost()
        self.path = f"socket://{host.host}:{host.port}"

    def buildProtocol(self, addr):
        if self.connection is not None:  # one master per converter: a new connection replaces the old
            self.connection.transport.abortConnection()
        self.connection = _ConverterConnection(self)
        return self.connection

    def close(self):
        if self.connection is not None:
            self.connection.transport.abortConnection()
        return self.listening.stopListening()


class _ConverterConnection(protocol.Protocol):
    def __init__(self, converter: ConverterPort):
        self.converter = converter

    def connectionMade(self):
        self.converter.bus.to_master = self.transport.write

    def dataReceived(self, data):
        self.converter.bus.from_master(data)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.converter.connection is self:
            self.converter.connection = None
            self.converter.bus.to_master = lambda data: None


class BusSimulation:
    """A bus with terminals, on a pty or behind a converter (``tcp_port``): what ``simulator bus``
    runs, and what tests and benchmarks start."""

    def __init__(self, reactor, baud: int, terminal_ids, *, first_address: int = 1, secret_prefix: str = "secret-",
                 noise: float = 0.0, echo: bool = False, seed: int = 0, tcp_port: int | None = None):
        self.bus = EmulatedBus(reactor, baud, noise=noise, echo=echo, seed=seed)
        self.drops: dict[int, BusTerminal] = {}  # by terminal id
        for n, terminal_id in enumerate(terminal_ids):
            terminal = Terminal(terminal_id, f"{secret_prefix}{terminal_id}", address=first_address + n)
            self.drops[terminal_id] = self.bus.attach(terminal)
        self.port = PtyPort(self.bus, reactor) if tcp_port is None else ConverterPort(self.bus, reactor, tcp_port)

    @property
    def path(self) -> str:
        """What the gateway opens: a pty's path or a socket:// URL."""
        return self.port.path

    def terminal(self, terminal_id: int) -> Terminal:
        return self.drops[terminal_id].terminal

    def stop(self) -> defer.Deferred:
        self.bus.stop()
        return defer.maybeDeferred(self.port.close)


# -- scenarios and the command line -------------------------------------------------------------


def _doors(sim: BusSimulation, clock, rng: random.Random) -> None:
    """People badge in every half second; someone is enrolled at a terminal every ten."""
    people = People(seed=rng.randrange(1 << 30))
    enrolled = []

    def badge():
        drop = rng.choice(list(sim.drops.values()))
        if enrolled:
            drop.terminal.verify(rng.choice(enrolled))

    def enrol():
        drop = rng.choice(list(sim.drops.values()))
        user_id = f"{drop.terminal.terminal_id}-{len(enrolled) + 1:05d}"
        drop.terminal.enroll(people.person(user_id))
        enrolled.append(user_id)

    _every(clock, 0.5, badge)
    _every(clock, 10, enrol)


def _faults(sim: BusSimulation, clock, rng: random.Random) -> None:
    """Doors, and every 20 s a fault: a terminal falls silent for 8 s, answers late, or is talked over."""
    def fault():
        drop = rng.choice(list(sim.drops.values()))
        kind = rng.choice(["silent", "late", "talked over"])
        print(f"fault: terminal {drop.terminal.terminal_id} at address {drop.address}: {kind}", flush=True)
        if kind == "silent":
            drop.silent = True
            sim.bus.later(8, setattr, drop, "silent", False)
        elif kind == "late":
            drop.late_answers, drop.late_by_s = 1, 1.0
        else:
            drop.talked_over = 1

    _doors(sim, clock, rng)
    _every(clock, 20, fault)


SCENARIOS = {"quiet": lambda sim, clock, rng: None, "doors": _doors, "faults": _faults}


def _every(clock, period_s: float, action) -> None:
    loop = task.LoopingCall(action)
    loop.clock = clock
    loop.start(period_s, now=False)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bus", help="an emulated RS-485 bus with simulated terminals, on a pty")
    p.add_argument("--baud", type=int, default=38400, help="line speed (default 38400)")
    p.add_argument("--devices", type=int, default=4, help="terminals on the bus (default 4)")
    p.add_argument("--first-id", type=int, default=201, help="terminal id of the first terminal (default 201)")
    p.add_argument("--first-address", type=int, default=1, help="bus address of the first terminal (default 1)")
    p.add_argument("--secret-prefix", default="secret-", help="terminal N's secret is PREFIX+N (default secret-)")
    p.add_argument("--noise", type=float, default=0.0, metavar="RATE", help="bit error rate on the line, e.g. 1e-5")
    p.add_argument("--echo", action="store_true", help="the gateway hears its own bytes back (set echo = true on its side)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="quiet", help="what happens at the terminals")
    p.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the pty, a stable device name")
    p.add_argument("--tcp", type=int, metavar="PORT", help="serve the bus on loopback TCP PORT instead of a pty, "
                   "like a serial-over-IP converter (the gateway opens socket://127.0.0.1:PORT)")
    p.add_argument("--write-config", metavar="FILE", help="write the gateway configuration for this bus to FILE "
                   "(replacing one this command wrote before, never another file)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    """Print the device the gateway should open (first line, alone, for scripts), then a gateway
    configuration that admits the bus's terminals; run until stopped. A bus that cannot be
    opened ends the process with status 1."""
    if not 1 <= args.first_address <= 255 - max(args.devices, 1):
        print("simulator: bus addresses must stay within 1-254", file=sys.stderr)
        return 2
    if args.link and args.tcp is not None:
        print("simulator: --link names a pty; a bus served with --tcp is reached by its socket:// URL", file=sys.stderr)
        return 2
    if args.write_config and not _ours_to_write(args.write_config):
        print(f"simulator: {args.write_config} exists and was not written by simulator bus: name another file, "
              "or remove it first", file=sys.stderr)
        return 2
    task.react(_serve, [args])


CONFIG_HEADER = "# Written by `simulator bus` for its emulated RS-485 bus"


def gateway_config(device: str, baud: int, addressed: list[tuple[int, int]], secret_prefix: str, echo: bool) -> str:
    """The ``[[serial]]`` entry for the bus and a ``[[terminals]]`` entry for each of its terminals
    (``addressed``: (bus address, terminal id)), so a gateway with the default allowlist admits
    them as it is; TOML, with the header that marks a file as this command's to replace."""
    serial = dict(device=device, baud=baud, addresses=[dict(address=a, id=t) for a, t in addressed], **(dict(echo=True) if echo else {}))
    terminals = [dict(id=t, secret=f"{secret_prefix}{t}", name=f"bus address {a}") for a, t in addressed]
    return f"{CONFIG_HEADER}: gateway run --config THIS_FILE\n\n" + tomli_w.dumps(dict(serial=[serial], terminals=terminals))


def _ours_to_write(path: str) -> bool:
    """A file that does not exist yet, or one this command wrote (for an earlier bus)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(CONFIG_HEADER)
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False


def _serve(reactor, args) -> defer.Deferred:
    start_logging()
    ids = list(range(args.first_id, args.first_id + args.devices))
    try:
        sim = BusSimulation(reactor, args.baud, ids, first_address=args.first_address, secret_prefix=args.secret_prefix,
                            noise=args.noise, echo=args.echo, seed=args.seed, tcp_port=args.tcp)
    except (OSError, CannotListenError) as exc:
        print(f"simulator: cannot open the bus: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    device = sim.path
    if args.link:
        if os.path.islink(args.link):
            os.unlink(args.link)
        os.symlink(sim.path, args.link)
        device = args.link
        reactor.addSystemEventTrigger("before", "shutdown", os.unlink, args.link)
    addressed = [(args.first_address + n, terminal_id) for n, terminal_id in enumerate(ids)]
    config = gateway_config(device, args.baud, addressed, args.secret_prefix, args.echo)
    if args.write_config:
        try:
            with open(args.write_config, "w", encoding="utf-8") as f:
                f.write(config)
        except OSError as exc:
            print(f"simulator: cannot write {args.write_config}: {exc.strerror}", file=sys.stderr)
            raise SystemExit(1) from None
    print(device)
    print(f"RS-485 bus at {args.baud} baud: terminals {ids[0]}-{ids[-1]} at addresses "
          f"{addressed[0][0]}-{addressed[-1][0]}, secret of terminal N: {args.secret_prefix}N, scenario {args.scenario}")
    if args.write_config:
        print(f"gateway configuration written to {args.write_config}: gateway run --config {args.write_config}")
    else:
        print("gateway configuration (save it as gateway.toml and run gateway run --config gateway.toml, "
              "or start with --write-config FILE):\n")
        print(config, end="")
    sys.stdout.flush()
    SCENARIOS[args.scenario](sim, reactor, random.Random(args.seed))
    reactor.addSystemEventTrigger("before", "shutdown", sim.stop)
    return defer.Deferred()  # runs until stopped (Ctrl-C, SIGTERM)
