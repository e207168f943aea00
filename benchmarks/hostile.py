"""What a hostile client gets from a live gateway (``gateway run``, its own process, SQLite), and
how long a real terminal takes to get in meanwhile. A fresh gateway for each attack:

- strangers: 300 connections from five loopback addresses, each sending the header of a
  262,144-byte frame and 64 KiB of it, then waiting; the gateway's RSS before and with them;
- polite guesser: one address tries wrong secrets one connection at a time, waiting for each
  answer (a refusal may be held back up to 8 s); proofs the gateway checked;
- impatient guesser: 200 connections at once from one address, each sending a wrong proof as
  soon as HELLO comes and hanging up without waiting (replaced at once); then 8 addresses so,
  started 2 s apart; proofs checked per address (the budget is ``auth_lockout_after`` per
  address per ``auth_lockout_s`` lockout window, however many connections);
- silent TLS sockets: 256 connections from four addresses to the TLS listener that never send a
  ClientHello (replaced when closed); how many the gateway closed;
- stalling crowds: 1,000 connections from 20 addresses, and 300 from the terminals' own address
  (a NAT), each answering HELLO with half a frame and nothing more (replaced when closed).

Under each attack a real terminal, known to the gateway and online from 127.0.0.1 before it, dials
again (TLS under the TLS attack) and the seconds until its WELCOME are its time to online; a
refused try is tried again after 1 s, for at most ``--online-bound`` seconds.

    python benchmarks/hostile.py [--attack-seconds 20] [--gateway-tree DIR] [--json FILE]

``--gateway-tree`` runs the gateway from another source tree (a baseline, e.g. an older
checkout), the attackers unchanged. Prints a table; never fails on a figure. The machine is
usually shared: figures move with its load, ratios of two runs back to back less so.
"""

import argparse
import json
import os
import re
import socket
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from protocol.frame import Frame, encode_frame, header_crc
from protocol.messages import Command
from tools.hostile import GUESS, SILENT, STALL, Crowd, RawTerminal, certificates
from tools.loadtest.gateway_process import GatewayProcess

TERMINAL, SECRET = 7001, b"the-real-secret"
STRANGERS, STRANGER_ADDRESSES = 300, [f"127.0.0.{n}" for n in range(10, 15)]


def addresses(first: int, count: int) -> list[str]:
    return [f"127.0.0.{n}" for n in range(first, first + count)]


class Site:
    """A fresh gateway with one terminal configured (and a TLS listener when given certificates)."""

    def __init__(self, tls: dict | None = None):
        self.run_dir = Path(tempfile.mkdtemp(prefix="hostile-"))
        config = self.run_dir / "gateway.toml"
        lines = ['tcp_host = "127.0.0.1"']
        if tls:
            lines += ["[tls]", 'host = "127.0.0.1"', "port = 0", f'cert = "{tls["cert"]}"', f'key = "{tls["key"]}"']
        lines += ["[[terminals]]", f"id = {TERMINAL}", f'secret = "{SECRET.decode()}"']
        config.write_text("\n".join(lines) + "\n")
        self.gateway = GatewayProcess(self.run_dir, f"sqlite:///{self.run_dir / 'gateway.db'}", config_file=config).start()
        found = re.search(rb"over TLS on \S+:(\d+)", self.gateway.log_path.read_bytes())
        self.tls_port = int(found[1]) if found else None

    @property
    def port(self) -> int:
        return self.gateway.tcp_port

    def proofs_checked(self) -> int:
        """Wrong proofs the gateway checked. A gateway older than ``gateway_wrong_proofs`` checked
        every proof it refused as AUTH_FAILED, so there that count is the same figure."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.gateway.http_port}/metrics", timeout=10).read().decode()
        found = (re.search(r"^gateway_wrong_proofs_total (\S+)$", text, re.M)
                 or re.search(r'^gateway_terminals_refused_total\{reason="auth_failed"\} (\S+)$', text, re.M))
        return int(float(found[1])) if found else 0

    def stop(self) -> None:
        self.gateway.stop()


def time_to_online(port: int, bound_s: float, tls: ssl.SSLContext | None = None) -> float | None:
    """Seconds until the real terminal, dialling from 127.0.0.1, is welcomed; None past ``bound_s``."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        try:
            terminal = RawTerminal(port, TERMINAL, SECRET, timeout_s=max(1.0, bound_s - (time.monotonic() - started)),
                                   tls=tls, server_name="localhost")
            try:
                answer = terminal.authenticate()
            finally:
                terminal.close()
            if answer.command == Command.WELCOME and not answer.is_error:
                return round(time.monotonic() - started, 2)
        except (OSError, ConnectionError):
            pass
        time.sleep(1.0)
    return None


def strangers() -> dict:
    site = Site()
    try:
        before = site.gateway.memory_mb()
        head = bytearray(encode_frame(Frame(Command.HELLO, b"", terminal_id=TERMINAL, seq=1)))[:21]
        head[15:19] = (256 * 1024).to_bytes(4, "big")
        head[19:21] = header_crc(bytes(head[:19])).to_bytes(2, "big")
        held, refused = [], 0
        for n in range(STRANGERS):
            s = socket.socket()
            s.bind((STRANGER_ADDRESSES[n % len(STRANGER_ADDRESSES)], 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", site.port))
                s.sendall(bytes(head) + bytes(64 * 1024))
                held.append(s)
            except OSError:
                refused += 1
                s.close()
        time.sleep(2.0)
        with_them = site.gateway.memory_mb()
        for s in held:
            s.close()
        return dict(connections=STRANGERS, addresses=len(STRANGER_ADDRESSES), rss_before_mb=round(before, 1),
                    rss_with_them_mb=round(with_them, 1), refused_at_connect=refused)
    finally:
        site.stop()


def polite_guesser(seconds: float) -> dict:
    """One connection at a time from one address, each waiting for its answer."""
    site = Site()
    try:
        attempts, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            attempts += 1
            try:
                guesser = RawTerminal(site.port, TERMINAL, f"guess-{attempts}".encode(), source="127.0.0.8", timeout_s=15)
                try:
                    guesser.authenticate()
                finally:
                    guesser.close()
            except (OSError, ConnectionError):  # locked out: closed at connect
                pass
        return dict(seconds=seconds, attempts=attempts, proofs_checked=site.proofs_checked())
    finally:
        site.stop()


def warm(site: Site) -> None:
    """The real terminal authenticates once before the attack: 127.0.0.1 is a known terminal's address."""
    time_to_online(site.port, 10.0)


def impatient_guessers(seconds: float, bound_s: float) -> dict:
    figures = {}
    for sources, stagger_s in ((addresses(9, 1), 0.0), (addresses(30, 8), 2.0)):
        site = Site()
        try:
            warm(site)
            crowds = []
            for source in sources:
                crowds.append(Crowd(site.port, 200 // len(sources), [source], GUESS, terminal_id=TERMINAL).start())
                time.sleep(stagger_s)
            online_s = time_to_online(site.port, bound_s)
            time.sleep(max(0.0, seconds - stagger_s * len(sources)))
            for crowd in crowds:
                crowd.stop()
            checked = site.proofs_checked()
            figures[f"{len(sources)}_address{'es' if len(sources) > 1 else ''}"] = dict(
                connections_tried=sum(c.figures.connected for c in crowds), guesses_sent=sum(c.figures.guesses_sent for c in crowds),
                proofs_checked=checked, proofs_checked_per_address=round(checked / len(sources), 1),
                terminal_online_s=online_s)
        finally:
            site.stop()
    return figures


def silent_tls(seconds: float, bound_s: float, tls_files: dict | None) -> dict:
    if tls_files is None:
        return dict(skipped="trustme is not installed (pip install -e '.[test]')")
    site = Site(tls_files)
    try:
        warm(site)
        crowd = Crowd(site.tls_port, 256, addresses(40, 4), SILENT).start()
        time.sleep(1.0)
        context = ssl.create_default_context(cafile=str(tls_files["ca"]))
        online_tls_s = time_to_online(site.tls_port, bound_s, tls=context)
        online_tcp_s = time_to_online(site.port, bound_s)
        time.sleep(max(0.0, seconds - 1.0))
        crowd.stop()
        return dict(connections=256, addresses=4, closed_by_gateway=crowd.figures.closed_by_gateway,
                    terminal_online_tls_s=online_tls_s, terminal_online_tcp_s=online_tcp_s)
    finally:
        site.stop()


def stalling_crowd(count: int, sources: list[str], seconds: float, bound_s: float) -> dict:
    site = Site()
    try:
        warm(site)
        crowd = Crowd(site.port, count, sources, STALL).start()
        time.sleep(2.0)  # the crowd holds every place it can before the terminal dials
        online_s = time_to_online(site.port, bound_s)
        time.sleep(max(0.0, seconds - 2.0))
        crowd.stop()
        return dict(connections=count, addresses=len(set(sources)), places_given=crowd.figures.hellos,
                    closed_by_gateway=crowd.figures.closed_by_gateway, terminal_online_s=online_s)
    finally:
        site.stop()


def tls_files() -> dict | None:
    try:
        return certificates(Path(tempfile.mkdtemp(prefix="hostile-tls-")))
    except ImportError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attack-seconds", type=float, default=20.0, help="how long each attack lasts (default 20)")
    p.add_argument("--online-bound", type=float, default=60.0, help="the longest a terminal is given to get in (default 60)")
    p.add_argument("--gateway-tree", metavar="DIR", help="run the gateway from this source tree (a baseline)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.gateway_tree:  # only the gateway's process: this one has imported the attackers already
        os.environ["PYTHONPATH"] = str(Path(args.gateway_tree).resolve())
    seconds, bound = args.attack_seconds, args.online_bound
    figures = dict(
        strangers=strangers(),
        polite_guesser=polite_guesser(seconds / 2),
        impatient_guessers=impatient_guessers(seconds, bound),
        silent_tls=silent_tls(seconds, bound, tls_files()),
        stalling_crowd_20_addresses=stalling_crowd(1000, addresses(50, 20), seconds, bound),
        stalling_crowd_terminals_address=stalling_crowd(300, ["127.0.0.1"], seconds, bound),
    )
    for part, values in figures.items():
        print(part)
        for key, value in values.items():
            print(f"  {key:<30} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
